"""The LightningModule that trains any of the study's networks (`bnstudy.nets`) as a classifier."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
log = logging.getLogger(__name__)


def _overrides(obj, base: type, hooks: Iterable[str]) -> bool:
    """Whether the class of `obj` overrides any of `base`'s `hooks`."""
    return any(getattr(type(obj), hook) is not getattr(base, hook) for hook in hooks)


def per_batch(callback: Callback) -> bool:
    """Whether a callback looks at each training minibatch (its `on_train_batch_start` or
    `on_before_zero_grad`), or acts every N Lightning batches (a checkpoint every N steps)."""
    return _overrides(callback, Callback, ("on_train_batch_start", "on_before_zero_grad")) \
        or bool(getattr(callback, "_every_n_train_steps", 0)) \
        or getattr(callback, "_train_time_interval", None) is not None \
        or type(callback).__name__ == "Timer"  # (max_time: it looks at each)


class Classifier(L.LightningModule):
    """Trains `net` (images → class logits) with cross-entropy and the `optimizer` factory (a
    Hydra `_partial_` from the `optim` config group, called with the parameters). Given as its
    config (a mapping with `_target_`, as the entry point does), the net is built here and its
    config saved in the checkpoint, so `Classifier.load_from_checkpoint(path)` needs nothing else.

    Logs per epoch `train/loss`, `train/acc`, `val/loss`, `val/acc`, `test/loss`, `test/acc`
    and, every `trainer.log_every_n_steps` steps, `train/loss_step`, all against the optimizer
    step; after a test, `test_correct` holds whether each test image was classified correctly.

    `steps_per_call` (K, Keras' `steps_per_execution`): minibatches trained per `training_step`
    under manual optimization, so Lightning's per-batch hooks are paid once per K optimizer
    steps; the same updates as K = 1, bit for bit. Where the Trainer asks for what K > 1 cannot
    honour (`NEEDS_ONE`), the fit takes K = 1 and says so in the log."""

    # What keeps a Lightning batch one minibatch: (what, ok(trainer)), the first said (the two
    # that set the limits first); most count Lightning batches, the last looks at each
    NEEDS_ONE = (
        ("trainer.fast_dev_run", lambda t: not t.fast_dev_run),
        ("trainer.overfit_batches", lambda t: t.overfit_batches == 0),
        ("trainer.accumulate_grad_batches", lambda t: t.accumulate_grad_batches == 1),
        ("trainer.limit_train_batches other than 1.0", lambda t: t.limit_train_batches == 1.0
         and isinstance(t.limit_train_batches, float)),
        ("trainer.val_check_interval other than 1.0", lambda t: t.val_check_interval == 1.0
         and isinstance(t.val_check_interval, float)),
        ("trainer.precision", lambda t: t.precision == "32-true"),
        ("trainer.devices", lambda t: t.world_size == 1),
        ("a callback that looks at each minibatch", lambda t: not any(map(per_batch, t.callbacks))),
    )

    def __init__(self, net: nn.Module | Mapping, num_classes: int,
                 optimizer: OptimizerFactory | None = None, steps_per_call: int = 1) -> None:
        super().__init__()
        if isinstance(net, Mapping):  # the net's config (`_target_` and its arguments):
            from hydra.utils import instantiate  # kept, so load_from_checkpoint(path) rebuilds it
            from omegaconf import OmegaConf

            net = OmegaConf.to_container(OmegaConf.create(dict(net)), resolve=True)  # plain
            self.save_hyperparameters({"net": net, "num_classes": num_classes,
                                       "steps_per_call": steps_per_call}, logger=False)
            net = instantiate(net)
        self.net = net
        self.optimizer_factory = optimizer
        self.steps_per_call = steps_per_call
        self._plan: tuple | None = None  # (trainer id, K, clipping, direct) of a fit
        # this epoch's training sums (losses × samples, hits, samples), kept on the device and
        # logged at its last step: a `self.log` or metric update every step costs 0.3-0.7 ms
        self.register_buffer("train_loss_sum", torch.zeros(()), persistent=False)
        self.register_buffer("train_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self.train_count = 0
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_hits: list[torch.Tensor] = []  # this test's per-image hits, batch by batch
        self.test_correct: torch.Tensor | None = None  # the last test's, in the test set's order

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets a hook's name (str or None) ~44 times a step: 0.4 µs, not nn.Module's 3.3
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def minibatches_per_step(self) -> int:
        """K for the attached trainer (1 without one), chosen when its fit starts and kept after
        it (Lightning's step count depends on it): the datamodule's minibatches per batch."""
        trainer, plan = self._trainer, self._plan
        if trainer is None or self.steps_per_call == 1:
            return 1
        if plan is None or plan[0] != id(trainer) or (  # a new trainer, or a new fit of it
                trainer.state.fn == "fit" and trainer.gradient_clip_val and plan[1] > 1):
            if trainer.state.fn != "fit":
                return 1
            self._plan = plan = (id(trainer), *self._choose(trainer), self._direct(trainer))
        return plan[1]

    @property
    def automatic_optimization(self) -> bool:
        return self.minibatches_per_step == 1

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        raise AttributeError("set Classifier(steps_per_call=...) instead")

    def _choose(self, trainer: L.Trainer) -> tuple[int, tuple | None]:
        """K and the gradient clipping (value, algorithm) this module does itself for a fit."""
        if blocked := next((name for name, ok in self.NEEDS_ONE if not ok(trainer)), None):
            log.info("steps_per_call=%d falls back to 1 minibatch per training_step, for %s",
                     self.steps_per_call, blocked)
            return 1, None
        clip = None
        if trainer.gradient_clip_val:  # Lightning clips only in automatic optimization
            clip = (trainer.gradient_clip_val, trainer.gradient_clip_algorithm or "norm")
            trainer.gradient_clip_val = None  # given back in `teardown`
        return self.steps_per_call, clip

    def _direct(self, trainer: L.Trainer) -> bool:
        """Whether Lightning's backward and optimizer step come to torch's alone (one device,
        full precision, none of their hooks overridden): the K-loop then calls torch's itself,
        ~0.1 ms a minibatch less."""
        from lightning.pytorch.plugins.precision import Precision
        from lightning.pytorch.strategies import SingleDeviceStrategy

        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
        hooked = any(_overrides(c, Callback, hooks) for c in trainer.callbacks) or \
            _overrides(self, L.LightningModule, (*hooks, "backward"))
        return type(trainer.strategy) is SingleDeviceStrategy and \
            type(trainer.precision_plugin) is Precision and not hooked

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._plan is not None and self._plan[2] is not None:
            self.trainer.gradient_clip_val = self._plan[2][0]
            self._plan = (*self._plan[:2], None, self._plan[3])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of any K resumes with any K: Lightning counts optimizer steps in one
        counter under automatic optimization (K = 1), in another under manual; both get them."""
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        auto = loops.get("epoch_loop.automatic_optimization.optim_progress", {})
        manual = loops.get("epoch_loop.manual_optimization.optim_step_progress")
        if "optimizer" in auto and manual:
            taken = max(auto["optimizer"]["step"], manual, key=lambda p: p["total"]["completed"])
            manual.update(copy.deepcopy(taken))
            auto["optimizer"]["step"] = copy.deepcopy(taken)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mean cross-entropy of a batch `(x, y)`, its logits and its targets."""
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:  # one minibatch; Lightning steps the optimizer
            return self._train_on(batch, last_of_call=True)
        optimizer, trainer, (_, _, clip, direct) = self.optimizers(), self.trainer, self._plan
        for i, minibatch in enumerate(batch):  # K minibatches, one optimizer step each
            loss = self._train_on(minibatch, last_of_call=i == len(batch) - 1)
            optimizer.zero_grad()
            if direct:  # what manual_backward comes to here, without its hooks
                loss.backward()
            else:
                self.manual_backward(loss)
            if clip is not None:
                self.clip_gradients(optimizer, *clip)
            if direct:  # optimizer.step() without its hooks: Lightning's step count only
                optimizer._on_before_step()
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                optimizer.step()
            if self.global_step == trainer.max_steps or not torch.isfinite(loss):
                break  # the divergence guard stops at this step, as it does with K = 1
        # Lightning counts this call as one step in its logging step: count all of them
        trainer.fit_loop.epoch_loop._batches_that_stepped += i
        return loss

    def _train_on(self, batch, last_of_call: bool) -> torch.Tensor:
        """Forward one minibatch and add it to the epoch's sums (before its optimizer step)."""
        loss, logits, y = self.model_step(batch)
        with torch.no_grad():
            self.train_loss_sum.add_(loss, alpha=len(y))
            self.train_correct.add_((logits.argmax(-1) == y).sum())
        self.train_count += len(y)
        trainer, step = self.trainer, self.global_step
        if trainer.log_every_n_steps and (step + 1) % trainer.log_every_n_steps == 0:
            for logger in trainer.loggers:  # what Lightning writes for a step's `self.log`
                logger.log_metrics({"train/loss_step": float(loss.detach()),
                                    "epoch": trainer.current_epoch}, step=step)
        if (last_of_call and trainer.is_last_batch) or step + 1 == trainer.max_steps:
            self._log_train_epoch()
        return loss

    def _log_train_epoch(self) -> None:
        """Logs the epoch's training loss and accuracy (over all processes) and starts anew.
        Done in the epoch's last step, so callbacks see them in `on_train_epoch_end`."""
        sums = torch.stack([self.train_loss_sum, self.train_correct.to(self.train_loss_sum),
                            self.train_loss_sum.new_tensor(self.train_count)])
        loss_sum, correct, count = self.all_gather(sums).reshape(-1, 3).sum(0)
        self.log_dict({"train/loss": loss_sum / count, "train/acc": correct / count},
                      on_step=False, on_epoch=True, sync_dist=True,  # equal on every process
                      batch_size=1)  # one value an epoch
        self.train_loss_sum.zero_()
        self.train_correct.zero_()
        self.train_count = 0

    def _eval_step(self, batch, loss: MeanMetric, acc: MulticlassAccuracy,
                   split: str) -> torch.Tensor:
        """Updates and logs the split's metrics; each image's hit (classified correctly)."""
        value, logits, y = self.model_step(batch)
        loss.update(value, weight=len(y))
        acc.update(logits, y)
        self.log_dict({f"{split}/loss": loss, f"{split}/acc": acc}, prog_bar=split == "val")
        return logits.argmax(-1) == y

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_acc, "val")

    def on_test_epoch_start(self) -> None:
        self.test_hits = []

    def test_step(self, batch, batch_idx: int) -> None:
        self.test_hits.append(self._eval_step(batch, self.test_loss, self.test_acc, "test"))

    def on_test_epoch_end(self) -> None:
        """`test_correct`: a bool per image tested, in the test set's order (CPU, on every
        process). Under DDP rank r tested images r, r + W, ... (the datamodule's unshuffled
        sharding), so image i is share i % W's (i // W)-th."""
        hits = torch.cat(self.test_hits).long() if self.test_hits else \
            torch.zeros(0, dtype=torch.long, device=self.device)
        if (world := self.trainer.world_size) > 1:
            most = int(self.all_gather(hits.new_tensor(len(hits))).max())
            padded = torch.cat([hits, hits.new_full((most - len(hits),), -1)])
            hits = self.all_gather(padded).reshape(world, most).T.reshape(-1)
            hits = hits[hits >= 0]
        self.test_correct = hits.bool().cpu()
        # ddp_spawn hands the main process the trainer's callback_metrics, not this attribute
        self.trainer.callback_metrics["test/correct"] = self.test_correct
        self.test_hits = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ValueError("Classifier needs an optimizer factory (the `optim` config group).")
        return self.optimizer_factory(self.parameters())
