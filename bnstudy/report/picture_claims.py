"""The study's picture claims P1–P3, each tested over the seeds on the `pictures.csv` rows.

- **P1** MNIST first-layer weights: without BN the weights are more interpretable (digit
  strokes); with BN + Adam most units learn structured patterns, while some non-BN units stay
  pure noise.
- **P2** CIFAR-10 hallucinations: non-BN networks capture only the class's general colour
  (airplanes mostly blue, dogs and frogs greenish); BN networks give more defined shapes with
  either optimizer; Adam + BN gives the most distinct images.
- **P3** MNIST hallucinations show recognisable class shapes.

A comparison part **holds** when its estimate lies on the claimed side of zero with Welch's
two-sided p < 0.05, **does not hold** when it lies on the other side with p < 0.05, and
otherwise we **cannot tell**. A part about every seed (some units noise-like, images
recognisable) holds when every seed meets it, does not hold when no seed does, and otherwise
we cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bnstudy.report.claims import OPTIM_LABELS, decide
from bnstudy.report.runs import norm_label
from bnstudy.report.stats import mean_std

RECOGNISED = 0.8  # P3: at least this share of a run's class images read as their class


@dataclass(frozen=True)
class Part:
    """One tested statement of a picture claim."""

    claim: str
    part: str
    statement: str
    statistic: str
    sides: str
    estimate: float
    p_value: float
    verdict: str


def welch(a: list[float], b: list[float] | None = None) -> tuple[float, float]:
    """mean(a) − mean(b) (or mean(a)) and Welch's two-sided p (one-sample t-test without b);
    p NaN where undefined (fewer than two values a side, or no spread). Not `stats.contrast`:
    values all equal give no test here, where contrast's rounded variance may give p ≈ 0."""
    if not a or (b is not None and not b):
        return math.nan, math.nan
    estimate = float(np.mean(a) - (np.mean(b) if b is not None else 0.0))
    if len(a) < 2 or (b is not None and len(b) < 2):
        return estimate, math.nan
    if np.ptp(a) == 0 and (b is None or np.ptp(b) == 0):
        return estimate, math.nan
    result = (stats.ttest_ind(a, b, equal_var=False) if b is not None
              else stats.ttest_1samp(a, 0.0))
    return estimate, float(result.pvalue)


def every_seed(flags: list[bool]) -> str:
    """The verdict of a part about every seed, from each seed's flag (module docstring)."""
    if not flags:
        return "cannot tell"
    if all(flags):
        return "holds"
    return "does not hold" if not any(flags) else "cannot tell"


def config_label(norm: str, optim: str) -> str:
    """`No BatchNorm + SGD`."""
    return f"{norm_label(norm)} + {OPTIM_LABELS.get(optim, optim)}"


def spread(xs: list[float], fmt: str) -> str:
    """`mean ± std (n)` in `fmt` (percentages: the std in points, `50% ± 10 (3)`)."""
    if not xs:
        return "— (0)"
    mean, std = mean_std(xs)
    if fmt.endswith("%"):
        digits = fmt[1:-1] or "0"
        text = f"{100 * mean:.{digits}f}%" + ("" if math.isnan(std)
                                                else f" ± {100 * std:.{digits}f}")
    else:
        fmt = ".1f" if fmt == "d" else fmt
        text = format(mean, fmt) + ("" if math.isnan(std) else f" ± {format(std, fmt.lstrip('+'))}")
    return f"{text} ({len(xs)})"


class Groups:
    """Per-run values by (dataset, norm, optim), from the pictures.csv rows of one setting."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def values(self, dataset: str, column: str, norm: str | None = None,
               optim: str | None = None) -> list[float]:
        return [float(r[column]) for r in self.rows
                if r["dataset"] == dataset and (norm is None or r["norm"] == norm)
                and (optim is None or r["optim"] == optim)
                and not math.isnan(float(r[column]))]


def group_label(group: tuple) -> str:
    """`No BatchNorm + SGD`, or `No BatchNorm (both optimizers)` for (norm, None)."""
    norm, optim = group
    if norm and optim:
        return config_label(norm, optim)
    return f"{norm_label(norm)} (both optimizers)" if norm else OPTIM_LABELS.get(optim, optim)


def compare(claim: str, part: str, statement: str, column: str, fmt: str, g: Groups,
            dataset: str, first: tuple, second: tuple | None, sign: int) -> Part:
    """A part on mean(first) − mean(second) of `column` (or first against zero), Welch."""
    a = g.values(dataset, column, *first)
    b = g.values(dataset, column, *second) if second is not None else None
    sides = f"{group_label(first)} {spread(a, fmt)}"
    statistic = f"{column}, {group_label(first)}"
    if second is not None:
        sides += f"; {group_label(second)} {spread(b, fmt)}"
        statistic += f" − {group_label(second)}"
    estimate, p = welch(a, b)
    return Part(claim, part, statement, statistic, sides, estimate, p, decide(estimate, p, sign))


def threshold(claim: str, part: str, statement: str, column: str, fmt: str, g: Groups,
              dataset: str, norm: str, optim: str, test: Callable[[float], bool],
              rule: str) -> Part:
    """A part every seed must meet (`test` on the seed's value)."""
    xs = g.values(dataset, column, norm, optim)
    hits = [test(x) for x in xs]
    return Part(claim, part, statement, f"{column}, {config_label(norm, optim)}: {rule}",
                f"{config_label(norm, optim)} {spread(xs, fmt)}; {sum(hits)} of {len(xs)} "
                "seeds meet it", math.nan, math.nan, every_seed(hits))


def claim_parts(rows: list[dict]) -> list[Part]:
    """The parts of P1–P3 that the rows' datasets and configurations allow."""
    g, parts = Groups(rows), []
    have = {(r["dataset"], r["norm"], r["optim"]) for r in rows}
    for optim in OPTIM_LABELS:
        if all(("mnist", n, optim) in have for n in ("bn", "none")):
            parts.append(compare(
                "P1", f"a ({OPTIM_LABELS[optim]})", "MNIST: without BN the first-layer weights are "
                "more interpretable (more of each unit in the data's principal components)",
                "pc_alignment", ".3f", g, "mnist", ("none", optim), ("bn", optim), 1))
        if ("mnist", "none", optim) in have:
            parts.append(threshold(
                "P1", f"b ({OPTIM_LABELS[optim]})", "MNIST: without BN the weights are digit "
                "strokes (most units structured, not noise-like)", "noise_units", ".0%", g,
                "mnist", "none", optim, lambda x: x < 0.5, "under 50% noise-like units"))
    if ("mnist", "bn", "adam") in have:
        parts.append(threshold(
            "P1", "c", "MNIST, BN + Adam: most units learn structured patterns",
            "noise_units", ".0%", g, "mnist", "bn", "adam", lambda x: x < 0.5,
            "under 50% noise-like units"))
    for optim in OPTIM_LABELS:
        if ("mnist", "none", optim) in have:
            parts.append(threshold(
                "P1", f"d ({OPTIM_LABELS[optim]})", "MNIST: some non-BN units stay pure noise",
                "noise_units", ".0%", g, "mnist", "none", optim, lambda x: x > 0,
                "at least one noise-like unit"))
    for optim in OPTIM_LABELS:
        if ("cifar10", "none", optim) not in have:
            continue
        for part, column, what in (
                ("a1", "colour_fidelity", "the class's general colour"),
                ("a2", "blueness_airplane", "airplanes mostly blue"),
                ("a3", "greenness_dog", "dogs greenish"),
                ("a4", "greenness_frog", "frogs greenish")):
            parts.append(compare(
                "P2", f"{part} ({OPTIM_LABELS[optim]})",
                f"CIFAR-10: non-BN networks capture {what}", column, "+.3f", g, "cifar10",
                ("none", optim), None, 1))
    for optim in OPTIM_LABELS:
        if all(("cifar10", n, optim) in have for n in ("bn", "none")):
            parts.append(compare(
                "P2", f"b ({OPTIM_LABELS[optim]})", "CIFAR-10: BN networks give more defined "
                "shapes (stronger edges at the scale of shapes)", "sharpness", ".3f", g, "cifar10",
                ("bn", optim), ("none", optim), 1))
    if ("cifar10", "bn", "adam") in have:
        for norm, optim in (("bn", "sgd"), ("none", "sgd"), ("none", "adam")):
            if ("cifar10", norm, optim) in have:
                parts.append(compare(
                    "P2", f"c (vs {config_label(norm, optim)})", "CIFAR-10: Adam + BN gives "
                    "the most distinct images", "distinctness", ".2f", g, "cifar10",
                    ("bn", "adam"), (norm, optim), 1))
    for norm in ("none", "bn"):
        for optim in OPTIM_LABELS:
            if ("mnist", norm, optim) in have:
                parts.append(threshold(
                    "P3", f" ({config_label(norm, optim)})", "MNIST hallucinations show "
                    "recognisable class shapes", "referee_acc", ".0%", g, "mnist", norm, optim,
                    lambda x: x >= RECOGNISED - 1e-9,
                    f"the independent CNN reads ≥ {RECOGNISED:.0%} of the digits"))
    return parts


def parts_table(parts: list[Part]) -> str:
    """report.md's table of the parts: statement, statistic, spread, estimate, p, verdict."""
    lines = ["| claim | statement | statistic | mean ± std over seeds (n) | estimate | p | "
             "verdict |", "|" + " --- |" * 7]
    for p in parts:
        estimate = "—" if math.isnan(p.estimate) else f"{p.estimate:+.3f}"
        pval = "—" if math.isnan(p.p_value) else f"{p.p_value:.2g}"
        lines.append(f"| {p.claim}{p.part} | {p.statement} | {p.statistic} | {p.sides} | "
                     f"{estimate} | {pval} | **{p.verdict}** |")
    return "\n".join(lines)


def plain_words(parts: list[Part]) -> list[str]:
    """One sentence per part that does not hold or cannot be told."""
    lines = []
    for p in parts:
        if p.verdict == "does not hold":
            lines.append(f"- **{p.claim}{p.part} does not hold**: {p.statement} — measured "
                         f"{p.sides}.")
        elif p.verdict == "cannot tell":
            lines.append(f"- {p.claim}{p.part}: cannot tell ({p.statement}) — {p.sides}.")
    return lines
