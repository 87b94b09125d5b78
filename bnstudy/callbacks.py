"""Lightning callbacks of the study: the per-epoch record, the divergence guard, and pictures.

The pictures show the first layer's weight rows, their learned change (final − initial), and
one hallucinated input per class; `bnstudy.pictures` draws and measures them.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from bnstudy.dashboard import tensorboard_writer
from bnstudy.nets import first_layer
from bnstudy.pictures.drawing import (
    Hallucinator,
    Log,
    all_finite,
    draw_weights,
    save_weights,
)
from bnstudy.records import RunRecord

log = logging.getLogger(__name__)

CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class MetricsHistory(Callback):
    """The one writer of `metrics.json` while a run trains: after each training epoch it
    appends the epoch's train/val loss and accuracy to `history` and stores the series of every
    other callback that keeps one (a `record_key` attribute and a `series()` method, as the
    probes have), then writes the record atomically.

    The history is part of the checkpoint, so a resumed run continues the same list, and its
    clock (`time_s`) goes on from `elapsed_before`, the time of the epochs it resumed after.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict] = []
        self._fit_start = 0.0
        self.elapsed_before = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self.elapsed_before = self.history[-1]["time_s"] if self.history else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({key: float(metrics[key]) for key in CURVE_KEYS if key in metrics})
        row["time_s"] = self.elapsed_before + time.perf_counter() - self._fit_start
        self.history.append(row)
        if trainer.is_global_zero:
            series = {c.record_key: c.series() for c in trainer.callbacks
                      if hasattr(c, "record_key")}
            RunRecord.update(self.path, history=self.history, **series)

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
def tensorboard_log(trainer: L.Trainer) -> Log | None:
    """Writes a summary at the trainer's global step to its TensorBoard logger; None without
    one (the pictures then go to the files only)."""
    writer = tensorboard_writer(trainer)
    if writer is None:
        return None
    return lambda summary: writer.file_writer.add_summary(summary, trainer.global_step)


class ImageCallback(Callback):
    """Base: draws after every `every_n_epochs`-th epoch (0: never) and when training ends.

    Each drawing writes one PNG per name in `prefixes`, `<prefix>_<suffix>.png`.
    `on_train_end` also runs after an early stop; when the last epoch's pictures were drawn at
    the same global step and `epoch_is_final` (an epoch's drawing is as good as the final
    one), they are copied to the final files instead of drawn and logged again. Then `finish`
    saves what the report measures (a diverged run, whose parameters are not finite, gets no
    pictures and no data). Subclasses implement `draw` and `finish` with the functions of
    `bnstudy.pictures.drawing`.
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
    """The first layer's weights as images, a tile per unit or conv filter, and next to them
    the learned change: final minus initial weights, each tile scaled on its own
    (`bnstudy.pictures.drawing.draw_weights`). With SGD the change is a few per cent of a
    unit's weight energy, so the weights alone mostly show the random initialisation; the
    change shows what training added.

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

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        draw_weights(pl_module, trainer.datamodule.input_shape, self.dirpath, suffix,
                     self.initial, self.num_units, tensorboard_log(trainer))

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_weights(pl_module, trainer.datamodule, self.initial, self.dirpath)


class Hallucinations(ImageCallback):
    """One input per class that the model finds most typical of it: the recipe of
    `bnstudy.pictures.drawing.Hallucinator` (its knobs are this callback's keyword arguments,
    `conf/callbacks/default.yaml`), drawn with the trainer's datamodule.

    The drawings after every `every_n_epochs`-th epoch take `epoch_steps` steps (None: `steps`)
    to keep their cost small; the final drawing always takes `steps`. TensorBoard image
    `hallucination/all`, files `hallucinations_epoch{E}.png` and `hallucinations_final.png` in
    `dirpath`, and beside the final one `hallucinations_final.npz` (the images as pixels, one
    array per class name, for anyone's analysis) and `hallucinations_final.pt` (for the
    report's measures).
    """

    prefixes = ("hallucinations",)

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5,
                 epoch_steps: int | None = None, **recipe) -> None:
        super().__init__(dirpath, every_n_epochs)
        self.recipe = Hallucinator(**recipe)
        steps = self.recipe.settings["steps"]
        self.epoch_steps = steps if epoch_steps is None else epoch_steps
        self.epoch_is_final = self.epoch_steps == steps
        self.seconds = math.nan  # of the last drawing
        self._images: torch.Tensor | None = None  # the last drawing's normalised images

    @property
    def settings(self) -> dict:
        """The recipe's settings (`hallucinate`'s keyword arguments)."""
        return self.recipe.settings

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.should_stop or (trainer.max_epochs is not None and trainer.max_epochs > 0
                                       and trainer.current_epoch + 1 >= trainer.max_epochs)
        if last and not self.epoch_is_final:
            return  # the final drawing follows at this very step: one picture per step
        super().on_train_epoch_end(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        steps = None if suffix == "final" else self.epoch_steps
        self._images, self.seconds = self.recipe.draw(
            pl_module, trainer.datamodule, self.dirpath, suffix, steps, tensorboard_log(trainer))

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.recipe.save(pl_module, trainer.datamodule, self._images, self.seconds, self.dirpath)
