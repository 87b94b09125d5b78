"""The LightningModule that trains any of the study's networks (`bnstudy.nets`) as a classifier."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class Classifier(L.LightningModule):
    """Trains `net` (images → class logits) with cross-entropy and the `optimizer` factory (a
    Hydra `_partial_` from the `optim` config group, called with the parameters). Given as its
    config (a mapping with `_target_`, as the entry point does), the net is built here and its
    config saved in the checkpoint, so `Classifier.load_from_checkpoint(path)` needs nothing else.

    Logs per epoch `train/loss`, `train/acc`, `val/loss`, `val/acc`, `test/loss`, `test/acc`
    and, at every `trainer.log_every_n_steps`-th step, `train/loss_step` (that step's loss).
    The x-axis of every value is the optimizer step (`trainer.global_step`).

    Two speed seams, both for a small network's CPU step (about 1.5 ms on 2 cores):
    - training loss and accuracy are summed on the device (`train_loss_sum`, `train_correct`;
      samples in `train_count`), two in-place adds a step, and logged at the epoch's last
      step, because a `self.log` or torchmetrics update in every step costs 0.3-0.7 ms;
    - `__setattr__` writes Lightning's `_current_fx_name` (set and restored around every hook
      call, ~44 times a step) as a plain attribute: 0.4 µs instead of nn.Module's 3.3 µs.
    """

    def __init__(self, net: nn.Module | Mapping, num_classes: int,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__()
        if isinstance(net, Mapping):  # the net's config (`_target_` and its arguments):
            from hydra.utils import instantiate  # kept, so load_from_checkpoint(path) rebuilds it
            from omegaconf import OmegaConf

            net = OmegaConf.to_container(OmegaConf.create(dict(net)), resolve=True)  # plain
            self.save_hyperparameters({"net": net, "num_classes": num_classes}, logger=False)
            net = instantiate(net)
        self.net = net
        self.optimizer_factory = optimizer
        # this epoch's training steps: sum of losses × samples, correct predictions, samples
        self.register_buffer("train_loss_sum", torch.zeros(()), persistent=False)
        self.register_buffer("train_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self.train_count = 0
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def __setattr__(self, name: str, value) -> None:
        if name == "_current_fx_name":  # a hook's name (str or None): never a tensor or module
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mean cross-entropy of a batch `(x, y)`, its logits and its targets."""
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, y = self.model_step(batch)
        with torch.no_grad():
            self.train_loss_sum.add_(loss, alpha=len(y))
            self.train_correct.add_((logits.argmax(-1) == y).sum())
        self.train_count += len(y)
        trainer = self.trainer
        if (self.global_step + 1) % trainer.log_every_n_steps == 0:  # the steps Lightning writes
            self.log("train/loss_step", loss)
        if trainer.is_last_batch or self.global_step + 1 == trainer.max_steps:
            self._log_train_epoch()
        return loss

    def _log_train_epoch(self) -> None:
        """Logs the epoch's training loss and accuracy (over all processes) and starts anew.
        Done in the epoch's last step, so callbacks see them in `on_train_epoch_end`."""
        sums = torch.stack([self.train_loss_sum, self.train_correct.to(self.train_loss_sum),
                            self.train_loss_sum.new_tensor(self.train_count)])
        loss_sum, correct, count = self.all_gather(sums).reshape(-1, 3).sum(0)
        self.log_dict({"train/loss": loss_sum / count, "train/acc": correct / count},
                      on_step=False, on_epoch=True, sync_dist=True)  # equal on every process
        self.train_loss_sum.zero_()
        self.train_correct.zero_()
        self.train_count = 0

    # -- validation and test ----------------------------------------------------------------
    def _eval_step(self, batch, loss: MeanMetric, acc: MulticlassAccuracy, split: str) -> None:
        value, logits, y = self.model_step(batch)
        loss.update(value, weight=len(y))
        acc.update(logits, y)
        self.log_dict({f"{split}/loss": loss, f"{split}/acc": acc}, prog_bar=split == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_acc, "test")

    # -- optimizer --------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ValueError("Classifier needs an optimizer factory (the `optim` config group).")
        return self.optimizer_factory(self.parameters())
