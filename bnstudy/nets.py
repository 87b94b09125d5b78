"""The study's networks as plain `nn.Module`s, built by Hydra from `conf/model/` with the
dataset's input shape and class count: an MLP (the study's net) and a small CNN."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from bnstudy.norms import make_norm


def mlp_layers(in_features: int, hidden_dim: int, depth: int, norm: str,
               num_classes: int) -> list[tuple[str, nn.Module]]:
    """`Flatten → [Linear → norm → ReLU] × depth → Linear(hidden, classes)`, named
    `flatten, fc1, norm1, act1, fc2, …, out` (a ReLU per layer)."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(1, depth + 1):
        layers += [(f"fc{i}", nn.Linear(in_features if i == 1 else hidden_dim, hidden_dim)),
                   (f"norm{i}", make_norm(norm, hidden_dim)), (f"act{i}", nn.ReLU())]
    return [*layers, ("out", nn.Linear(hidden_dim, num_classes))]


class MLP(nn.Sequential):
    """`mlp_layers` as a network; depth 1: the study's `Linear → [BatchNorm1d] → ReLU → Linear`."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden_dim: int = 256,
                 depth: int = 1, norm: str = "bn") -> None:
        super().__init__(OrderedDict(
            mlp_layers(math.prod(input_shape), hidden_dim, depth, norm, num_classes)))


class CNN(nn.Sequential):
    """`[Conv3×3 (padding 1) → norm → ReLU → MaxPool2] per entry of channels`, named `conv1,
    conv_norm1, conv_act1, pool1, …`, then `mlp_layers` on the flattened maps."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 channels: Sequence[int] = (32, 64), hidden_dim: int = 256, depth: int = 1,
                 norm: str = "bn") -> None:
        in_channels, height, width = input_shape
        if min(height, width) >> len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(  # (torch's own error comes at the first batch, mid-fit)
                f"channels={list(channels)}: each entry is a conv's width (>= 1) and halves the "
                f"{height}×{width} images: at most {min(height, width).bit_length() - 1} entries "
                "here")
        layers = []
        for i, out_channels in enumerate(channels, 1):
            layers += [(f"conv{i}", nn.Conv2d(in_channels, out_channels, 3, padding=1)),
                       (f"conv_norm{i}", make_norm(norm, out_channels, spatial=True)),
                       (f"conv_act{i}", nn.ReLU()), (f"pool{i}", nn.MaxPool2d(2))]
            in_channels, height, width = out_channels, height // 2, width // 2  # pools round down
        super().__init__(OrderedDict(
            [*layers, *mlp_layers(in_channels * height * width, hidden_dim, depth, norm,
                                  num_classes)]))


def first_layer(net: nn.Module) -> nn.Linear | nn.Conv2d:
    """The first Linear or Conv2d layer, whose weights the weight-grid callback draws."""
    return next(m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d))
