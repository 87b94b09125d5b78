"""A network's pictures drawn into a run's `images/` and TensorBoard (by the picture callbacks
and `python -m bnstudy.draw`), with the files the report measures beside the final ones; each
PNG is encoded once, the same bytes going to the file and TensorBoard."""

from __future__ import annotations

import io
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard.summary import image as image_summary

from bnstudy.nets import first_layer
from bnstudy.pictures.grids import labelled_grid, weight_grid
from bnstudy.pictures.measures import ImageStats, class_means, predict
from bnstudy.pictures.recipe import check, hallucinate
from bnstudy.records import replace_file

Log = Callable[[object], None]  # takes a TensorBoard Summary
# What a final drawing leaves in images/ (the report reads these)
FINAL_FILES = ("weights_final.png", "weights_change_final.png", "weights_final.pt",
               "hallucinations_final.png", "hallucinations_final.npz", "hallucinations_final.pt")


def save_image(path: Path, tag: str, image: torch.Tensor, log: Log | None = None) -> None:
    """A (C, H, W) image in [0, 1] as PNG (× 255, truncated), written atomically; its summary
    (tag `tag`) handed to `log`, if given."""
    summary = image_summary(tag, image.detach().cpu(), dataformats="CHW")
    replace_file(path, summary.value[0].image.encoded_image_string)
    if log is not None:
        log(summary)


def save_bytes(path: Path, save: Callable, content) -> None:
    """`save(content, buffer)` (`torch.save`, `np.savez`'s) written atomically."""
    buffer = io.BytesIO()
    save(content, buffer)
    replace_file(path, buffer.getbuffer())


def data_source(data) -> dict:
    """What the report needs to load the run's dataset again."""
    return {"datamodule": f"{type(data).__module__}.{type(data).__qualname__}",
            "data_dir": str(Path(data.data_dir).resolve()), "classes": list(data.classes)}


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite (a diverged run's are not, and make no picture)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def draw_weights(model: nn.Module, input_shape: Sequence[int], dirpath: Path, suffix: str,
                 initial: torch.Tensor | None = None, num_units: int = 64,
                 log: Log | None = None) -> None:
    """The first layer's `weight_grid`, `weights_<suffix>.png` (`weights/first_layer`), and
    with fitting `initial` weights the change's, `weights_change_<suffix>.png`."""
    weight = first_layer(model).weight.detach().cpu()
    save_image(dirpath / f"weights_{suffix}.png", "weights/first_layer",
               weight_grid(weight, input_shape, num_units), log)
    if initial is not None and initial.shape == weight.shape:
        save_image(dirpath / f"weights_change_{suffix}.png", "weights/first_layer_change",
                   weight_grid(weight - initial, input_shape, num_units), log)


def save_weights(model: nn.Module, data, initial: torch.Tensor | None, dirpath: Path) -> None:
    """`weights_final.pt` for the report (none without fitting initial weights)."""
    weight = first_layer(model).weight.detach().cpu()
    if initial is not None and initial.shape == weight.shape:
        save_bytes(dirpath / "weights_final.pt", torch.save, {
            "initial": initial.half(), "final": weight.half(),
            "input_shape": list(data.input_shape), **data_source(data)})


@dataclass
class Hallucinator:
    """The hallucination recipe (`hallucinate`'s arguments, checked; `nrow`: tiles a row)."""

    steps: int = 200
    lr: float = 0.1
    objective: str = "margin"
    size: float | None = 1.0
    l2: float = 0.0
    tv: float = 0.0
    jitter: int = 2
    blur_every: int = 4
    blur_sigma: float = 0.5
    seeds: int = 1
    parametrisation: str = "data"
    noise_std: float = 0.1
    seed: int = 0
    nrow: int = 5
    _stats = (None, None)  # (data, its ImageStats), kept between runs: no field, no setting

    def __post_init__(self) -> None:
        check(**self.settings, nrow=self.nrow)

    @property
    def settings(self) -> dict:  # `hallucinate`'s keyword arguments
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "nrow"}

    @classmethod
    def knobs(cls) -> dict[str, object]:
        """Each setting's type (`int`, `float | None`, ...)."""
        return typing.get_type_hints(cls)

    def run(self, model: nn.Module, data, **override) -> torch.Tensor:
        """The recipe's normalised images (K, *input shape), any setting overridden."""
        if self.parametrisation.startswith("data") and self._stats[0] is not data:
            self._stats = (data, ImageStats.of(data.train_set.x))
        mean, std = torch.tensor(data.mean), torch.tensor(data.std)
        return hallucinate(model, data.input_shape, len(data.classes),
                           low=(-mean / std).tolist(), high=((1 - mean) / std).tolist(),
                           stats=self._stats[1], **{**self.settings, **override})

    def draw(self, model: nn.Module, data, dirpath: Path, suffix: str,
             steps: int | None = None, log: Log | None = None) -> tuple[torch.Tensor, float]:
        """`hallucinations_<suffix>.png` (TensorBoard `hallucination/all`) drawn with `steps`
        (None: the recipe's); returns the normalised images and seconds."""
        started = time.perf_counter()
        images = self.run(model, data, steps=self.steps if steps is None else steps)
        seconds = time.perf_counter() - started
        save_image(dirpath / f"hallucinations_{suffix}.png", "hallucination/all",
                   labelled_grid(data.denormalise(images).cpu(), data.classes, self.nrow), log)
        return images, seconds

    def save(self, model: nn.Module, data, images: torch.Tensor, seconds: float,
             dirpath: Path) -> None:
        """Beside the final `images`: `hallucinations_final.npz` (an `imshow` array in [0, 1]
        per class name) and `.pt` for the report: `images`, `noise` (`lr=0`), `base` (the
        noiseless start), own class probabilities, real class means, the recipe, `seconds`."""
        pixels = data.denormalise(images).cpu()
        save_bytes(dirpath / "hallucinations_final.npz", lambda arrays, f: np.savez(f, **arrays),
                   {name: image.permute(1, 2, 0).squeeze(-1).numpy().astype(np.float32)
                    for name, image in zip(data.classes, pixels, strict=True)})
        real = data.denormalise(class_means(data.train_set.x, data.train_set.y,
                                            len(data.classes)))  # affine: the means' pixels
        save_bytes(dirpath / "hallucinations_final.pt", torch.save, {
            "images": images.cpu(), "noise": self.run(model, data, lr=0.0).cpu(),
            "base": self.run(model, data, steps=0, noise_std=0.0).cpu(),
            "own_probabilities": predict(model, images).cpu(), "real_means": real.cpu(),
            "settings": self.settings, "seconds": seconds, "mean": list(data.mean),
            "std": list(data.std), **data_source(data)})
