"""The study's network: a 2-layer MLP with an optional BatchNorm, as one LightningModule."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

NORMS = ("bn", "none")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def make_norm(norm: str, num_features: int) -> nn.Module:
    """The layer between the first Linear and the ReLU for a `norm` flag."""
    if norm == "bn":
        return nn.BatchNorm1d(num_features)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"model.norm={norm!r} is not a known normalisation; use one of {NORMS}.")


class MLPClassifier(L.LightningModule):
    """`Flatten → Linear(in, hidden) → [BatchNorm1d] → ReLU → Linear(hidden, classes)`.

    Trained with cross-entropy. The optimizer is a factory (a Hydra `_partial_`
    from the `optim` config group) called with the parameters.
    Logs `train/loss`, `train/acc` (per epoch, plus `*_step` every
    `trainer.log_every_n_steps`), `val/loss`, `val/acc`, `test/loss`, `test/acc`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_dim: int = 256,
        norm: str = "bn",
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.input_shape = tuple(input_shape)
        self.optimizer_factory = optimizer
        self.net = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(math.prod(self.input_shape), hidden_dim),
                norm=make_norm(norm, hidden_dim),
                act=nn.ReLU(),
                fc2=nn.Linear(hidden_dim, num_classes),
            )
        )
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": (
                    MeanMetric()
                    if kind == "loss"
                    else MulticlassAccuracy(num_classes, average="micro", validate_args=False)
                )
                for split in ("train", "val", "test")
                for kind in ("loss", "acc")
            }
        )

    @property
    def first_layer(self) -> nn.Linear:
        """The first Linear layer, whose weight rows the weight-grid callback draws."""
        return self.net.fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch, batch_idx: int, split: str):
        """Loss and logits of a batch; accumulates the split's epoch metrics."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        loss_metric, acc_metric = self.metrics[f"{split}_loss"], self.metrics[f"{split}_acc"]
        loss_metric.update(loss.detach(), weight=y.numel())
        acc_metric.update(logits.detach(), y)
        if batch_idx == 0:
            # Registered once per epoch: Lightning computes, logs and resets the metric
            # objects at epoch end, so the per-batch cost is only their `update`.
            self.log(
                f"{split}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=split == "val"
            )
            self.log(
                f"{split}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=split == "val"
            )
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits = self._shared_step(batch, batch_idx, "train")
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            acc = (logits.detach().argmax(-1) == batch[1]).float().mean()
            self.log_dict(
                {"train/loss_step": loss.detach(), "train/acc_step": acc},
                on_step=True,
                on_epoch=False,
            )
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ValueError("MLPClassifier needs an optimizer factory (the `optim` config group).")
        return self.optimizer_factory(self.parameters())
