"""`bnstudy.probes`: their numbers against direct computations, their TensorBoard events, their
series in `metrics.json` (written by `MetricsHistory` alone) and across a resume, and the
report's figures of them."""

from __future__ import annotations

import copy
import json
import math
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config, make_classifier, read_record, scalars, tiny_fit, write_job
from lightning.pytorch.callbacks import Callback, LambdaCallback, ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from bnstudy.callbacks import MetricsHistory
from bnstudy.model import Classifier
from bnstudy.nets import first_layer
from bnstudy.probes import ActivationPercentiles, GradientBehaviour
from bnstudy.report.figures import PROBE_FIGURES
from bnstudy.report.runs import load_runs, settings
from bnstudy.report.sections import comparison

ETAS = (0.01, 0.1, 1.0)
PERCENTILES = (15, 50, 85)
STEPS = 11  # optimizer steps an epoch of `tiny_fit`: 540 training images in minibatches of 50


def make_model(norm: str = "bn", cnn: bool = False) -> Classifier:
    """A seeded classifier: an MLP (hidden 32), with `cnn` the project's CNN (channels 4, 8)."""
    L.seed_everything(0, verbose=False)
    return make_classifier(norm, hidden_dim=32, lr=0.1, cnn=cnn)


def fit(model: Classifier, data_dir: Path, out: Path, callbacks, epochs: int = 1,
        **trainer_args) -> L.Trainer:
    """`tiny_fit` (11 steps an epoch) logging to `out`, without validation unless asked."""
    return tiny_fit(data_dir, out, model, callbacks,
                    **({"max_epochs": epochs, "limit_val_batches": 0} | trainer_args))[2]


def test_probes_config_adds_both_to_the_default_callbacks():
    default = compose_config().callbacks
    probes = compose_config("callbacks=probes").callbacks
    assert list(probes) == [*default, "activation_percentiles", "gradient_behaviour"]
    assert probes.activation_percentiles._target_ == "bnstudy.probes.ActivationPercentiles"
    assert probes.gradient_behaviour._target_ == "bnstudy.probes.GradientBehaviour"
    assert "path" not in probes.activation_percentiles and "path" not in probes.gradient_behaviour


@pytest.mark.parametrize("cnn", [False, True], ids=["mlp", "cnn"])
def test_activation_percentiles_are_quantiles_of_the_training_forward(tiny_data, tmp_path, cnn):
    model = make_model(cnn=cnn)
    relu_name, relu = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU))
    inputs: dict[int, list[torch.Tensor]] = {}  # every forward's ReLU input, by step
    relu.register_forward_pre_hook(lambda module, args: inputs.setdefault(
        model.trainer.global_step, []).append(args[0].detach().clone()))
    units = [0, 3] if cnn else [0, 5, 31]
    probes = [ActivationPercentiles(units=units, every_n_steps=3),
              GradientBehaviour(landscape_every_n_steps=3, etas=ETAS)]
    fit(model, tiny_data, tmp_path, probes)
    assert len(relu._forward_pre_hooks) == 1  # the probe's own hook removed after the fit

    record = probes[0].series()
    assert record["module"] == relu_name and record["layer"] == 0
    assert record["units"] == units and record["percentiles"] == list(PERCENTILES)
    assert record["steps"] == [0, 3, 6, 9]
    q = torch.tensor(PERCENTILES) / 100
    for i, step_ in enumerate(record["steps"]):
        # The training forward, then the gradient probe's at θ and at each η: only the first.
        assert len(inputs[step_]) == 2 + len(ETAS)
        per_unit = inputs[step_][0].transpose(0, 1).flatten(1)
        recorded = torch.tensor(record["values"][i])
        assert torch.allclose(recorded, torch.quantile(per_unit[units], q, dim=1).T, atol=1e-6)
        last = inputs[step_][-1].transpose(0, 1).flatten(1)
        assert not torch.allclose(recorded, torch.quantile(last[units], q, dim=1).T, atol=1e-3)
    for j, unit in enumerate(units):
        for k, p in enumerate(PERCENTILES):
            assert scalars(tmp_path, f"activations/unit{unit}/p{p}") == [
                (s, pytest.approx(row[j][k], abs=1e-6))
                for s, row in zip(record["steps"], record["values"], strict=True)]
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    histograms = events.Histograms("activations/layer0")
    assert [h.step for h in histograms] == record["steps"]
    layer, histogram = inputs[0][0], histograms[0].histogram_value  # the whole layer
    assert histogram.num == layer.numel()
    assert math.isclose(histogram.sum_squares, float(layer.pow(2).sum()), rel_tol=1e-4)
    assert (histogram.min, histogram.max) == pytest.approx((float(layer.min()), float(layer.max())))


def test_settings_out_of_range_are_refused_with_the_reason(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="every_n_steps=0"):
        ActivationPercentiles(every_n_steps=0)
    with pytest.raises(ValueError, match=r"etas=\[\] not empty"):
        GradientBehaviour(etas=[])
    with pytest.raises(ValueError, match=r"percentiles=\[50, 150\]; each must be within 0..100"):
        ActivationPercentiles(percentiles=[50, 150])
    for units in ([-1], []):
        with pytest.raises(ValueError, match=re.escape(f"units={units}; give unit indices >= 0")):
            ActivationPercentiles(units=units)
    model = make_model()  # one ReLU, 32 units
    for layer in (1, -1):
        with pytest.raises(ValueError, match=rf"layer={layer}, but the model has 1 "):
            fit(model, tiny_data, tmp_path, [ActivationPercentiles(layer)])
    width = model.net.fc1.out_features
    with pytest.raises(ValueError, match=rf"units=\[0, {width}\], but .* has {width} units"):
        fit(make_model(), tiny_data, tmp_path, [ActivationPercentiles(units=[0, width])])


class Direct(Callback):
    """After the probe: each step's numbers directly on the minibatch trained on (nets − η g)."""

    def __init__(self, landscape_every: int) -> None:
        self.landscape_every, self.sizes, self.norms, self.landscape = landscape_every, [], {}, {}

    def setup(self, trainer, pl_module, stage):
        def take(module, args):
            if module.training and self.x is None:
                self.x = args[0]
        pl_module.net.register_forward_pre_hook(take)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch, self.x = batch, None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        (x, y), net, step = self.batch, pl_module.net, trainer.global_step
        assert self.x is x  # the batch the callbacks are handed is the one trained on
        self.sizes.append(len(y))
        self.norms[step] = {
            name: math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.parameters(recurse=False)))
            for name, m in pl_module.named_modules() if list(m.parameters(recurse=False))}
        if step % self.landscape_every:
            return
        losses, changes = [], []
        for eta in ETAS:
            moved = copy.deepcopy(net)
            with torch.no_grad():
                for p, original in zip(moved.parameters(), net.parameters(), strict=True):
                    p -= eta * original.grad
            loss = F.cross_entropy(moved(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
            changes.append(math.sqrt(sum(float((a.grad - b.grad).pow(2).sum()) for a, b in
                                         zip(moved.parameters(), net.parameters(), strict=True))))
        self.landscape[step] = losses, changes


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_gradient_probe_equals_direct_computation(tiny_data, tmp_path, norm):
    """(That it leaves the model, its grads and the RNG alone: the next test.)"""
    probe = GradientBehaviour(every_n_steps=2, landscape_every_n_steps=4, etas=ETAS)
    direct = Direct(landscape_every=4)
    fit(make_model(norm), tiny_data, tmp_path, [probe, direct])
    assert direct.sizes == [50] * 10 + [40]  # one minibatch a step: 10 of 50, then 40

    record = probe.series()
    assert record["steps"] == [0, 2, 4, 6, 8, 10]
    layers = set(direct.norms[0])
    assert set(record["norms"]) == layers and (norm == "bn") == any("norm" in n for n in layers)
    for layer, values in record["norms"].items():
        assert np.allclose(values, [direct.norms[s][layer] for s in record["steps"]], rtol=1e-5)
        assert scalars(tmp_path, f"gradients/norm/{layer}") == [
            (s, pytest.approx(v, rel=1e-5)) for s, v in zip(record["steps"], values, strict=True)]
    land = record["landscape"]
    assert land["etas"] == list(ETAS) and land["steps"] == [0, 4, 8]
    for i, step in enumerate(land["steps"]):
        losses, changes = direct.landscape[step]
        assert np.allclose(land["loss"][i], losses, rtol=1e-5)
        assert np.allclose(land["grad_change"][i], changes, rtol=1e-4, atol=1e-6)
        assert math.isclose(land["loss_range"][i], max(losses) - min(losses), rel_tol=1e-4)
        assert math.isclose(land["grad_change_max"][i], max(changes), rel_tol=1e-4)
        at = record["steps"].index(step)
        g = math.sqrt(sum(norms[at] ** 2 for norms in record["norms"].values()))  # ||g||
        beta = max(c / (eta * g) for c, eta in zip(changes, ETAS, strict=True))
        assert math.isclose(land["beta_smoothness"][i], beta, rel_tol=1e-4)
    for key in ("loss_range", "grad_change_max", "beta_smoothness"):
        assert scalars(tmp_path, f"landscape/{key}") == [
            (s, pytest.approx(v, rel=1e-5)) for s, v in zip(land["steps"], land[key], strict=True)]


def test_a_zero_gradient_has_no_smoothness_and_a_flat_landscape():
    model, x, y = make_model("none"), torch.randn(8, 1, 28, 28), torch.arange(8)
    F.cross_entropy(model(x), y).backward()
    for p in model.parameters():
        p.grad.zero_()
    probe = GradientBehaviour(every_n_steps=1, landscape_every_n_steps=1, etas=ETAS)
    probe.on_train_batch_start(None, model, (x, y), 0)
    probe.on_before_optimizer_step(SimpleNamespace(global_step=0, loggers=[]), model, None)
    assert math.isnan(probe.landscape["beta_smoothness"][0])
    assert probe.landscape["loss_range"] == [0.0] and probe.norms["net.fc1"] == [0.0]


def test_training_with_probes_is_identical_to_training_without(tiny_data, tmp_path):
    """BatchNorm2d and dropout: no state, buffer or RNG draw touched; validation not recorded."""
    runs = {}
    probes = [ActivationPercentiles(every_n_steps=1),
              GradientBehaviour(every_n_steps=1, landscape_every_n_steps=1, etas=ETAS)]
    for name, callbacks in (("plain", []), ("probed", probes)):
        L.seed_everything(0, verbose=False)
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
            nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 7 * 7, 10))
        model = Classifier(net, 10, partial(torch.optim.SGD, lr=0.1))
        fit(model, tiny_data, tmp_path / name, callbacks, limit_val_batches=1.0)
        runs[name] = (model.state_dict(), torch.get_rng_state())
    (plain, plain_rng), (probed, probed_rng) = runs["plain"], runs["probed"]
    assert torch.equal(plain_rng, probed_rng) and plain.keys() == probed.keys()
    assert all(torch.equal(plain[k], probed[k]) for k in plain)  # running stats included
    activations, gradients = probes[0].series(), probes[1].series()
    assert activations["steps"] == gradients["landscape"]["steps"] == list(range(STEPS))
    assert len(activations["values"]) == STEPS
    assert not list((tmp_path / "probed").rglob("*.json"))  # recorded, but wrote no record


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_batchnorm_makes_preactivations_and_gradients_scale_invariant(tiny_data, tmp_path, norm):
    """First layer x10: with BN the ReLU inputs stay, its gradient / 10; without, inputs x10."""
    recorded = {}
    for scale in (1.0, 10.0):
        model = make_model(norm)
        first = first_layer(model)
        with torch.no_grad():
            first.weight *= scale
            first.bias *= scale
        probes = [ActivationPercentiles(units=range(8)), GradientBehaviour(etas=ETAS)]
        fit(model, tiny_data, tmp_path / str(scale), probes, max_steps=1)
        name = next(n for n, m in model.named_modules() if m is first)
        recorded[scale] = (torch.tensor(probes[0].values[0]), probes[1].norms[name][0])
    (acts, grad), (acts10, grad10) = recorded[1.0], recorded[10.0]
    if norm == "bn":
        assert torch.allclose(acts10, acts, atol=1e-3)
        assert math.isclose(grad10, grad / 10, rel_tol=1e-2)
    else:
        assert torch.allclose(acts10, 10 * acts, rtol=1e-4, atol=1e-5)
        assert not math.isclose(grad10, grad / 10, rel_tol=0.5)


def test_series_reach_metrics_json_each_epoch_and_survive_a_resume(tiny_data, tmp_path):
    """(Without `MetricsHistory` nothing is written: the test before.)"""
    path, after_epoch0 = tmp_path / "metrics.json", {}
    spy = LambdaCallback(on_train_epoch_start=lambda t, m: (
        t.current_epoch == 1 and after_epoch0.update(json.loads(path.read_text()))))

    def run(epochs: int, **resume) -> list[Callback]:
        callbacks = [MetricsHistory(path), ActivationPercentiles(every_n_steps=3),
                     GradientBehaviour(every_n_steps=2, landscape_every_n_steps=3, etas=ETAS), spy,
                     ModelCheckpoint(tmp_path / "checkpoints", save_last=True, save_top_k=0)]
        fit(make_model(), tiny_data, tmp_path, callbacks, epochs, enable_checkpointing=True,
            **resume)
        return callbacks

    probed = run(epochs=2)
    first = read_record(tmp_path)
    assert first["activations"] == probed[1].series() and first["gradients"] == probed[2].series()
    assert [row["epoch"] for row in first["history"]] == [0, 1]
    # Written at each epoch's end: after epoch 0 the file held epoch 0's series.
    assert after_epoch0["activations"]["steps"] == [0, 3, 6, 9]
    assert after_epoch0["gradients"]["steps"] == [0, 2, 4, 6, 8, 10]
    assert after_epoch0["gradients"]["landscape"]["steps"] == [0, 3, 6, 9]

    path.unlink()  # what epochs 0 and 1 recorded can now come only from the checkpoint
    run(epochs=3, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    both = read_record(tmp_path)
    activations, gradients = both["activations"], both["gradients"]
    assert activations["steps"] == list(range(0, 3 * STEPS, 3))
    assert activations["values"][:8] == first["activations"]["values"]
    assert len(activations["values"]) == 11
    assert gradients["steps"] == list(range(0, 3 * STEPS, 2))
    for layer, norms in gradients["norms"].items():
        assert norms[:11] == first["gradients"]["norms"][layer] and len(norms) == 17
    assert gradients["landscape"]["steps"] == activations["steps"]
    for key in ("loss", "grad_change", "loss_range", "grad_change_max", "beta_smoothness"):
        assert gradients["landscape"][key][:8] == first["gradients"]["landscape"][key]
        assert len(gradients["landscape"][key]) == 11


ACTS = {"module": "net.relu", "layer": 0, "units": [0, 5], "percentiles": [15, 50, 85],
        "steps": [0, 2], "values": [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]}
GRADS = {"steps": [0, 2], "norms": {"net.fc1": [1.0, 0.5], "net.fc2": [2.0, 1.0]},
         "landscape": {"etas": [0.1, 1.0], "steps": [0, 2, 4],
                       "loss": [[1.0, 3.0], [2.0, 5.0], [0.0, 1.0]],
                       "grad_change": [[0.1, 0.4], [0.2, 0.6], [0.0, 0.1]],
                       "loss_range": [2.0, 3.0, 10.0], "grad_change_max": [0.4, 0.6, 0.1],
                       "beta_smoothness": [1.0, 0.6, 0.2]}}  # hand-made probe series


def test_the_probe_figures_draw_each_series_where_it_belongs():
    """Each unit's percentiles in its row (the median bold), norms on a log axis, loss bands."""
    found = {n: pd.Series({"seed": 0, "probes": {"activations": ACTS, "gradients": GRADS}})
             for n in ("none", "bn")}
    fig = PROBE_FIGURES["activations"]("mnist, sgd", found)
    unit5 = fig.axes[2]  # row 1 (unit 5), column 0 (no BN)
    assert [list(line.get_ydata()) for line in unit5.get_lines()] == [[4, 10], [5, 11], [6, 12]]
    assert [(line.get_linewidth(), line.get_linestyle()) for line in unit5.get_lines()] == [
        (1, "--"), (1.8, "-"), (1, "--")]
    norms, loss, change, beta = PROBE_FIGURES["gradients"]("mnist, sgd", found).axes
    assert norms.get_yscale() == "log"
    assert [list(line.get_ydata()) for line in norms.get_lines()[:2]] == [[1.0, 0.5], [2.0, 1.0]]
    for ax, low, high in ((loss, [1, 2, 0], [3, 5, 1]), (change, [0.1, 0.2, 0], [0.4, 0.6, 0.1])):
        band = ax.collections[0].get_paths()[0].vertices[:, 1]
        assert set(np.round(band, 6)) == set(low) | set(high)
    assert list(beta.get_lines()[0].get_ydata()) == [1.0, 0.6, 0.2]  # medians: the next test


def test_a_comparison_draws_a_probe_figure_where_both_sides_recorded_it(tmp_path):
    """One side only: a line says which lacks it; both: the figure and the landscape's medians."""
    for norm in ("bn", "none"):
        write_job(tmp_path, [0.5, 0.6], norm=norm)
    ((ckey, by_norm),) = settings(load_runs(tmp_path))
    text, figures = comparison(ckey, by_norm, pd.DataFrame())
    assert "gradients" not in text and "gradients_mnist_sgd" not in figures
    by_norm["bn"]["probes"] = [{"gradients": GRADS}]
    text, figures = comparison(ckey, by_norm, pd.DataFrame())
    assert "_Gradients figure skipped: no ok job recorded `gradients` on the No BatchNorm " \
        "side._" in text and "gradients_mnist_sgd" not in figures
    by_norm["none"]["probes"] = [{"gradients": GRADS}]
    text, figures = comparison(ckey, by_norm, pd.DataFrame())
    assert "![gradients mnist, sgd](gradients_mnist_sgd.png)" in text
    assert "No BatchNorm 3, 0.4, 0.6; BatchNorm 3, 0.4, 0.6." in text
    assert "gradients_mnist_sgd" in figures and "activations_mnist_sgd" not in figures
