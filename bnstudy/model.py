"""The study's networks, each a LightningModule with a `norm` flag: an MLP and a small CNN."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

NORMS = ("bn", "layer", "none")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def make_norm(norm: str, num_features: int, spatial: bool = False) -> nn.Module:
    """The layer between a Linear (`spatial`: a Conv2d) and its ReLU for a `norm` flag.

    `bn`: BatchNorm1d (BatchNorm2d), statistics over the batch (and positions); `layer`:
    LayerNorm over each sample's units (GroupNorm with one group: over channels and
    positions); `none`: identity.
    """
    if norm == "bn":
        return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
    if norm == "layer":
        return nn.GroupNorm(1, num_features) if spatial else nn.LayerNorm(num_features)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"model.norm={norm!r} is not a known normalisation; use one of {NORMS}.")


def mlp_layers(
    in_features: int, hidden_dim: int, depth: int, norm: str, num_classes: int
) -> list[tuple[str, nn.Module]]:
    """`Flatten → [Linear → norm → ReLU] × depth → Linear(hidden, classes)`, named
    `flatten, fc1, norm1, act1, fc2, …, out` (a ReLU per layer)."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(1, depth + 1):
        layers += [
            (f"fc{i}", nn.Linear(in_features if i == 1 else hidden_dim, hidden_dim)),
            (f"norm{i}", make_norm(norm, hidden_dim)),
            (f"act{i}", nn.ReLU()),
        ]
    return [*layers, ("out", nn.Linear(hidden_dim, num_classes))]


class Classifier(L.LightningModule):
    """Base: trains the `self.net` a subclass builds, with cross-entropy.

    A training batch is a list of minibatches `(x, y)` (the datamodule's `steps_per_batch`);
    `training_step` takes one optimizer step on each, so Lightning's per-batch work is paid
    once per list, and `trainer.global_step` counts optimizer steps. While a step runs,
    `self.minibatch` is its `(x, y)` (for callbacks that need the step's data).

    The optimizer is a factory (a Hydra `_partial_` from the `optim` config group) called
    with the parameters. Logs `train/loss`, `train/acc` per epoch and, after every
    `trainer.log_every_n_steps`-th step, `train/loss_step`, `train/acc_step` (their mean over
    those steps, at the step's index); `val/loss`, `val/acc`, `test/loss`, `test/acc`. The
    x-axis of every logged value is the optimizer step.
    """

    arch: str  # the `model` hparam of the subclass: mlp | cnn
    net: nn.Sequential

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)  # the subclass's too
        for key, value in self.hparams.items():
            # Hydra passes lists as ListConfig, which `weights_only` loading (resume) refuses.
            if isinstance(value, ListConfig):
                self.hparams[key] = tuple(value)
        self.optimizer_factory = optimizer
        # Epoch metrics. Training keeps each step's loss and correct count as tensors, adds them
        # to `train_window` once per Lightning batch and feeds the MeanMetrics when a
        # `log_every_n_steps` window closes: a torchmetrics update costs ~0.3 ms, 10-15 % of a
        # small MLP's CPU step. Evaluation batches are few and large.
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": (
                    MulticlassAccuracy(num_classes, average="micro", validate_args=False)
                    if kind == "acc" and split != "train"
                    else MeanMetric()
                )
                for split in ("train", "val", "test")
                for kind in ("loss", "acc")
            }
        )
        # (sum of losses, correct predictions, samples) since the last flush
        self.register_buffer("train_window", torch.zeros(3), persistent=False)
        self.minibatch: tuple[torch.Tensor, torch.Tensor] | None = None
        # Explicit optimizer steps (Lightning's manual optimization): several per batch, and
        # without the automatic loop's closure and hooks (~0.6 ms a step).
        self.automatic_optimization = False

    @property
    def first_layer(self) -> nn.Linear | nn.Conv2d:
        """The first Linear or Conv2d layer, whose weights the weight-grid callback draws."""
        return next(m for m in self.net if isinstance(m, nn.Linear | nn.Conv2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _log_epoch_metrics(self, split: str) -> None:
        """Registers the split's metric objects once an epoch; Lightning computes, logs and
        resets them at epoch end."""
        for kind in ("loss", "acc"):
            self.log(f"{split}/{kind}", self.metrics[f"{split}_{kind}"], on_step=False,
                     on_epoch=True, prog_bar=split == "val")

    def _log_step_axis(self) -> None:
        """Puts the epoch's values at the optimizer step: Lightning's own x-axis counts
        Lightning batches, which hold several steps. (A logged `step` sets the x-axis.)"""
        self.log("step", float(self.global_step), on_step=False, on_epoch=True)

    on_train_epoch_end = on_validation_epoch_end = on_test_epoch_end = _log_step_axis

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """An optimizer step on each minibatch of `batch` (up to `trainer.max_steps`); returns
        their losses as `loss`."""
        trainer, optimizer, first = self.trainer, self.optimizers(), self.global_step
        if trainer.max_steps >= 0:
            batch = batch[: trainer.max_steps - first]
        losses, correct = [], []
        for x, y in batch:
            self.minibatch = (x, y)
            logits = self(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            losses.append(loss.detach())
            correct.append((logits.detach().argmax(-1) == y).sum())
        self.minibatch = None
        losses = torch.stack(losses)
        sizes = torch.tensor([len(y) for _, y in batch], dtype=losses.dtype, device=losses.device)
        self._accumulate(first, torch.stack([losses * sizes, torch.stack(correct), sizes], 1))
        if batch_idx == 0:
            self._log_epoch_metrics("train")
        return {"loss": losses}

    def _accumulate(self, first: int, steps: torch.Tensor) -> None:
        """Adds the (loss sum, correct, samples) rows of the steps after step `first` to the
        window, flushing it after every `log_every_n_steps`-th step."""
        every = self.trainer.log_every_n_steps
        taken = 0
        for end in range(every - first % every, len(steps) + 1, every):  # first + end ≡ 0
            self.train_window += steps[taken:end].sum(0)
            self._flush_train_window(log_step=first + end - 1)
            taken = end
        self.train_window += steps[taken:].sum(0)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # After the callbacks' hook, so a stop they asked for (divergence) is seen here.
        trainer = self.trainer
        last = (
            batch_idx + 1 == trainer.num_training_batches
            or trainer.should_stop
            or 0 <= trainer.max_steps <= self.global_step
        )
        if last and self.train_window[2] > 0:
            self._flush_train_window()

    def _flush_train_window(self, log_step: int | None = None) -> None:
        """Feeds the window's mean loss and accuracy to the epoch metrics (weighted by its
        samples) and, given `log_step`, writes them as `train/loss_step`, `train/acc_step` to
        the loggers at that step (the index of the window's last step)."""
        loss_sum, correct, count = self.train_window
        loss, acc = loss_sum / count, correct / count
        self.metrics["train_loss"].update(loss, weight=count)
        self.metrics["train_acc"].update(acc, weight=count)
        if log_step is not None and self.trainer.is_global_zero:
            values = {"train/loss_step": float(loss), "train/acc_step": float(acc)}
            for logger in self.loggers:
                logger.log_metrics(values, step=log_step)
        self.train_window.zero_()

    def _eval_step(self, batch, batch_idx: int, split: str) -> None:
        x, y = batch
        logits = self(x)
        self.metrics[f"{split}_loss"].update(F.cross_entropy(logits, y), weight=y.numel())
        self.metrics[f"{split}_acc"].update(logits, y)
        if batch_idx == 0:
            self._log_epoch_metrics(split)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ValueError(
                f"{type(self).__name__} needs an optimizer factory (the `optim` config group)."
            )
        return self.optimizer_factory(self.parameters())


class MLPClassifier(Classifier):
    """`Flatten → [Linear → norm → ReLU] × depth → Linear(hidden, classes)`.

    Layers `flatten, fc1, norm1, act1, …, out`; depth 1 is the study's 2-layer net.
    """

    arch = "mlp"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_dim: int = 256,
        norm: str = "bn",
        depth: int = 1,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, optimizer)
        self.net = nn.Sequential(
            OrderedDict(
                mlp_layers(math.prod(self.input_shape), hidden_dim, depth, norm, num_classes)
            )
        )


class CNNClassifier(Classifier):
    """`[Conv3×3 → norm → ReLU → MaxPool2] per entry of channels → Flatten →
    [Linear → norm → ReLU] × depth → Linear(hidden, classes)`.

    Layers `conv1, conv_norm1, conv_act1, pool1, …, flatten, fc1, norm1, act1, …, out`.
    The convolutions keep the size (padding 1), each pooling halves it (rounding down).
    """

    arch = "cnn"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        norm: str = "bn",
        depth: int = 1,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, optimizer)
        in_channels, height, width = self.input_shape
        layers = []
        for i, out_channels in enumerate(channels, 1):
            layers += [
                (f"conv{i}", nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)),
                (f"conv_norm{i}", make_norm(norm, out_channels, spatial=True)),
                (f"conv_act{i}", nn.ReLU()),
                (f"pool{i}", nn.MaxPool2d(2)),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.net = nn.Sequential(
            OrderedDict(
                [
                    *layers,
                    *mlp_layers(in_channels * height * width, hidden_dim, depth, norm,
                                num_classes),
                ]
            )
        )
