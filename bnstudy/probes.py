"""Opt-in probes (`callbacks=probes`) of what BatchNorm does to activations (Ioffe & Szegedy
2015, Fig. 1) and gradients (Santurkar et al. 2018), logged at the optimizer step they measure;
their series are kept in the checkpoint and in `metrics.json` under `record_key`."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.func import functional_call
from torch.nn.utils import get_total_norm

from bnstudy.callbacks import tensorboard_writer


class Probe(Callback):
    """Base: the series live in the attributes named in `kept`, kept in the checkpoint."""

    record_key: str
    kept: tuple[str, ...]

    @staticmethod
    def emit(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        """Scalars to every logger at `step`, outside Lightning's cadence."""
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step)

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.kept}

    def load_state_dict(self, state_dict: dict) -> None:
        for key in self.kept:
            setattr(self, key, copy.deepcopy(state_dict[key]))


class ActivationPercentiles(Probe):
    """Percentiles (in %) of a few units' (features' or channels') pre-activations over the
    minibatch and positions, every `every_n_steps`-th step: the step's first training-mode
    input of the `layer`-th `nn.ReLU`. TensorBoard `activations/unit{u}/p{q}`, histogram
    `activations/layer{layer}`; `values`: steps × units × percentiles."""

    record_key, kept = "activations", ("steps", "values")

    def __init__(self, layer: int = 0, units: Sequence[int] = (0, 1, 2),
                 percentiles: Sequence[float] = (15, 50, 85), every_n_steps: int = 25) -> None:
        for bad, why in ((every_n_steps < 1, f"every_n_steps={every_n_steps}; use >= 1"),
                         (not all(0 <= q <= 100 for q in percentiles), f"percentiles="
                          f"{list(percentiles)}; each must be within 0..100 (per cent)"),
                         (not units or min(units) < 0, f"units={list(units)}; give unit "
                          "indices >= 0, at least one")):
            if bad:
                raise ValueError(f"ActivationPercentiles: {why}.")
        self.layer, self.units, self.percentiles = layer, list(units), list(percentiles)
        self.every_n_steps, self.module_name = every_n_steps, ""
        self.steps, self.values = [], []
        self._hook = self._trainer = self._last_taken = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        relus = [(n, m) for n, m in pl_module.named_modules() if isinstance(m, nn.ReLU)]
        if not 0 <= self.layer < len(relus):
            raise ValueError(f"ActivationPercentiles: layer={self.layer}, but the model has "
                             f"{len(relus)} nn.ReLU modules ({[name for name, _ in relus]}).")
        self.module_name, relu = relus[self.layer]
        self._trainer = trainer
        self._hook = relu.register_forward_pre_hook(self._take)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _take(self, module: nn.Module, args: tuple) -> None:
        trainer, step = self._trainer, self._trainer.global_step
        if not module.training or step % self.every_n_steps or step == self._last_taken:
            return
        self._last_taken = step
        x = args[0].detach().float()
        per_unit = x.transpose(0, 1).flatten(1)  # (units, batch [× positions])
        if max(self.units) >= len(per_unit):
            raise ValueError(f"ActivationPercentiles: units={self.units}, but {self.module_name} "
                             f"has {len(per_unit)} units; use indices below {len(per_unit)}.")
        q = torch.tensor(self.percentiles, device=x.device) / 100
        values = torch.quantile(per_unit[self.units], q, dim=1).T.tolist()
        self.steps.append(step)
        self.values.append(values)
        self.emit(trainer, {f"activations/unit{u}/p{p:g}": value
                              for u, row in zip(self.units, values, strict=True)
                              for p, value in zip(self.percentiles, row, strict=True)}, step)
        if (writer := tensorboard_writer(trainer)) is not None:
            writer.add_histogram(f"activations/layer{self.layer}", x, step)

    def series(self) -> dict:
        return {"module": self.module_name, "layer": self.layer, "units": self.units,
                "percentiles": self.percentiles, "steps": self.steps, "values": self.values}


def gradient_landscape(model: nn.Module, batch, etas: Sequence[float]) -> dict[str, list[float]]:
    """Along the current gradient g on `batch = (x, y)`, per η: `loss` = L(θ − η g),
    `grad_change` = ||∇L(θ − η g) − ∇L(θ)||, `distance` = ||η g||; by `functional_call` on
    detached parameters and cloned buffers under a forked RNG: the model left untouched."""
    (x, y), devices = batch, [] if batch[0].device.index is None else [batch[0].device.index]
    params = {name: p.detach() for name, p in model.named_parameters()}
    grads = {name: p.grad.detach() for name, p in model.named_parameters() if p.grad is not None}
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    def loss_and_grads(eta: float) -> tuple[float, list[torch.Tensor]]:
        moved = {name: (p - eta * grads[name]).requires_grad_() if name in grads else p
                 for name, p in params.items()}
        with torch.random.fork_rng(devices, device_type=x.device.type):
            loss = F.cross_entropy(functional_call(model, (moved, buffers), (x,)), y)
        return float(loss.detach()), torch.autograd.grad(loss, [moved[name] for name in grads])

    grad_norm = float(get_total_norm(list(grads.values())))
    losses, changes = [], []
    with torch.enable_grad():
        base = loss_and_grads(0.0)[1]
        for eta in etas:
            loss, moved = loss_and_grads(eta)
            losses.append(loss)
            changes.append(float(get_total_norm([m - b for m, b in zip(moved, base, strict=True)])))
    return {"loss": losses, "grad_change": changes, "distance": [eta * grad_norm for eta in etas]}


class GradientBehaviour(Probe):
    """Before each update, on the step's batch: every `every_n_steps`-th step the ℓ2 norm of
    each module's own parameters' gradients (TensorBoard `gradients/norm/<module>`); every
    `landscape_every_n_steps`-th a `gradient_landscape` over `etas` and its summary
    `landscape/loss_range` (max − min of the losses), `grad_change_max` and `beta_smoothness`
    (max of grad_change / ||η g||)."""

    record_key, kept = "gradients", ("steps", "norms", "landscape")

    def __init__(self, every_n_steps: int = 10, landscape_every_n_steps: int = 50,
                 etas: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)) -> None:
        if min(every_n_steps, landscape_every_n_steps) < 1 or not etas:
            raise ValueError(
                f"GradientBehaviour: every_n_steps={every_n_steps} and landscape_every_n_steps="
                f"{landscape_every_n_steps} must be >= 1, and etas={list(etas)} not empty.")
        self.every_n_steps, self.landscape_every_n_steps = every_n_steps, landscape_every_n_steps
        self.etas, self.steps, self.norms = [float(eta) for eta in etas], [], {}
        self.landscape: dict[str, list] = {key: [] for key in (
            "steps", "loss", "grad_change", "loss_range", "grad_change_max", "beta_smoothness")}
        self._batch = None  # the step's minibatch (x, y)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        self._batch = batch

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            grads = {name: [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
                     for name, module in pl_module.named_modules()}
            norms = {name: float(get_total_norm(found)) for name, found in grads.items() if found}
            self.steps.append(step)
            for name, value in norms.items():
                self.norms.setdefault(name, []).append(value)
            self.emit(trainer, {f"gradients/norm/{name}": v for name, v in norms.items()}, step)
        if step % self.landscape_every_n_steps == 0:
            point = gradient_landscape(pl_module, self._batch, self.etas)
            changes, distances = point["grad_change"], point["distance"]
            beta = (max(c / d for c, d in zip(changes, distances, strict=True))
                    if min(distances) > 0 else float("nan"))  # g = 0: undefined
            summary = {"loss_range": max(point["loss"]) - min(point["loss"]),
                       "grad_change_max": max(changes), "beta_smoothness": beta}
            for key, value in {"steps": step, "loss": point["loss"], "grad_change": changes,
                               **summary}.items():
                self.landscape[key].append(value)
            self.emit(trainer, {f"landscape/{key}": v for key, v in summary.items()}, step)

    def series(self) -> dict:
        return {"steps": self.steps, "norms": self.norms,
                "landscape": {"etas": self.etas, **self.landscape}}
