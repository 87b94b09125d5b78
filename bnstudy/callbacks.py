"""Lightning callbacks of the study: the per-epoch record and the divergence guard."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from bnstudy.records import update_record

CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class MetricsHistory(Callback):
    """Appends each epoch's train/val loss and accuracy to `metrics.json` as it trains.

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
        update_record(self.path, history=self.history)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])


class DivergenceGuard(Callback):
    """Stops training when the training loss is NaN or infinite, checked every N steps.

    Sets `diverged_at = {"epoch", "step", "loss"}`; the entry point records
    `status: diverged` so that a sweep goes on with its other runs.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.diverged_at: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % self.check_every_n_steps:
            return
        loss = float(outputs["loss"])
        if not math.isfinite(loss):
            self.diverged_at = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                "loss": str(loss)}
            trainer.should_stop = True
