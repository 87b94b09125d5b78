"""The LightningModule (bnstudy.model.Classifier): what it logs, and Trainer flags giving the
same weights as the equivalent plain PyTorch loop."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import checkpoint_hits, make_classifier, scalar_tags, scalars, tiny_fit
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from omegaconf import OmegaConf

from bnstudy.callbacks import DivergenceGuard, MetricsHistory
from bnstudy.data import MNISTDataModule, batches
from bnstudy.model import Classifier


def test_hook_name_is_written_without_module_bookkeeping(monkeypatch):
    """Lightning's hook name skips nn.Module's `__setattr__`; modules and parameters do not."""
    model = make_classifier("bn")
    head, scale = torch.nn.Linear(2, 2), torch.nn.Parameter(torch.ones(()))
    slow_writes = []
    module_setattr = torch.nn.Module.__setattr__
    monkeypatch.setattr(torch.nn.Module, "__setattr__", lambda self, name, value: (
        slow_writes.append(name), module_setattr(self, name, value)))
    model._current_fx_name = "training_step"
    assert model._current_fx_name == "training_step" and slow_writes == []
    model.head, model.scale = head, scale
    assert slow_writes == ["head", "scale"]
    assert {"head.weight", "scale"} <= dict(model.named_parameters()).keys()


def k_classifier(k: int = 1, norm: str = "bn", lr: float = 0.1):
    """A classifier seeded at 0 (so every fit starts from the same weights), `k` per call."""
    L.seed_everything(0, verbose=False)
    model = make_classifier(norm, lr=lr)
    model.steps_per_call = k
    return model


def epoch_batches(data_dir, epoch: int = 0, seed: int = 0,
                  shuffle: bool = True) -> list[tuple[torch.Tensor, ...]]:
    """An epoch's training minibatches (of 50) in the order a fit sees them, or the data's."""
    data = MNISTDataModule(data_dir, batch_size=50, download=False, seed=seed)
    data.setup("fit")
    loader = data.train_dataloader() if shuffle else batches(data.train_set, 50, shuffle=False)
    loader.sampler.set_epoch(epoch)
    return list(loader)


def plain_fit(data_dir, epochs: int = 2, lr: float = 0.1, norm: str = "bn", clip=None,
              accumulate: int = 1, limit: int | None = None, bf16: bool = False,
              overfit: int | None = None):
    """`tiny_fit`'s training as a plain loop (same seed, init, batch order), flags by hand."""
    net = k_classifier(1, norm, lr).net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    for epoch in range(epochs):
        minibatches = (epoch_batches(data_dir, shuffle=False)[:overfit] if overfit
                       else epoch_batches(data_dir, epoch)[:limit])
        for i, (x, y) in enumerate(minibatches):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y)
            (loss / accumulate).backward()
            if (i + 1) % accumulate and i + 1 < len(minibatches):
                continue
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()
    return net


@pytest.mark.parametrize("flags,plain,steps", [  # steps: in the 2 epochs
    ({}, {}, 2 * 11),
    ({"gradient_clip_val": 0.05}, {"clip": 0.05}, 2 * 11),
    ({"accumulate_grad_batches": 3}, {"accumulate": 3}, 2 * 4),
    ({"limit_train_batches": 4}, {"limit": 4}, 2 * 4),
    ({"precision": "bf16-mixed"}, {"bf16": True}, 2 * 11),
    ({"overfit_batches": 3}, {"overfit": 3}, 2 * 3),
], ids=["default", "gradient_clip_val", "accumulate_grad_batches", "limit_train_batches",
        "precision", "overfit_batches"])
def test_trainer_flags_train_as_the_plain_loop_does(tiny_data, flags, plain, steps):
    _, model, trainer = tiny_fit(tiny_data, max_epochs=2, limit_val_batches=0, **flags)
    expected = plain_fit(tiny_data, epochs=2, **plain)
    assert trainer.global_step == steps
    torch.testing.assert_close(model.net.state_dict(), expected.state_dict(), rtol=1e-5, atol=1e-6)
    control = plain_fit(tiny_data, epochs=2) if plain else plain_fit(tiny_data, epochs=2, lr=0.2)
    assert not torch.allclose(control.fc1.weight, expected.fc1.weight, atol=1e-6)  # flags matter


def test_val_check_interval_validates_the_weights_of_that_step(tiny_data, tmp_path):
    """One Lightning batch is one minibatch and one step, for the progress bar and limits too."""
    data, _, trainer = tiny_fit(tiny_data, tmp_path, max_epochs=1, val_check_interval=5,
                                enable_progress_bar=True)
    assert trainer.num_training_batches == 11 and trainer.global_step == 11
    assert trainer.progress_bar_callback.train_progress_bar.total == 11
    assert [step for step, _ in scalars(tmp_path, "val/acc")] == [4, 9]  # after steps 5, 10
    net = plain_fit(tiny_data, epochs=1, limit=10).eval()
    with torch.no_grad():
        logits, y = net(data.val_set.x), data.val_set.y
    assert scalars(tmp_path, "val/acc")[-1][1] == pytest.approx(
        float((logits.argmax(-1) == y).float().mean()))
    assert scalars(tmp_path, "val/loss")[-1][1] == pytest.approx(  # the mean over the images
        float(F.cross_entropy(logits, y)))


def test_logged_training_values_are_the_epochs_means_and_the_steps_loss(tiny_data, tmp_path):
    """At lr=0 each value is recomputed batch by batch, anew each epoch; `max_steps` mid-epoch."""
    _, model, trainer = tiny_fit(tiny_data, tmp_path, model=make_classifier("bn", lr=0.0),
                                 log_every_n_steps=4, limit_val_batches=0, max_epochs=2,
                                 max_steps=14)
    means, accs, step_losses = [], [], []
    for epoch, taken in ((0, 11), (1, 3)):
        losses, correct, counts = [], [], []
        with torch.no_grad():
            for x, y in epoch_batches(tiny_data, epoch)[:taken]:  # BN on batch statistics
                logits = model.train()(x)
                losses.append(float(F.cross_entropy(logits, y)))
                correct.append(int((logits.argmax(-1) == y).sum()))
                counts.append(len(y))
        means.append(sum(loss * c for loss, c in zip(losses, counts, strict=True)) / sum(counts))
        accs.append(sum(correct) / sum(counts))
        step_losses += losses
    assert trainer.global_step == 14 and counts == [50] * 3
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(means[1], rel=1e-5)
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(accs[1])
    assert scalars(tmp_path, "train/loss") == [(10, pytest.approx(means[0], rel=1e-5)),
                                               (13, pytest.approx(means[1], rel=1e-5))]
    assert [v for _, v in scalars(tmp_path, "train/acc")] == pytest.approx(accs)
    steps = scalars(tmp_path, "train/loss_step")
    assert [s for s, _ in steps] == [3, 7, 11]  # after steps 4, 8, 12 (from 0)
    assert [v for _, v in steps] == pytest.approx([step_losses[s] for s, _ in steps], rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_trains_as_one_process_on_both_shards(tiny_data):
    """DDP on CPU (gloo), no BN: the plain loop, its gradient averaged over the ranks' halves."""
    data, model, trainer = tiny_fit(tiny_data, model=k_classifier(1, "none"), batch_size=25,
                                    max_epochs=2, devices=2, strategy="ddp_spawn",
                                    limit_val_batches=0)
    net = k_classifier(1, "none").net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    data.setup("fit")  # (set up in the ranks' processes only); 2 × 25 a step
    x, y = data.train_set.x, data.train_set.y
    for epoch in range(2):
        order = torch.randperm(540, generator=torch.Generator().manual_seed(epoch))
        shards = [order[rank::2][:270].split(25) for rank in (0, 1)]
        for a, b in zip(*shards, strict=True):
            losses = [F.cross_entropy(net(x[i]), y[i]) for i in (a, b)]
            optimizer.zero_grad()
            (sum(losses) / 2).backward()
            optimizer.step()
    assert set(trainer.callback_metrics) >= {"train/loss", "train/acc"}  # from rank 0
    torch.testing.assert_close(model.net.state_dict(), net.state_dict(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_finished_run_loads_from_its_checkpoint_alone(tiny_sweep):
    """`Classifier.load_from_checkpoint(path)` alone rebuilds the net; it scores as recorded."""
    (job,) = tiny_sweep.dir.glob("*_mnist-none-sgd-seed0")
    net = Classifier.load_from_checkpoint(job / "checkpoints" / "last.ckpt").hparams.net
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")  # the run's config, no Hydra
    assert (net["norm"], net["hidden_dim"]) == ("none", cfg.model.net.hidden_dim)
    acc = checkpoint_hits(job, cfg.paths.data_dir).mean()  # loads it the same way
    assert acc == pytest.approx(tiny_sweep.records[job.name]["test"]["acc"], abs=1e-6)


def k_fit(tiny_data, out, k: int, **flags) -> dict:
    """Everything a 2-epoch fit with `steps_per_call=k` leaves: history, scalars, test, ckpt."""
    history = MetricsHistory(out / "metrics.json")
    data, model, trainer = tiny_fit(tiny_data, out, model=k_classifier(k), max_epochs=2,
                                    callbacks=[history, DivergenceGuard()], log_every_n_steps=3,
                                    **flags)
    test = trainer.test(model, datamodule=data, verbose=False)
    trainer.save_checkpoint(out / "last.ckpt")
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    return {"batches": trainer.num_training_batches, "steps": trainer.global_step,
            "history": [{k: v for k, v in row.items() if k != "time_s"} for row in history.history],
            "scalars": {tag: scalars(out, tag) for tag in sorted(scalar_tags(out))},
            "test": test, "test_correct": model.test_correct, "weights": ckpt["state_dict"],
            "optimizer": ckpt["optimizer_states"], "clip": trainer.gradient_clip_val}


@pytest.mark.parametrize("flags,bundled", [
    ({"gradient_clip_val": 0.05}, True),
    ({"gradient_clip_val": 0.002, "gradient_clip_algorithm": "value"}, True),
    ({"max_steps": 6}, True),  # stops inside the second call of 4
    ({"accumulate_grad_batches": 3}, False),  # falls back to K = 1, and says so
], ids=["gradient_clip_val", "clip_by_value", "max_steps", "accumulate_grad_batches"])
def test_k_minibatches_per_call_train_bit_for_bit_as_one(tiny_data, tmp_path, caplog, flags,
                                                           bundled):
    one = k_fit(tiny_data, tmp_path / "k1", 1, **flags)
    with caplog.at_level("INFO", logger="bnstudy.model"):
        four = k_fit(tiny_data, tmp_path / "k4", 4, **flags)
    assert (one.pop("batches"), four.pop("batches")) == (11, 3 if bundled else 11)  # calls
    assert ("falls back to 1" in caplog.text) != bundled
    assert four["scalars"]["train/loss_step"] and four["history"]
    a, b = (dict(torch.utils._pytree.tree_flatten_with_path(run)[0]) for run in (one, four))
    assert a.keys() == b.keys()
    for path, value in a.items():  # bit for bit: weights, optimizer state, every figure
        same = torch.equal(value, b[path]) if torch.is_tensor(value) else value == b[path]
        assert same, path


@pytest.mark.parametrize("lr", [30.0, 1e4])
def test_k_minibatches_stop_at_the_step_the_loss_diverges(tiny_data, lr):
    """With K = 4 the run stops at the first non-finite loss's minibatch, not the call's end."""
    stops = []
    for k in (1, 4):
        guard = DivergenceGuard()
        _, _, trainer = tiny_fit(tiny_data, model=k_classifier(k, "none", lr), callbacks=[guard],
                                 max_epochs=2, limit_val_batches=0)
        stops.append((trainer.global_step, guard.diverged_at))
    assert stops[0] == stops[1] and stops[0][1] is not None, stops


def test_a_fallback_names_the_flag_that_asks_for_it(caplog):
    """The first setting needing one minibatch a step, not one it implies (1: a batch, not 1.0)."""
    plain = dict(fast_dev_run=False, overfit_batches=0, accumulate_grad_batches=1,
                 limit_train_batches=1.0, val_check_interval=1.0, precision="32-true",
                 world_size=1, callbacks=[], gradient_clip_val=None)
    model = k_classifier(4)
    each = "a callback that looks at each minibatch"
    for flags, said in (({"fast_dev_run": True, "limit_train_batches": 1}, "fast_dev_run"),
                        ({"overfit_batches": 2, "limit_train_batches": 2}, "overfit_batches"),
                        ({"limit_train_batches": 0.5}, "limit_train_batches other than 1.0"),
                        ({"limit_train_batches": 1}, "limit_train_batches other than 1.0"),
                        ({"precision": "bf16-mixed"}, "precision"),
                        ({"world_size": 2}, "devices"),
                        ({"callbacks": [Timer("00:00:01:00")]}, each),
                        ({"callbacks": [ModelCheckpoint(every_n_train_steps=5)]}, each),
                        ({"callbacks": [ModelCheckpoint()]}, None),
                        ({}, None)):
        caplog.clear()
        with caplog.at_level("INFO", logger="bnstudy.model"):
            k = model._choose(SimpleNamespace(**{**plain, **flags}))[0]
        assert k == (4 if said is None else 1)
        said = said if said in (None, each) else f"trainer.{said}"
        assert caplog.text.endswith(f"per training_step, for {said}\n") if said else \
            not caplog.text, flags


class StepHooks(L.Callback):
    def __init__(self) -> None:
        self.calls = []

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls.append("backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.calls.append("step")


def test_k_minibatches_call_lightnings_step_hooks_where_one_is_overridden(tiny_data):
    """Otherwise the K-loop calls torch's own backward and step; the same weights either way."""
    _, direct, trainer = tiny_fit(tiny_data, model=k_classifier(4))
    hooks = StepHooks()
    _, hooked, _ = tiny_fit(tiny_data, model=k_classifier(4), callbacks=[hooks])
    assert direct._plan[3] and not hooked._plan[3]
    assert hooks.calls == ["backward", "step"] * trainer.global_step == ["backward", "step"] * 11
    torch.testing.assert_close(hooked.state_dict(), direct.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("first,then", [(1, 4), (4, 1)])
def test_a_run_resumes_exactly_with_another_k(tiny_data, tmp_path, first, then):
    """The uninterrupted run's steps and weights (Lightning counts steps per optimization mode)."""
    def fit(k: int, epochs: int, ckpt=None):
        return tiny_fit(tiny_data, model=k_classifier(k), max_epochs=epochs,
                        limit_val_batches=0, ckpt_path=ckpt)

    _, _, trainer = fit(first, 1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    _, resumed, trainer = fit(then, 2, tmp_path / "epoch1.ckpt")
    _, straight, _ = fit(1, 2)
    assert trainer.global_step == 22
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)
