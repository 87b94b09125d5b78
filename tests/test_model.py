"""The models: shapes, depth, the norm flag (bn | layer | none), and each norm's statistics."""

import functools
import io
from collections import OrderedDict

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from bnstudy.data import MNISTDataModule
from bnstudy.model import CNNClassifier, MLPClassifier

SHAPES = [(1, 28, 28), (3, 32, 32)]
SGD = functools.partial(torch.optim.SGD, lr=0.1)
NORM_1D = {"bn": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": nn.Identity}
NORM_2D = {"bn": nn.BatchNorm2d, "layer": nn.GroupNorm, "none": nn.Identity}


def make(norm: str, input_shape=(1, 28, 28), hidden_dim=32, depth=1) -> MLPClassifier:
    return MLPClassifier(
        input_shape,
        num_classes=10,
        hidden_dim=hidden_dim,
        norm=norm,
        depth=depth,
        optimizer=SGD,
    )


def make_cnn(norm: str, input_shape=(1, 28, 28), channels=(4, 8), hidden_dim=16) -> CNNClassifier:
    return CNNClassifier(
        input_shape, 10, channels=channels, hidden_dim=hidden_dim, norm=norm, optimizer=SGD
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["bn", "layer", "none"])
@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_shapes_layers_and_norms(shape, norm, depth):
    model = make(norm, shape, depth=depth)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert model.first_layer is model.net.fc1
    assert model.first_layer.weight.shape == (32, shape[0] * shape[1] * shape[2])
    hidden = [[type(model.net.get_submodule(f"{kind}{i}")) for kind in ("fc", "norm", "act")]
              for i in range(1, depth + 1)]
    assert hidden == [[nn.Linear, NORM_1D[norm], nn.ReLU]] * depth
    assert [type(m) for m in model.net] == [nn.Flatten, *sum(hidden, []), nn.Linear]
    widths = [model.net.get_submodule(f"fc{i}").in_features for i in range(2, depth + 1)]
    assert widths == [32] * (depth - 1)
    assert model.net.out.in_features == 32 and model.net.out.out_features == 10
    for other in {"bn", "layer"} - {norm}:
        assert not any(isinstance(m, NORM_1D[other]) for m in model.modules())


@pytest.mark.parametrize(
    "model,layers", [(make("bn", depth=4), 4), (make_cnn("layer"), 3)], ids=["mlp", "cnn"]
)
def test_every_hidden_layer_has_its_own_relu(model, layers):
    """Hooks on ReLU inputs and per-module-name statistics need one instance per layer."""
    relus = [name for name, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, nn.ReLU)]
    assert len(relus) == layers and len({id(model.get_submodule(n)) for n in relus}) == layers


def test_depth_one_is_the_studys_two_layer_net():
    """Same parameters, in the same order and initialised from the same seed, as the old net."""
    torch.manual_seed(0)
    old = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(784, 256),
            norm=nn.BatchNorm1d(256),
            act=nn.ReLU(),
            fc2=nn.Linear(256, 10),
        )
    )
    torch.manual_seed(0)
    new = MLPClassifier((1, 28, 28), 10, optimizer=SGD)
    assert sum(p.numel() for p in new.parameters()) == 784 * 256 + 256 + 2 * 256 + 256 * 10 + 10
    assert [p.shape for p in new.parameters()] == [p.shape for p in old.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(new.parameters(), old.parameters(), strict=True))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(new(x), old(x))


def test_batchnorm_uses_batch_statistics_in_train_and_running_ones_in_eval():
    torch.manual_seed(0)
    model = make("bn")
    x = torch.randn(64, 1, 28, 28) * 3 + 2
    model.train()
    pre = model.net.norm1(model.net.fc1(model.net.flatten(x)))
    # train mode: each unit is standardised over the batch
    assert torch.allclose(pre.mean(0), torch.zeros(32), atol=1e-5)
    assert torch.allclose(pre.std(0, unbiased=False), torch.ones(32), atol=1e-3)
    assert model.net.norm1.num_batches_tracked == 1
    model.eval()
    single = model(x[:1])
    assert torch.equal(single, model(x[:1]))  # no batch dependence in eval
    batch_of_two = model(x[:2])[:1]
    assert torch.allclose(single, batch_of_two, atol=1e-6)
    assert model.net.norm1.num_batches_tracked == 1  # eval leaves running stats alone


@pytest.mark.parametrize("training", [True, False])
def test_layernorm_standardises_each_sample_over_its_units_in_train_and_eval(training):
    torch.manual_seed(0)
    model = make("layer", depth=2).train(training)
    x = torch.randn(16, 1, 28, 28) * 3 + 2
    fc1_out = model.net.fc1(model.net.flatten(x))
    pre = model.net.norm1(fc1_out)
    assert not torch.allclose(fc1_out.mean(1), torch.zeros(16), atol=1e-2)  # not already so
    assert torch.allclose(pre.mean(1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(pre.std(1, unbiased=False), torch.ones(16), atol=1e-3)
    # per sample: the output of one image does not depend on the rest of the batch
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-6)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_without_bn_the_output_does_not_depend_on_the_batch(norm):
    model = make(norm).train()
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["bn", "layer", "none"])
def test_cnn_shapes_layers_and_norms(shape, norm):
    model = make_cnn(norm, shape)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert model.first_layer is model.net.conv1
    assert model.first_layer.weight.shape == (4, shape[0], 3, 3)
    blocks = [[type(model.net.get_submodule(f"{kind}{i}")) for kind in
               ("conv", "conv_norm", "conv_act", "pool")] for i in (1, 2)]
    assert blocks == [[nn.Conv2d, NORM_2D[norm], nn.ReLU, nn.MaxPool2d]] * 2
    side = shape[1] // 4  # two poolings: 28 → 7, 32 → 8
    assert model.net.fc1.in_features == 8 * side * side
    assert type(model.net.norm1) is NORM_1D[norm]
    if norm == "layer":  # GroupNorm with one group: LayerNorm over channels and positions
        assert model.net.conv_norm1.num_groups == 1 and model.net.conv_norm1.num_channels == 4


def test_cnn_norms_standardise_over_the_right_axes():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32) * 3 + 2
    bn, gn = make_cnn("bn", (3, 32, 32)).train(), make_cnn("layer", (3, 32, 32)).train()
    pre_bn = bn.net.conv_norm1(bn.net.conv1(x))  # per channel over batch and positions
    assert torch.allclose(pre_bn.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(pre_bn.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    pre_gn = gn.net.conv_norm1(gn.net.conv1(x))  # per sample over channels and positions
    assert torch.allclose(pre_gn.mean((1, 2, 3)), torch.zeros(16), atol=1e-5)
    assert torch.allclose(pre_gn.std((1, 2, 3), unbiased=False), torch.ones(16), atol=1e-3)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm='group'"):
        make("group")
    with pytest.raises(ValueError, match="norm='group'"):
        make_cnn("group")


@pytest.mark.parametrize("model", [make("bn"), make_cnn("bn")], ids=["mlp", "cnn"])
def test_optimizer_comes_from_the_factory(model):
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("target", ["MLPClassifier", "CNNClassifier"])
def test_hyperparameters_from_hydra_load_with_weights_only(target):
    """Hydra passes lists as ListConfig; the checkpoint must hold plain values to resume."""
    cfg = OmegaConf.create({"_target_": f"bnstudy.model.{target}", "depth": 2})
    if target == "CNNClassifier":
        cfg.channels = [8, 16]
    model = instantiate(cfg, input_shape=(3, 32, 32), num_classes=10, optimizer=SGD)
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(model.hparams)}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["hyper_parameters"]
    expected = {"input_shape": (3, 32, 32), "num_classes": 10, "hidden_dim": 256, "norm": "bn",
                "depth": 2}
    assert loaded == expected | ({"channels": (8, 16)} if target == "CNNClassifier" else {})


def tiny_fit(data_dir, out=None, steps_per_batch=1, lr=0.0, norm="bn", **trainer_args):
    """Trains a hidden-16 MLP on tiny MNIST (540 training images in batches of 50: 11 steps an
    epoch), logging to TensorBoard in `out` (if given); returns (datamodule, model, trainer)."""
    L.seed_everything(0, verbose=False)
    data = MNISTDataModule(data_dir, batch_size=50, download=False,
                           steps_per_batch=steps_per_batch)
    model = MLPClassifier(data.input_shape, 10, hidden_dim=16, norm=norm,
                          optimizer=functools.partial(torch.optim.SGD, lr=lr))
    logger = TensorBoardLogger(out, name="", version="") if out else False
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_args)
    trainer.fit(model, datamodule=data)
    return data, model, trainer


def minibatches(data: MNISTDataModule):
    """Epoch 0's training minibatches (x, y), in order, out of the loader's lists."""
    return [pair for group in data.train_dataloader() for pair in group]


def test_logged_train_metrics_are_the_epochs_and_windows_means(tiny_data, tmp_path):
    """With lr=0 the weights stay put, so every logged value can be recomputed batch by batch.
    Three steps per Lightning batch: the windows still close after every 4th step."""
    data, model, trainer = tiny_fit(tiny_data, tmp_path, steps_per_batch=3, max_epochs=1,
                                    log_every_n_steps=4, limit_val_batches=0)
    losses, correct, counts = [], [], []
    with torch.no_grad():
        for x, y in minibatches(data):  # BN on batch statistics
            logits = model.train()(x)
            losses.append(float(F.cross_entropy(logits, y)) * len(y))
            correct.append(int((logits.argmax(-1) == y).sum()))
            counts.append(len(y))
    n = sum(counts)
    assert len(counts) == 11 and n == 540 and trainer.global_step == 11
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss"]) == pytest.approx(sum(losses) / n, rel=1e-5)
    assert float(metrics["train/acc"]) == pytest.approx(sum(correct) / n, rel=1e-6)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    logged = events.Scalars("train/loss_step")
    assert [e.step for e in logged] == [3, 7]  # after steps 4 and 8 (Lightning counts from 0)
    for event, window in zip(logged, (slice(0, 4), slice(4, 8)), strict=True):
        expected = sum(losses[window]) / sum(counts[window])
        assert event.value == pytest.approx(expected, rel=1e-5)
    accs = events.Scalars("train/acc_step")
    assert accs[1].value == pytest.approx(sum(correct[4:8]) / sum(counts[4:8]), rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [11]  # at the optimizer step


def test_steps_per_batch_trains_exactly_as_one_step_per_batch(tiny_data, tmp_path):
    runs = {k: tiny_fit(tiny_data, tmp_path / str(k), steps_per_batch=k, lr=0.1, max_epochs=2,
                        log_every_n_steps=5)
            for k in (1, 4)}
    (_, one, t1), (_, four, t4) = runs[1], runs[4]
    assert t1.num_training_batches == 11 and t4.num_training_batches == 3
    assert t1.global_step == t4.global_step == 22
    state1, state4 = one.state_dict(), four.state_dict()
    assert state1.keys() == state4.keys()
    assert all(torch.equal(state1[k], state4[k]) for k in state1)  # bit for bit
    assert not torch.equal(state1["net.fc1.weight"], tiny_fit(tiny_data, lr=0.1, max_epochs=1)[1]
                           .state_dict()["net.fc1.weight"])  # (the weights did move)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert float(t1.callback_metrics[key]) == float(t4.callback_metrics[key]), key
    logs = {k: EventAccumulator(str(tmp_path / str(k)), size_guidance={"scalars": 0}).Reload()
            for k in (1, 4)}
    for tag in ("train/loss", "val/acc", "train/loss_step"):
        series = [[(e.step, e.value) for e in logs[k].Scalars(tag)] for k in (1, 4)]
        assert series[0] == series[1], tag
    assert [e.step for e in logs[4].Scalars("val/loss")] == [11, 22]


def test_a_run_stopped_mid_epoch_still_reports_the_steps_it_took(tiny_data):
    """max_steps=3 with 2 steps per Lightning batch: the second batch stops after one step."""
    data, model, trainer = tiny_fit(tiny_data, steps_per_batch=2, norm="none", max_steps=3,
                                    limit_val_batches=0)
    assert trainer.global_step == 3
    with torch.no_grad():
        first = [(float(F.cross_entropy(model(x), y)), len(y)) for x, y in minibatches(data)[:3]]
    expected = sum(loss * n for loss, n in first) / sum(n for _, n in first)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)
