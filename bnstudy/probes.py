"""Opt-in probes of training (`callbacks=probes`): what BatchNorm does to activations and gradients.

`ActivationPercentiles` follows a few hidden units' pre-activation distributions (Ioffe & Szegedy
2015, Fig. 1); `GradientBehaviour` the per-layer gradient norms, the loss landscape and the gradient
predictiveness along the gradient (Santurkar et al. 2018). Both log to the trainer's loggers and
keep their series in `metrics.json`, also across a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.func import functional_call
from torch.nn.utils import get_total_norm

from bnstudy.dashboard import tensorboard_writer


def relu_modules(model: nn.Module) -> list[tuple[str, nn.ReLU]]:
    """The model's `nn.ReLU` modules as (name, module), in `named_modules()` order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


def unit_values(x: torch.Tensor) -> torch.Tensor:
    """A layer's activations as (units, values): a unit is a feature of an (N, C) input or a
    channel of an (N, C, H, W) one, its values run over the batch (and positions)."""
    return x.transpose(0, 1).flatten(1)


def log_scalars(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Writes scalars to every logger of the trainer at `step`, outside Lightning's log cadence."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step)


class ActivationPercentiles(Callback):
    """Percentiles of a few hidden units' pre-activations (the input of a ReLU) over training.

    At every `every_n_steps`-th optimizer step (from step 0) a forward pre-hook on the model's
    `layer`-th `nn.ReLU` (counted in `named_modules()` order) takes the input of the step's first
    forward pass in training mode only (extra forwards in the same step, e.g.
    `GradientBehaviour`'s, are not recorded; nor are evaluation and hallucination passes). For
    each unit in `units` (a feature, or a conv layer's channel) it records the `percentiles`
    (in %) of its values over the minibatch (and positions).

    TensorBoard: scalars `activations/unit{u}/p{q}`, histogram `activations/layer{layer}` of the
    whole layer. `metrics.json` key `activations`: `{"module": the ReLU's name, "layer", "units",
    "percentiles", "steps": [S steps], "values": S × len(units) × len(percentiles) nested lists}`,
    handed to `MetricsHistory` after each epoch.
    """

    record_key = "activations"

    def __init__(self, layer: int = 0, units: Sequence[int] = (0, 1, 2),
                 percentiles: Sequence[float] = (15, 50, 85), every_n_steps: int = 25) -> None:
        if every_n_steps < 1:
            raise ValueError(f"ActivationPercentiles: every_n_steps={every_n_steps}; use >= 1.")
        if not all(0 <= q <= 100 for q in percentiles):
            raise ValueError(f"ActivationPercentiles: percentiles={list(percentiles)}; each must "
                             "be within 0..100 (per cent).")
        if not units or min(units) < 0:
            raise ValueError(f"ActivationPercentiles: units={list(units)}; give unit indices "
                             ">= 0, at least one.")
        self.layer = layer
        self.units = list(units)
        self.percentiles = list(percentiles)
        self.every_n_steps = every_n_steps
        self.steps: list[int] = []
        self.values: list[list[list[float]]] = []
        self.module_name = ""
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._trainer: L.Trainer | None = None
        self._last_taken: int | None = None  # the step whose input was taken last

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        relus = relu_modules(pl_module)
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
        per_unit = unit_values(x)
        if max(self.units) >= len(per_unit):
            raise ValueError(f"ActivationPercentiles: units={self.units}, but {self.module_name} "
                             f"has {len(per_unit)} units; use indices below {len(per_unit)}.")
        q = torch.tensor(self.percentiles, device=x.device) / 100
        values = torch.quantile(per_unit[self.units], q, dim=1).T.tolist()
        self.steps.append(step)
        self.values.append(values)
        log_scalars(trainer, {f"activations/unit{u}/p{p:g}": value
                              for u, row in zip(self.units, values, strict=True)
                              for p, value in zip(self.percentiles, row, strict=True)}, step)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_histogram(f"activations/layer{self.layer}", x, step)

    def series(self) -> dict:
        """What `metrics.json` keeps under `activations` (see the class docstring)."""
        return {"module": self.module_name, "layer": self.layer, "units": self.units,
                "percentiles": self.percentiles, "steps": self.steps, "values": self.values}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "values": self.values}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps, self.values = list(state_dict["steps"]), list(state_dict["values"])


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """The ℓ2 norm of each module's own parameters' gradients, by module name (those with one)."""
    norms = {}
    for name, module in model.named_modules():
        grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
        if grads:
            norms[name] = float(get_total_norm(grads))
    return norms


def gradient_landscape(model: nn.Module, batch, etas: Sequence[float]) -> dict[str, list[float]]:
    """The loss and the gradient's change along the model's current gradient g, on one batch.

    For each η: `loss` = L(θ − η g) and `grad_change` = ||∇L(θ − η g) − ∇L(θ)||, L the
    cross-entropy of the model's output on `batch = (x, y)`; `distance` = ||η g||. Runs the
    model in its current mode (in training mode BatchNorm uses the batch's statistics) through
    `torch.func.functional_call` on detached parameters and cloned buffers, each forward under
    the same forked RNG state (every η sees the same dropout masks, if any): the model's
    parameters, buffers, grads and the global RNG are left as they were.
    """
    x, y = batch
    params = {name: p.detach() for name, p in model.named_parameters()}
    grads = {name: p.grad.detach() for name, p in model.named_parameters() if p.grad is not None}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    devices = [] if x.device.index is None else [x.device.index]

    def loss_and_grads(eta: float) -> tuple[float, list[torch.Tensor]]:
        moved = {name: (p - eta * grads[name]).requires_grad_() if name in grads else p
                 for name, p in params.items()}
        with torch.random.fork_rng(devices, device_type=x.device.type):
            loss = F.cross_entropy(functional_call(model, (moved, buffers), (x,)), y)
        return float(loss.detach()), torch.autograd.grad(loss, [moved[name] for name in grads])

    grad_norm = float(get_total_norm(list(grads.values())))
    out: dict[str, list[float]] = {"loss": [], "grad_change": [], "distance": []}
    with torch.enable_grad():
        _, base = loss_and_grads(0.0)
        for eta in etas:
            loss, moved = loss_and_grads(eta)
            out["loss"].append(loss)
            out["grad_change"].append(float(get_total_norm(
                [new - old for new, old in zip(moved, base, strict=True)])))
            out["distance"].append(eta * grad_norm)
    return out


class GradientBehaviour(Callback):
    """Per-layer gradient norms, and the loss landscape and gradient predictiveness along g.

    Runs after the backward pass and before the optimizer's update (`on_before_optimizer_step`),
    on the step's minibatch.
    At every `every_n_steps`-th step (from 0): the ℓ2 norm of each module's own parameters'
    gradients (see `layer_grad_norms`), TensorBoard `gradients/norm/<module>`. At every
    `landscape_every_n_steps`-th step, on the step's batch, `gradient_landscape` for each step
    size η in `etas`; TensorBoard `landscape/loss_range` (max − min of L(θ − η g) over η),
    `landscape/grad_change_max` (max of ||∇L(θ − η g) − ∇L(θ)||) and `landscape/beta_smoothness`
    (max over η of that change / ||η g||, an effective β-smoothness). The model, its grads and the
    RNG are left as they were, so training goes exactly as without the probe.

    `metrics.json` key `gradients`: `{"steps": [S], "norms": {module: [S]}, "landscape": {"etas":
    [E], "steps": [T], "loss": T × E, "grad_change": T × E, "loss_range": [T], "grad_change_max":
    [T], "beta_smoothness": [T]}}`, handed to `MetricsHistory` after each epoch.
    """

    record_key = "gradients"

    def __init__(self, every_n_steps: int = 10,
                 landscape_every_n_steps: int = 50,
                 etas: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)) -> None:
        if min(every_n_steps, landscape_every_n_steps) < 1 or not etas:
            raise ValueError(
                f"GradientBehaviour: every_n_steps={every_n_steps} and landscape_every_n_steps="
                f"{landscape_every_n_steps} must be >= 1, and etas={list(etas)} not empty.")
        self.every_n_steps = every_n_steps
        self.landscape_every_n_steps = landscape_every_n_steps
        self.etas = [float(eta) for eta in etas]
        self.steps: list[int] = []
        self.norms: dict[str, list[float]] = {}
        self._batch = None  # the step's minibatch (x, y)
        self.landscape: dict[str, list] = {key: [] for key in (
            "steps", "loss", "grad_change", "loss_range", "grad_change_max", "beta_smoothness")}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        self._batch = batch

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            norms = layer_grad_norms(pl_module)
            self.steps.append(step)
            for name, value in norms.items():
                self.norms.setdefault(name, []).append(value)
            log_scalars(trainer, {f"gradients/norm/{name}": v for name, v in norms.items()}, step)
        if step % self.landscape_every_n_steps == 0:
            point = gradient_landscape(pl_module, self._batch, self.etas)
            changes, distances = point["grad_change"], point["distance"]
            summary = {
                "loss_range": max(point["loss"]) - min(point["loss"]),
                "grad_change_max": max(changes),
                "beta_smoothness": (max(c / d for c, d in zip(changes, distances, strict=True))
                                    if min(distances) > 0 else float("nan")),  # g = 0: undefined
            }
            self.landscape["steps"].append(step)
            self.landscape["loss"].append(point["loss"])
            self.landscape["grad_change"].append(point["grad_change"])
            for key, value in summary.items():
                self.landscape[key].append(value)
            log_scalars(trainer, {f"landscape/{key}": v for key, v in summary.items()}, step)

    def series(self) -> dict:
        """What `metrics.json` keeps under `gradients` (see the class docstring)."""
        return {"steps": self.steps, "norms": self.norms,
                "landscape": {"etas": self.etas, **self.landscape}}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "norms": self.norms, "landscape": self.landscape}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = list(state_dict["steps"])
        self.norms = {name: list(values) for name, values in state_dict["norms"].items()}
        self.landscape = {key: list(values) for key, values in state_dict["landscape"].items()}
