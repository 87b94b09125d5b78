"""The MLP: shapes, the norm flag, and BatchNorm's train/eval behaviour."""

import functools

import pytest
import torch
from torch import nn

from bnstudy.model import MLPClassifier


def make(norm: str, input_shape=(1, 28, 28), hidden_dim=32) -> MLPClassifier:
    return MLPClassifier(
        input_shape,
        num_classes=10,
        hidden_dim=hidden_dim,
        norm=norm,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("norm", ["bn", "none"])
def test_output_shape_and_layers(shape, norm):
    model = make(norm, shape)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert model.first_layer.weight.shape == (32, shape[0] * shape[1] * shape[2])
    kinds = [type(m) for m in model.net]
    assert kinds[:2] == [nn.Flatten, nn.Linear] and kinds[3:] == [nn.ReLU, nn.Linear]
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert has_bn == (norm == "bn")


def test_batchnorm_uses_batch_statistics_in_train_and_running_ones_in_eval():
    torch.manual_seed(0)
    model = make("bn")
    x = torch.randn(64, 1, 28, 28) * 3 + 2
    model.train()
    pre = model.net.norm(model.net.fc1(model.net.flatten(x)))
    # train mode: each unit is standardised over the batch
    assert torch.allclose(pre.mean(0), torch.zeros(32), atol=1e-5)
    assert torch.allclose(pre.std(0, unbiased=False), torch.ones(32), atol=1e-3)
    assert model.net.norm.num_batches_tracked == 1
    model.eval()
    single = model(x[:1])
    assert torch.equal(single, model(x[:1]))  # no batch dependence in eval
    batch_of_two = model(x[:2])[:1]
    assert torch.allclose(single, batch_of_two, atol=1e-6)
    assert model.net.norm.num_batches_tracked == 1  # eval leaves running stats alone


def test_without_bn_the_output_does_not_depend_on_the_batch():
    model = make("none").train()
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-6)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm='group'"):
        make("group")


def test_optimizer_comes_from_the_factory():
    model = make("bn")
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
