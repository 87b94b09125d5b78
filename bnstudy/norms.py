"""The registry of normalisations a `norm` flag can name: the layer it builds, and how the
report labels and colours it. Model, config check and report all read this one table
(torch is imported only to build a layer, so the report and config checks start fast).
Adding a norm: an entry here and `conf/norm/<name>.yaml`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Norm:
    """One normalisation: `flat` (`spatial`) names the `torch.nn` layer between a Linear (a
    Conv2d) and its ReLU; GroupNorm gets gcd(`groups`, units / 2) groups, each of 2 units or
    more; `label` and `color` are the report's."""

    flat: str
    spatial: str
    label: str
    color: str
    groups: int = 1


NORMS: dict[str, Norm] = {
    "bn": Norm("BatchNorm1d", "BatchNorm2d", "BatchNorm", "tab:blue"),  # over the batch
    "layer": Norm("LayerNorm", "GroupNorm", "LayerNorm", "tab:green"),  # over each sample
    "none": Norm("Identity", "Identity", "No BatchNorm", "tab:orange"),
    "group": Norm("GroupNorm", "GroupNorm", "GroupNorm", "tab:purple", groups=32),  # Wu & He
}


def make_norm(norm: str, num_features: int, spatial: bool = False):
    """The layer of `NORMS[norm]` for `num_features` units (`spatial`: channels of a conv)."""
    import math

    from torch import nn

    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not a known normalisation; use one of {list(NORMS)}.")
    entry = NORMS[norm]
    name = entry.spatial if spatial else entry.flat
    if name == "GroupNorm":
        return nn.GroupNorm(math.gcd(entry.groups, max(1, num_features // 2)), num_features)
    return nn.Identity() if name == "Identity" else getattr(nn, name)(num_features)
