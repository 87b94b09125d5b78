"""The networks (bnstudy.nets): shapes, depth, the norm flag (bn | layer | none | group),
each norm's statistics."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from bnstudy.nets import CNN, MLP, first_layer
from bnstudy.norms import NORMS, make_norm

SHAPES = [(1, 28, 28), (3, 32, 32)]
NORM_1D = {"bn": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": nn.Identity, "group": nn.GroupNorm}
NORM_2D = {"bn": nn.BatchNorm2d, "layer": nn.GroupNorm, "none": nn.Identity, "group": nn.GroupNorm}


def make(norm: str, input_shape=(1, 28, 28), hidden_dim=32, depth=1) -> MLP:
    return MLP(input_shape, 10, hidden_dim=hidden_dim, depth=depth, norm=norm)


def make_cnn(norm: str, input_shape=(1, 28, 28), channels=(4, 8), hidden_dim=16) -> CNN:
    return CNN(input_shape, 10, channels=channels, hidden_dim=hidden_dim, norm=norm)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["bn", "layer", "none"])
@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_shapes_layers_and_norms(shape, norm, depth):
    model = make(norm, shape, depth=depth)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert first_layer(model) is model.fc1
    assert first_layer(model).weight.shape == (32, shape[0] * shape[1] * shape[2])
    hidden = [[type(model.get_submodule(f"{kind}{i}")) for kind in ("fc", "norm", "act")]
              for i in range(1, depth + 1)]
    assert hidden == [[nn.Linear, NORM_1D[norm], nn.ReLU]] * depth
    assert [type(m) for m in model] == [nn.Flatten, *sum(hidden, []), nn.Linear]
    widths = [model.get_submodule(f"fc{i}").in_features for i in range(2, depth + 1)]
    assert widths == [32] * (depth - 1)
    assert model.out.in_features == 32 and model.out.out_features == 10
    # each layer its own module: hooks on ReLU inputs and per-name statistics need one a layer
    assert len({id(m) for m in model}) == len(model)


def test_depth_one_is_the_studys_two_layer_net():
    """Same parameters, in the same order and initialised from the same seed, as the old net."""
    torch.manual_seed(0)
    old = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(784, 256),
                                    norm=nn.BatchNorm1d(256), act=nn.ReLU(),
                                    fc2=nn.Linear(256, 10)))
    torch.manual_seed(0)
    new = MLP((1, 28, 28), 10)
    assert [p.shape for p in new.parameters()] == [p.shape for p in old.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(new.parameters(), old.parameters(), strict=True))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(new(x), old(x))


def test_batchnorm_uses_batch_statistics_in_train_and_running_ones_in_eval():
    torch.manual_seed(0)
    model = make("bn")
    x = torch.randn(64, 1, 28, 28) * 3 + 2
    model.train()
    pre = model.norm1(model.fc1(model.flatten(x)))
    # train mode: each unit is standardised over the batch
    assert torch.allclose(pre.mean(0), torch.zeros(32), atol=1e-5)
    assert torch.allclose(pre.std(0, unbiased=False), torch.ones(32), atol=1e-3)
    assert model.norm1.num_batches_tracked == 1
    model.eval()
    assert torch.allclose(model(x[:1]), model(x[:2])[:1], atol=1e-6)  # no batch dependence
    assert model.norm1.num_batches_tracked == 1  # eval leaves running stats alone


@pytest.mark.parametrize("training", [True, False])
def test_layernorm_standardises_each_sample_over_its_units_in_train_and_eval(training):
    torch.manual_seed(0)
    model = make("layer", depth=2).train(training)
    x = torch.randn(16, 1, 28, 28) * 3 + 2
    fc1_out = model.fc1(model.flatten(x))
    pre = model.norm1(fc1_out)
    assert not torch.allclose(fc1_out.mean(1), torch.zeros(16), atol=1e-2)  # not already so
    assert torch.allclose(pre.mean(1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(pre.std(1, unbiased=False), torch.ones(16), atol=1e-3)


@pytest.mark.parametrize("norm", ["none", "layer", "group"])
def test_without_bn_the_output_does_not_depend_on_the_batch(norm):
    torch.manual_seed(0)
    model = make(norm).train()
    x = torch.randn(8, 1, 28, 28)  # (BN's would differ by ~1; float32's matmul by up to ~1e-6)
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["bn", "layer", "none"])
def test_cnn_shapes_layers_and_norms(shape, norm):
    model = make_cnn(norm, shape)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert first_layer(model) is model.conv1
    assert first_layer(model).weight.shape == (4, shape[0], 3, 3)
    blocks = [[type(model.get_submodule(f"{kind}{i}")) for kind in
               ("conv", "conv_norm", "conv_act", "pool")] for i in (1, 2)]
    assert blocks == [[nn.Conv2d, NORM_2D[norm], nn.ReLU, nn.MaxPool2d]] * 2
    side = shape[1] // 4  # two poolings: 28 → 7, 32 → 8
    assert model.fc1.in_features == 8 * side * side
    assert type(model.norm1) is NORM_1D[norm]
    assert len({id(m) for m in model}) == len(model)  # a ReLU per layer, as the MLP's
    if norm == "layer":  # GroupNorm with one group: LayerNorm over channels and positions
        assert model.conv_norm1.num_groups == 1 and model.conv_norm1.num_channels == 4


def test_cnn_channels_that_pool_the_images_away_or_have_no_width_are_refused_when_made():
    assert CNN((1, 28, 28), 10, channels=[4] * 4)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for channels in ([4] * 5, [0]):  # torch's own error came at the first batch, mid-fit
        with pytest.raises(ValueError, match=r"^channels=\[.*\]: each entry is a conv's width "
                           r"\(>= 1\) and halves the 28×28 images: at most 4 entries here$"):
            CNN((1, 28, 28), 10, channels=channels)
    assert CNN((3, 32, 32), 10, channels=[4] * 5)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cnn_norms_standardise_over_the_right_axes():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32) * 3 + 2
    bn, gn = make_cnn("bn", (3, 32, 32)).train(), make_cnn("layer", (3, 32, 32)).train()
    pre_bn = bn.conv_norm1(bn.conv1(x))  # per channel over batch and positions
    assert torch.allclose(pre_bn.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(pre_bn.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    pre_gn = gn.conv_norm1(gn.conv1(x))  # per sample over channels and positions
    assert torch.allclose(pre_gn.mean((1, 2, 3)), torch.zeros(16), atol=1e-5)
    assert torch.allclose(pre_gn.std((1, 2, 3), unbiased=False), torch.ones(16), atol=1e-3)


def test_the_norm_registry_builds_every_named_layer_and_refuses_others():
    """One table names the norms for model, config check and report; GroupNorm takes up to
    32 groups of 2 units or more."""
    for build in (make, make_cnn):
        with pytest.raises(ValueError, match="norm='instance' is not a known normalisation"):
            build("instance")
    assert list(NORMS) == list(NORM_1D) == ["bn", "layer", "none", "group"]
    for name in NORMS:
        assert type(make_norm(name, 4)) is NORM_1D[name]
        assert type(make_norm(name, 4, spatial=True)) is NORM_2D[name]
    assert make_norm("group", 256).num_groups == 32 and make_norm("group", 48).num_groups == 8
    assert make_norm("layer", 64, spatial=True).num_groups == 1
