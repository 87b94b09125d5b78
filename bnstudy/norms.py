"""The registry of normalisations a `norm` flag can name: the layer it builds, and how the
report labels and colours it. Model, config check and report all read this one table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Norm:
    """One normalisation: `layer(features, spatial)` builds the module placed between a Linear
    (`spatial`: a Conv2d) and its ReLU; `label` and `color` are the report's."""

    layer: Callable[[int, bool], nn.Module]
    label: str
    color: str


NORMS: dict[str, Norm] = {
    # statistics over the batch (and positions)
    "bn": Norm(lambda n, spatial: nn.BatchNorm2d(n) if spatial else nn.BatchNorm1d(n),
               "BatchNorm", "tab:blue"),
    # each sample over its units (after a convolution: over channels and positions)
    "layer": Norm(lambda n, spatial: nn.GroupNorm(1, n) if spatial else nn.LayerNorm(n),
                  "LayerNorm", "tab:green"),
    "none": Norm(lambda n, spatial: nn.Identity(), "No BatchNorm", "tab:orange"),
}


def make_norm(norm: str, num_features: int, spatial: bool = False) -> nn.Module:
    """The layer of `NORMS[norm]` for `num_features` units (`spatial`: channels of a conv)."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not a known normalisation; use one of {list(NORMS)}.")
    return NORMS[norm].layer(num_features, spatial)
