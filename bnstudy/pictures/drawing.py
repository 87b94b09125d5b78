"""Drawing a network's pictures into a run's `images/` and its TensorBoard run: the first
layer's weight grids and the hallucinations, and beside the final ones the files the report
measures. The training callbacks (`bnstudy.callbacks`) call these while a run trains,
`python -m bnstudy.draw` after it, on the run's checkpoint, with any recipe.

Each image is encoded to PNG once, TensorBoard's way, and the same bytes go to the file and,
through `log` (for example a SummaryWriter's `add_summary` at a step), to TensorBoard.
"""

from __future__ import annotations

import io
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard.summary import image as image_summary

from bnstudy.nets import first_layer
from bnstudy.pictures.grids import labelled_grid, weight_grid
from bnstudy.pictures.measures import ImageStats, class_means, predict
from bnstudy.pictures.recipe import OBJECTIVES, PARAMETRISATIONS, hallucinate
from bnstudy.records import replace_file

Log = Callable[[object], None]  # takes a TensorBoard Summary
# What a final drawing leaves in images/ (the report reads these)
FINAL_FILES = ("weights_final.png", "weights_change_final.png", "weights_final.pt",
               "hallucinations_final.png", "hallucinations_final.npz",
               "hallucinations_final.pt")


def save_image(path: Path, tag: str, image: torch.Tensor, log: Log | None = None) -> None:
    """Encodes a (C, H, W) image in [0, 1] as PNG once, TensorBoard's way (values × 255,
    truncated), writes it to `path` whole or not at all, and hands the same summary (tag
    `tag`) to `log`, if given."""
    summary = image_summary(tag, image.detach().cpu(), dataformats="CHW")
    replace_file(path, summary.value[0].image.encoded_image_string)
    if log is not None:
        log(summary)


def save_tensors(path: Path, content: dict) -> None:
    """`torch.save` of plain tensors, lists, strings and numbers (loadable with
    `weights_only=True`), written whole or not at all (`replace_file`)."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    replace_file(path, buffer.getbuffer())


def save_class_arrays(path: Path, images: torch.Tensor, names: Sequence[str]) -> None:
    """Images (N, C, H, W) in [0, 1] as a NumPy `.npz`, one float32 array per class name,
    shaped as `matplotlib.pyplot.imshow` takes them: (H, W) for one channel, (H, W, 3) for
    colour. Written whole or not at all (`replace_file`)."""
    arrays = {name: image.permute(1, 2, 0).squeeze(-1).numpy().astype(np.float32)
              for name, image in zip(names, images.detach().cpu(), strict=True)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    replace_file(path, buffer.getbuffer())


def data_source(data) -> dict:
    """What the report needs to load the run's dataset again: the datamodule's class (module
    path) and its absolute data directory, and the class names."""
    return {"datamodule": f"{type(data).__module__}.{type(data).__qualname__}",
            "data_dir": str(Path(data.data_dir).resolve()), "classes": list(data.classes)}


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite (a diverged run's are not, and make no picture)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# --- first-layer weights ------------------------------------------------------------------


def learned_change(weight: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor | None:
    """final − initial weights, or None when the initial weights are unknown or another shape."""
    if initial is None or initial.shape != weight.shape:
        return None
    return weight.detach().cpu() - initial


def draw_weights(model: nn.Module, input_shape: Sequence[int], dirpath: Path, suffix: str,
                 initial: torch.Tensor | None = None, num_units: int = 64,
                 log: Log | None = None) -> None:
    """The first layer's weights as a grid (`weight_grid`: a tile per unit or conv filter),
    `weights_<suffix>.png`, TensorBoard `weights/first_layer`; and, when the `initial` weights
    are known, the learned change (final − initial), `weights_change_<suffix>.png`,
    `weights/first_layer_change`."""
    weight = first_layer(model).weight
    save_image(dirpath / f"weights_{suffix}.png", "weights/first_layer",
               weight_grid(weight, input_shape, num_units), log)
    change = learned_change(weight, initial)
    if change is not None:
        save_image(dirpath / f"weights_change_{suffix}.png", "weights/first_layer_change",
                   weight_grid(change, input_shape, num_units), log)


def save_weights(model: nn.Module, data, initial: torch.Tensor | None, dirpath: Path) -> None:
    """`weights_final.pt` for the report's measures: the initial and final weights of every
    unit (half precision), the input shape and the data's source; nothing when the initial
    weights are unknown."""
    weight = first_layer(model).weight.detach().cpu()
    if learned_change(weight, initial) is None:
        return
    save_tensors(dirpath / "weights_final.pt", {
        "initial": initial.half(), "final": weight.half(),
        "input_shape": list(data.input_shape), **data_source(data)})


# --- hallucinations -----------------------------------------------------------------------


class Hallucinator:
    """The hallucination recipe (the keyword arguments of `hallucinate`, checked here) applied
    to a model and its datamodule: class names, input shape, mean, std and, for the `data`
    parametrisations, the training images' statistics come from the datamodule.

    `draw` saves `hallucinations_<suffix>.png` (the images denormalised to pixels and tiled in
    class-index order, `nrow` per grid row, each under its class name: `labelled_grid`),
    TensorBoard `hallucination/all` (one card per run, not one per class). `save` writes
    beside the final drawing `hallucinations_final.npz`, the images as pixels in [0, 1], one
    array per class name (`save_class_arrays`), and `hallucinations_final.pt` for the report's
    measures: the images; `noise`, what the recipe makes of the same starting noise without the
    model's gradient (`lr=0`); `base`, the noiseless start (all normalised); the model's own
    class probabilities for the images, the real training images' class means (pixels), the
    recipe and the seconds the drawing took.
    """

    def __init__(self, steps: int = 200, lr: float = 0.1, objective: str = "margin",
                 size: float | None = 1.0, l2: float = 0.0, tv: float = 0.0, jitter: int = 2,
                 blur_every: int = 4, blur_sigma: float = 0.5, seeds: int = 1,
                 parametrisation: str = "data", noise_std: float = 0.1, seed: int = 0,
                 nrow: int = 5) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation={parametrisation!r} is not one of "
                             f"{', '.join(PARAMETRISATIONS)}")
        for key, value, least in (("steps", steps, 0), ("seeds", seeds, 1), ("nrow", nrow, 1),
                                  ("jitter", jitter, 0), ("blur_every", blur_every, 0)):
            if value < least:
                raise ValueError(f"{key}={value} is out of range; it must be >= {least}")
        self.settings = {"steps": steps, "lr": lr, "objective": objective, "size": size,
                         "l2": l2, "tv": tv, "jitter": jitter, "blur_every": blur_every,
                         "blur_sigma": blur_sigma, "seeds": seeds,
                         "parametrisation": parametrisation, "noise_std": noise_std,
                         "seed": seed}
        self.nrow = nrow
        self._stats: tuple[object, ImageStats] | None = None  # (datamodule, its statistics)

    @classmethod
    def knobs(cls) -> dict[str, object]:
        """Each setting's type, from the signature (`int`, `float | None`, ...)."""
        hints = typing.get_type_hints(cls.__init__)
        return {key: hint for key, hint in hints.items() if key != "return"}

    def stats(self, data) -> ImageStats | None:
        """The training images' statistics, for the `data` parametrisations (once per
        datamodule)."""
        if not self.settings["parametrisation"].startswith("data"):
            return None
        if self._stats is None or self._stats[0] is not data:
            self._stats = (data, ImageStats.of(data.train_set.x))
        return self._stats[1]

    def run(self, model: nn.Module, data, **override) -> torch.Tensor:
        """The recipe's normalised images (K, *input shape), any setting overridden."""
        mean, std = torch.tensor(data.mean), torch.tensor(data.std)
        return hallucinate(model, data.input_shape, len(data.classes),
                           low=(-mean / std).tolist(), high=((1 - mean) / std).tolist(),
                           stats=self.stats(data), **{**self.settings, **override})

    def draw(self, model: nn.Module, data, dirpath: Path, suffix: str,
             steps: int | None = None, log: Log | None = None) -> tuple[torch.Tensor, float]:
        """Draws and saves `hallucinations_<suffix>.png` with `steps` steps (None: the
        recipe's); returns the normalised images and the seconds the drawing took."""
        started = time.perf_counter()
        images = self.run(model, data, steps=self.settings["steps"] if steps is None else steps)
        seconds = time.perf_counter() - started
        save_image(dirpath / f"hallucinations_{suffix}.png", "hallucination/all",
                   labelled_grid(data.denormalise(images).cpu(), data.classes, self.nrow), log)
        return images, seconds

    def save(self, model: nn.Module, data, images: torch.Tensor, seconds: float,
             dirpath: Path) -> None:
        """Saves, beside the final drawing `images`, the files the report measures."""
        noise = self.run(model, data, lr=0.0)  # the recipe without the model's pull
        base = self.run(model, data, steps=0, noise_std=0.0)
        real = class_means(data.denormalise(data.train_set.x), data.train_set.y,
                           len(data.classes))
        save_class_arrays(dirpath / "hallucinations_final.npz",
                          data.denormalise(images).cpu(), data.classes)
        save_tensors(dirpath / "hallucinations_final.pt", {
            "images": images.cpu(), "noise": noise.cpu(), "base": base.cpu(),
            "own_probabilities": predict(model, images).cpu(),
            "real_means": real.cpu(), "settings": dict(self.settings), "seconds": seconds,
            "mean": list(data.mean), "std": list(data.std), **data_source(data)})
