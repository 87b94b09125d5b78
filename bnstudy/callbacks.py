"""Lightning callbacks of the study: the per-epoch record, the divergence guard, and pictures.

The pictures show the first layer's weight rows, their learned change (final − initial), and
one hallucinated input per class; `bnstudy.pictures` draws and measures them.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.tensorboard.summary import image as image_summary

from bnstudy.dashboard import tensorboard_writer
from bnstudy.nets import first_layer
from bnstudy.pictures.grids import labelled_grid, weight_grid
from bnstudy.pictures.measures import ImageStats
from bnstudy.pictures.recipe import OBJECTIVES, PARAMETRISATIONS, hallucinate
from bnstudy.records import replace_file, update_record

log = logging.getLogger(__name__)

CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class MetricsHistory(Callback):
    """The one writer of `metrics.json` while a run trains: after each training epoch it
    appends the epoch's train/val loss and accuracy to `history` and stores the series of every
    other callback that keeps one (a `record_key` attribute and a `series()` method, as the
    probes have), then writes the record atomically.

    The history is part of the checkpoint, so a resumed run continues the same list.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict] = []
        self._fit_start = 0.0
        self._elapsed_before = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._elapsed_before = self.history[-1]["time_s"] if self.history else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({key: float(metrics[key]) for key in CURVE_KEYS if key in metrics})
        row["time_s"] = self._elapsed_before + time.perf_counter() - self._fit_start
        self.history.append(row)
        if trainer.is_global_zero:
            series = {c.record_key: c.series() for c in trainer.callbacks
                      if hasattr(c, "record_key")}
            update_record(self.path, history=self.history, **series)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])


class DivergenceGuard(Callback):
    """Stops training when a training loss is NaN or infinite, checked after every step.

    Sets `diverged_at = {"epoch", "step", "loss"}` (`step`: the steps taken up to and including
    the bad one); the entry point records `status: diverged` so that a sweep goes on with its
    other runs.
    """

    def __init__(self) -> None:
        self.diverged_at: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if bool(torch.isfinite(loss)):
            return
        self.diverged_at = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                            "loss": str(float(loss))}
        trainer.should_stop = True


# -- pictures of what the network learned ---------------------------------------------------
def save_and_log_image(trainer: L.Trainer, tag: str, image: torch.Tensor, path: Path) -> None:
    """Encodes a (C, H, W) image in [0, 1] as PNG once, TensorBoard's way (values × 255,
    truncated), writes it to `path` and logs the same bytes as `tag` at the global step to the
    trainer's TensorBoard logger, if it has one."""
    summary = image_summary(tag, image.detach().cpu(), dataformats="CHW")
    path.write_bytes(summary.value[0].image.encoded_image_string)
    writer = tensorboard_writer(trainer)
    if writer is not None:
        writer.file_writer.add_summary(summary, trainer.global_step)


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


def data_source(trainer: L.Trainer) -> dict:
    """What the report needs to load the run's dataset again: the datamodule's class (module
    path) and its absolute data directory, and the class names."""
    data = trainer.datamodule
    return {"datamodule": f"{type(data).__module__}.{type(data).__qualname__}",
            "data_dir": str(Path(data.data_dir).resolve()), "classes": list(data.classes)}


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite (a diverged run's are not, and make no picture)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class ImageCallback(Callback):
    """Base: draws after every `every_n_epochs`-th epoch (0: never) and when training ends.

    Each drawing writes one PNG per name in `prefixes`, `<prefix>_<suffix>.png`.
    `on_train_end` also runs after an early stop; when the last epoch's pictures were drawn at
    the same global step and `epoch_is_final` (an epoch's drawing is as good as the final
    one), they are copied to the final files instead of drawn and logged again. Then `finish`
    saves what the report measures (a diverged run, whose parameters are not finite, gets no
    pictures and no data). Subclasses implement `draw` and `finish`.
    """

    epoch_is_final = True

    prefixes: tuple[str, ...]

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self._last: tuple[int, str] | None = None  # (global step, suffix) of the last pictures

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch{epoch}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last is not None and self._last[0] == trainer.global_step \
                and self.epoch_is_final:
            for prefix in self.prefixes:
                drawn = self.dirpath / f"{prefix}_{self._last[1]}.png"
                if drawn.is_file():
                    shutil.copyfile(drawn, self.dirpath / f"{prefix}_final.png")
        else:
            self._draw(trainer, pl_module, "final")
        if self._last is not None and self._last[0] == trainer.global_step:
            self.finish(trainer, pl_module)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        if not trainer.is_global_zero:
            return
        if not all_finite(pl_module):
            log.warning("%s: parameters are not finite; no %s image", type(self).__name__, suffix)
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.draw(trainer, pl_module, suffix)
        self._last = (trainer.global_step, suffix)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        """Saves `<prefix>_<suffix>.png` for each prefix and logs them to TensorBoard."""
        raise NotImplementedError

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Saves, next to the final pictures, the tensors the report measures."""
        raise NotImplementedError


class WeightGrid(ImageCallback):
    """The first layer's weights as images (see `weight_grid`), a tile per unit or conv filter,
    and next to them the learned change: final minus initial weights, each tile scaled on its
    own. With SGD the change is a few per cent of a unit's weight energy, so the weights alone
    mostly show the random initialisation; the change shows what training added.

    The initial weights are taken when fitting is set up and kept in the checkpoint, so a
    resumed run draws its change from the same start. TensorBoard images
    `weights/first_layer` and `weights/first_layer_change`; files `weights_epoch{E}.png`,
    `weights_change_epoch{E}.png` (E counted from 0, as in metrics.json), `weights_final.png`
    and `weights_change_final.png` in `dirpath`, and `weights_final.pt` (initial and final
    weights of every unit, half precision, for the report's measures).
    """

    prefixes = ("weights", "weights_change")

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, num_units: int = 64) -> None:
        super().__init__(dirpath, every_n_epochs)
        self.num_units = num_units
        self.initial: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.initial is None:
            self.initial = first_layer(pl_module).weight.detach().cpu().clone()

    def state_dict(self) -> dict:
        return {} if self.initial is None else {"initial": self.initial}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("initial") is not None:  # checkpoints written before the change grid
            self.initial = state_dict["initial"]

    def change(self, weight: torch.Tensor) -> torch.Tensor | None:
        """final − initial weights, or None when the initial weights are unknown."""
        if self.initial is None or self.initial.shape != weight.shape:
            return None
        return weight.detach().cpu() - self.initial

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        weight, shape = first_layer(pl_module).weight, trainer.datamodule.input_shape
        save_and_log_image(trainer, "weights/first_layer",
                           weight_grid(weight, shape, self.num_units),
                           self.dirpath / f"weights_{suffix}.png")
        change = self.change(weight)
        if change is not None:
            save_and_log_image(trainer, "weights/first_layer_change",
                               weight_grid(change, shape, self.num_units),
                               self.dirpath / f"weights_change_{suffix}.png")

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight = first_layer(pl_module).weight.detach().cpu()
        if self.change(weight) is None:
            return
        save_tensors(self.dirpath / "weights_final.pt", {
            "initial": self.initial.half(), "final": weight.half(),
            "input_shape": list(trainer.datamodule.input_shape), **data_source(trainer)})


class Hallucinations(ImageCallback):
    """One input per class that the model finds most typical of it (see `hallucinate`; the
    recipe's knobs are its keyword arguments, `conf/callbacks/default.yaml`).

    The drawings after every `every_n_epochs`-th epoch take `epoch_steps` steps (None: `steps`)
    to keep their cost small; the final drawing always takes `steps`. Class names, input
    shape, mean, std and (for the `data` parametrisations) the training images' statistics
    come from `trainer.datamodule`. Images are denormalised to pixels and
    tiled in class-index order, `nrow` per grid row, each under its class name
    (`labelled_grid`): TensorBoard image `hallucination/all` (one card per run, not one per
    class), files `hallucinations_epoch{E}.png` and `hallucinations_final.png` in `dirpath`;
    `hallucinations_final.npz`, the final images as pixels in [0, 1], one array per class
    name (`save_class_arrays`), for anyone's analysis; and `hallucinations_final.pt` for the
    report's measures: the final images; `noise`, what the recipe makes of the same starting noise
    without the model's gradient (`lr=0`: jitter, blur, size and clamping only); `base`, the
    noiseless start (all normalised); the model's own class probabilities for the images, the
    real training images' class means (pixels), the recipe and the seconds it took.
    """

    prefixes = ("hallucinations",)

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5, steps: int = 200,
                 lr: float = 0.1, objective: str = "margin", size: float | None = 1.0,
                 l2: float = 0.0, tv: float = 0.0, jitter: int = 2, blur_every: int = 4,
                 blur_sigma: float = 0.5, seeds: int = 1, parametrisation: str = "data",
                 noise_std: float = 0.1, seed: int = 0, nrow: int = 5,
                 epoch_steps: int | None = None) -> None:
        super().__init__(dirpath, every_n_epochs)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation={parametrisation!r} is not one of "
                             f"{PARAMETRISATIONS}")
        self.settings = {"steps": steps, "lr": lr, "objective": objective, "size": size,
                         "l2": l2, "tv": tv, "jitter": jitter, "blur_every": blur_every,
                         "blur_sigma": blur_sigma, "seeds": seeds,
                         "parametrisation": parametrisation, "noise_std": noise_std,
                         "seed": seed}
        self.nrow = nrow
        self.epoch_steps = steps if epoch_steps is None else epoch_steps
        self.epoch_is_final = self.epoch_steps == steps
        self.seconds = math.nan  # of the last drawing
        self._stats: ImageStats | None = None
        self._images: torch.Tensor | None = None  # the last drawing's normalised images

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.should_stop or (trainer.max_epochs is not None and trainer.max_epochs > 0
                                       and trainer.current_epoch + 1 >= trainer.max_epochs)
        if last and not self.epoch_is_final:
            return  # the final drawing follows at this very step: one picture per step
        super().on_train_epoch_end(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule,
             **override) -> torch.Tensor:
        data = trainer.datamodule
        mean, std = torch.tensor(data.mean), torch.tensor(data.std)
        if self._stats is None and self.settings["parametrisation"].startswith("data"):
            self._stats = ImageStats.of(data.train_set.x)
        return hallucinate(
            pl_module, data.input_shape, len(data.classes),
            low=(-mean / std).tolist(), high=((1 - mean) / std).tolist(), stats=self._stats,
            **{**self.settings, **override})

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        data = trainer.datamodule
        started = time.perf_counter()
        steps = self.settings["steps"] if suffix == "final" else self.epoch_steps
        self._images = self._run(trainer, pl_module, steps=steps)
        self.seconds = time.perf_counter() - started
        pixels = data.denormalise(self._images).cpu()
        save_and_log_image(trainer, "hallucination/all",
                           labelled_grid(pixels, data.classes, self.nrow),
                           self.dirpath / f"hallucinations_{suffix}.png")

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from bnstudy.pictures.measures import class_means, predict

        data, images = trainer.datamodule, self._images
        noise = self._run(trainer, pl_module, lr=0.0)  # the recipe without the model's pull
        base = self._run(trainer, pl_module, steps=0, noise_std=0.0)
        real = class_means(data.denormalise(data.train_set.x), data.train_set.y,
                           len(data.classes))
        save_class_arrays(self.dirpath / "hallucinations_final.npz",
                          data.denormalise(images).cpu(), data.classes)
        save_tensors(self.dirpath / "hallucinations_final.pt", {
            "images": images.cpu(), "noise": noise.cpu(), "base": base.cpu(),
            "own_probabilities": predict(pl_module, images).cpu(),
            "real_means": real.cpu(), "settings": dict(self.settings), "seconds": self.seconds,
            "mean": list(data.mean), "std": list(data.std), **data_source(trainer)})
