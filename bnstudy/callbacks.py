"""The study's Lightning callbacks: the per-epoch record, the divergence guard, the comparison
curves (`bnstudy.dashboard`), and pictures of the first layer's weights and of one hallucinated
input per class (`bnstudy.pictures`)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.tensorboard import SummaryWriter

from bnstudy.config import is_multirun
from bnstudy.dashboard import COMPARED, compare_tag, comparison_summary, pair_name
from bnstudy.nets import first_layer
from bnstudy.pictures.drawing import Hallucinator, Log, all_finite, draw_weights, save_weights
from bnstudy.records import RunRecord

log = logging.getLogger(__name__)

CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class MetricsHistory(Callback):
    """The one writer of `metrics.json` while a run trains: each epoch's losses and accuracies
    appended to `history` (kept in the checkpoint; `time_s` goes on from `elapsed_before`), with
    the `series()` of every callback that has a `record_key` (the probes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict] = []
        self._fit_start = self.elapsed_before = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self.elapsed_before = self.history[-1]["time_s"] if self.history else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                             **{key: float(metrics[key]) for key in CURVE_KEYS if key in metrics},
                             "time_s": self.elapsed_before + time.perf_counter() - self._fit_start})
        if trainer.is_global_zero:
            series = {c.record_key: c.series() for c in trainer.callbacks
                      if hasattr(c, "record_key")}
            RunRecord.update(self.path, history=self.history, **series)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])


class DivergenceGuard(Callback):
    """Stops training at the first non-finite training loss (`diverged_at`)."""

    def __init__(self) -> None:
        self.diverged_at: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not bool(torch.isfinite(loss)):
            self.diverged_at = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                "loss": str(float(loss))}
            trainer.should_stop = True


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's TensorBoard logger, if it has one."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)),
                None)


class ComparisonCurves(Callback):
    """On rank 0: the pair's layout at fit start and its curves after each epoch."""

    def __init__(self, dataset: str, optim: str) -> None:
        self.pair = pair_name(dataset, optim)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and trainer.is_global_zero:
            writer.file_writer.add_summary(comparison_summary([self.pair], closed=is_multirun()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "train/")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "val/")

    def _write(self, trainer: L.Trainer, prefix: str) -> None:
        writer, metrics = tensorboard_writer(trainer), trainer.callback_metrics
        if writer is not None and trainer.is_global_zero:
            for metric in (m for m in COMPARED if m.startswith(prefix) and m in metrics):
                writer.add_scalar(compare_tag(self.pair, metric), float(metrics[metric]),
                                  trainer.global_step - 1)  # the step Lightning logs them at


def tensorboard_log(trainer: L.Trainer) -> Log | None:
    """Writes a summary at the global step to the TensorBoard logger (None without one)."""
    if (writer := tensorboard_writer(trainer)) is not None:
        return lambda summary: writer.file_writer.add_summary(summary, trainer.global_step)
    return None


class ImageCallback(Callback):
    """Base: `draw`s `<prefix>_<suffix>.png` after every `every_n_epochs`-th epoch (0: never)
    and when training ends (the last epoch's copied if at the same step and `epoch_is_final`),
    then `finish`es (what the report measures); nothing for a diverged run."""

    epoch_is_final = True
    prefixes: tuple[str, ...]

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self._last: tuple[int | None, str] = (None, "")  # (global step, suffix) last drawn
        self._ended = False  # whether this fit's training ended (final pictures drawn)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch{epoch}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ended = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._ended:  # a resume with nothing left to train (cut during its final
            self.on_train_end(trainer, pl_module)  # drawing) ends no training: draw it now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ended = True
        if self._last[0] == trainer.global_step and self.epoch_is_final:
            for prefix in self.prefixes:
                if (drawn := self.dirpath / f"{prefix}_{self._last[1]}.png").is_file():
                    shutil.copyfile(drawn, self.dirpath / f"{prefix}_final.png")
        else:
            self._draw(trainer, pl_module, "final")
        if self._last[0] == trainer.global_step:
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


class WeightGrid(ImageCallback):
    """The first layer's weights and their learned change, final − initial (the initial weights
    kept in the checkpoint): TensorBoard `weights/first_layer[_change]`, `weights*.png` and
    `weights_final.pt` in `dirpath`."""

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
        if state_dict.get("initial") is not None:  # (none before the change grid)
            self.initial = state_dict["initial"]

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        draw_weights(pl_module, trainer.datamodule.input_shape, self.dirpath, suffix,
                     self.initial, self.num_units, tensorboard_log(trainer))

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_weights(pl_module, trainer.datamodule, self.initial, self.dirpath)


class Hallucinations(ImageCallback):
    """One input per class the model finds most typical of it (`Hallucinator`'s recipe); an
    epoch's drawing takes `epoch_steps` (None: `steps`). TensorBoard `hallucination/all`;
    `hallucinations_{epoch<E>,final}.png`, `_final.npz`, `_final.pt` in `dirpath`."""

    prefixes = ("hallucinations",)

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5,
                 epoch_steps: int | None = None, **recipe) -> None:
        super().__init__(dirpath, every_n_epochs)
        self.recipe = Hallucinator(**recipe)
        steps = self.recipe.settings["steps"]
        self.epoch_steps = steps if epoch_steps is None else epoch_steps
        self.epoch_is_final = self.epoch_steps == steps
        self.seconds = math.nan  # of the last drawing, and its normalised images:
        self._images: torch.Tensor | None = None

    @property
    def settings(self) -> dict:  # `hallucinate`'s keyword arguments
        return self.recipe.settings

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.should_stop or 0 < (trainer.max_epochs or 0) <= trainer.current_epoch + 1
        if self.epoch_is_final or not last:  # else the final drawing follows at this very step
            super().on_train_epoch_end(trainer, pl_module)  # (one picture per step)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        steps = None if suffix == "final" else self.epoch_steps
        self._images, self.seconds = self.recipe.draw(
            pl_module, trainer.datamodule, self.dirpath, suffix, steps, tensorboard_log(trainer))

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.recipe.save(pl_module, trainer.datamodule, self._images, self.seconds, self.dirpath)
