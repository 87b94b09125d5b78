"""The study's curve claims C1–C4, each tested by its own statistic over the seeds.

- **C1** MNIST, SGD: the BN model starts at a lower loss (a: first-epoch validation loss,
  BN − no BN < 0); the non-BN model keeps improving (b: its validation loss falls from the
  middle epoch to the last, > 0).
- **C2** MNIST: BN's advantage is smaller with Adam than with SGD ((BN − no BN) under SGD
  minus (BN − no BN) under Adam, final validation accuracy, > 0).
- **C3** CIFAR-10, SGD: BN improves much faster (a: mean validation accuracy over the epochs,
  the area under the curve divided by its length, BN − no BN > 0) and non-BN is no match at the
  end (b: final validation accuracy, BN − no BN > 0).
- **C4** CIFAR-10: with Adam BN still ends better (a: final validation accuracy, BN − no BN
  under Adam > 0), by less than with SGD (b: as C2, on CIFAR-10, > 0).

Each part is a contrast of per-seed values (`stats.contrast`: Welch's interval and two-sided
test). A part **holds** when its estimate lies on the claimed side of zero and p < 0.05,
**does not hold** when it lies on the other side (or at zero) with p < 0.05, and otherwise we
**cannot tell** (within the seed spread, or fewer than two ok seeds a side). A claim holds when
all its parts hold, does not hold when any part does not hold, and otherwise cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnstudy.report.runs import FIRST_KEYS, Run, describe
from bnstudy.report.stats import ALPHA, Contrast, contrast, mean_std, num

VERDICTS = ("holds", "does not hold", "cannot tell")
OPTIM_LABELS = {"sgd": "SGD", "adam": "Adam"}


# --- the per-run quantities ---------------------------------------------------------------


def first_val_loss(history: list[dict]) -> float:
    """Validation loss after the first epoch."""
    return num(history[0].get("val/loss"))


def late_val_loss_drop(history: list[dict]) -> float:
    """How much the validation loss falls from the middle epoch (epoch ⌊E/2⌋, counted from 1;
    the first with fewer than 4 epochs) to the last: positive while the model still improves."""
    middle = history[max(len(history) // 2 - 1, 0)]
    return num(middle.get("val/loss")) - num(history[-1].get("val/loss"))


def mean_val_acc(history: list[dict]) -> float:
    """The mean validation accuracy over the epochs: the area under the validation-accuracy
    curve divided by the number of epochs (the faster learner has the larger one)."""
    return float(np.mean([num(row.get("val/acc")) for row in history]))


def final_val_acc(history: list[dict]) -> float:
    return num(history[-1].get("val/acc"))


def values(runs: list[Run], of: Callable[[list[dict]], float]) -> list[float]:
    """`of(history)` for each ok run with a history, in seed order."""
    return [of(r.history) for r in runs if r.outcome == "ok" and r.history]


# --- parts and claims ---------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One tested statement of a claim."""

    claim: str        # C1 … C4
    part: str         # a, b
    dataset: str
    statement: str    # what the study says, in words
    statistic: str    # what is measured (the contrast, in words)
    sides: str        # each group's mean ± sample std over its ok seeds, in words
    unit: str         # "accuracy" (shown in percentage points) or "loss"
    sign: int         # the claimed sign of the estimate
    test: Contrast
    verdict: str


def decide(estimate: float, p_value: float, sign: int, alpha: float = ALPHA) -> str:
    """holds / does not hold / cannot tell (module docstring; the picture claims' rule too)."""
    if math.isnan(p_value) or p_value >= alpha:
        return "cannot tell"
    return "holds" if np.sign(estimate) == sign else "does not hold"


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts'."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "cannot tell"


def _spread(label: str, xs: list[float], scale: float, fmt: str) -> str:
    mean, std = mean_std(xs)
    if not xs:
        return f"{label} — (no ok run)"
    spread = "" if math.isnan(std) else f" ± {format(scale * std, fmt)}"
    return f"{label} {format(scale * mean, fmt)}{spread} ({len(xs)})"


def bn_minus_none(claim: str, part: str, dataset: str, statement: str, statistic: str,
                  by_norm: dict[str, list[Run]], of, sign: int, accuracy: bool) -> Part:
    """A part on BN − no BN of `of` in one comparison."""
    bn, none = values(by_norm.get("bn", []), of), values(by_norm.get("none", []), of)
    scale, fmt = (100, ".2f") if accuracy else (1, ".3f")
    sides = f"{_spread('BN', bn, scale, fmt)}; {_spread('no BN', none, scale, fmt)}"
    test = contrast([(1.0, bn), (-1.0, none)])
    return Part(claim, part, dataset, statement, statistic, sides,
                "accuracy" if accuracy else "loss", sign, test,
                decide(test.estimate, test.p_value, sign))


def one_side(claim: str, part: str, dataset: str, statement: str, statistic: str,
             runs: list[Run], label: str, of, sign: int) -> Part:
    """A part on one group's own values (against zero)."""
    xs = values(runs, of)
    test = contrast([(1.0, xs)])
    return Part(claim, part, dataset, statement, statistic, _spread(label, xs, 1, ".3f"),
                "loss", sign, test, decide(test.estimate, test.p_value, sign))


def gap_sgd_minus_adam(claim: str, part: str, dataset: str, statement: str,
                       sgd: dict[str, list[Run]], adam: dict[str, list[Run]]) -> Part:
    """A part on (BN − no BN under SGD) − (BN − no BN under Adam), final validation accuracy."""
    groups = {(o, n): values(by_norm.get(n, []), final_val_acc)
              for o, by_norm in (("sgd", sgd), ("adam", adam)) for n in ("bn", "none")}
    gaps = []
    for optim in ("sgd", "adam"):
        gap = contrast([(1.0, groups[optim, "bn"]), (-1.0, groups[optim, "none"])])
        gaps.append(f"{OPTIM_LABELS[optim]} gap {_signed(100 * gap.estimate)} pts "
                    f"({_ci(gap, 100)})")
    test = contrast([(1.0, groups["sgd", "bn"]), (-1.0, groups["sgd", "none"]),
                     (-1.0, groups["adam", "bn"]), (1.0, groups["adam", "none"])])
    return Part(claim, part, dataset, statement,
                "(BN − no BN with SGD) − (BN − no BN with Adam), final val acc", "; ".join(gaps),
                "accuracy", 1, test, decide(test.estimate, test.p_value, 1))


def _signed(x: float, fmt: str = ".2f") -> str:
    return "—" if math.isnan(x) else f"{x:+{fmt}}"


def _ci(test: Contrast, scale: float = 1, fmt: str = ".2f") -> str:
    if math.isnan(test.ci_low):
        return "no interval"
    return f"95% CI {scale * test.ci_low:+{fmt}} to {scale * test.ci_high:+{fmt}}"


def claim_parts(study: dict[tuple[str, str], dict[str, list[Run]]]) -> list[Part]:
    """The parts of C1–C4 that this setting's comparisons, by (dataset, optim), allow."""
    parts = []
    mnist_sgd, mnist_adam = study.get(("mnist", "sgd")), study.get(("mnist", "adam"))
    cifar_sgd, cifar_adam = study.get(("cifar10", "sgd")), study.get(("cifar10", "adam"))
    if mnist_sgd:
        parts.append(bn_minus_none(
            "C1", "a", "mnist", "MNIST, SGD: BN starts at a lower loss",
            "first-epoch val loss, BN − no BN", mnist_sgd, first_val_loss, -1, False))
        parts.append(one_side(
            "C1", "b", "mnist", "MNIST, SGD: no BN keeps improving",
            "no BN's val loss, middle epoch − last epoch", mnist_sgd.get("none", []), "no BN",
            late_val_loss_drop, 1))
    if mnist_sgd and mnist_adam:
        parts.append(gap_sgd_minus_adam(
            "C2", "", "mnist", "MNIST: the BN − no BN gap is smaller with Adam than with SGD",
            mnist_sgd, mnist_adam))
    if cifar_sgd:
        parts.append(bn_minus_none(
            "C3", "a", "cifar10", "CIFAR-10, SGD: BN improves much faster",
            "mean val acc over the epochs (area under the curve), BN − no BN", cifar_sgd,
            mean_val_acc, 1, True))
        parts.append(bn_minus_none(
            "C3", "b", "cifar10", "CIFAR-10, SGD: no BN is no match for BN (\"worthless\")",
            "final val acc, BN − no BN", cifar_sgd, final_val_acc, 1, True))
    if cifar_adam:
        parts.append(bn_minus_none(
            "C4", "a", "cifar10", "CIFAR-10, Adam: BN ends with better accuracy",
            "final val acc, BN − no BN", cifar_adam, final_val_acc, 1, True))
    if cifar_sgd and cifar_adam:
        parts.append(gap_sgd_minus_adam(
            "C4", "b", "cifar10", "CIFAR-10: the gap is smaller with Adam than with SGD",
            cifar_sgd, cifar_adam))
    return parts


def settings(comparisons: dict[tuple, dict[str, list[Run]]]
             ) -> dict[tuple, dict[tuple[str, str], dict[str, list[Run]]]]:
    """The comparisons by setting (their key without dataset and optim: lr=…, batch_size=…,
    or () in the default study), then by (dataset, optim)."""
    out: dict[tuple, dict] = {}
    for ckey, by_norm in comparisons.items():
        values_ = dict(ckey)
        setting = tuple(kv for kv in ckey if kv[0] not in FIRST_KEYS)
        out.setdefault(setting, {})[(values_["dataset"], values_["optim"])] = by_norm
    return dict(sorted(out.items(), key=lambda item: [_sort_value(v) for _, v in item[0]]))


def _sort_value(value) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def claim_verdicts(parts: list) -> dict[str, str]:
    """Each claim's verdict, in order (C1 … C4; P1 … P3 for the picture claims' parts)."""
    names = sorted({p.claim for p in parts})
    return {c: combine([p.verdict for p in parts if p.claim == c]) for c in names}


# --- report.md and claims.csv -------------------------------------------------------------


def _estimate(part: Part) -> str:
    scale, fmt = (100, ".2f") if part.unit == "accuracy" else (1, ".3f")
    unit = " pts" if part.unit == "accuracy" else ""
    if math.isnan(part.test.estimate):
        return "— (a side has no ok run)"
    return f"{_signed(scale * part.test.estimate, fmt)}{unit} ({_ci(part.test, scale, fmt)})"


def _p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.2g}"


def parts_table(parts: list[Part]) -> str:
    lines = ["| claim | statement | statistic | mean ± std over ok seeds (n) | estimate | p | "
             "verdict |", "|" + " --- |" * 7]
    for p in parts:
        lines.append(f"| {p.claim}{p.part} | {p.statement} | {p.statistic} | {p.sides} | "
                     f"{_estimate(p)} | {_p(p.test.p_value)} | **{p.verdict}** |")
    return "\n".join(lines)


def claims_section(comparisons: dict[tuple, dict[str, list[Run]]]
                   ) -> tuple[str, list[dict]]:
    """The report.md section `## Claims` and the rows of claims.csv; ("", []) when no setting
    has a comparison a claim needs."""
    by_setting = {s: claim_parts(study) for s, study in settings(comparisons).items()}
    by_setting = {s: parts for s, parts in by_setting.items() if parts}
    if not by_setting:
        return "", []
    lines = ["## Claims", "",
             "The study's curve claims, each tested by its own statistic over the seeds "
             "(accuracies in percentage points, pts). A part **holds** when its estimate lies "
             f"on the claimed side of zero with Welch's two-sided p < {ALPHA}, **does not "
             "hold** when it lies on the other side with p < "
             f"{ALPHA}, and otherwise we **cannot tell**; a claim holds when all its parts "
             "hold, does not hold when any part does not. The 95% CI is Welch's interval. "
             "Also in `claims.csv`.", ""]
    names = sorted({p.claim for parts in by_setting.values() for p in parts})
    if len(by_setting) > 1:
        lines += ["| setting | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
        for setting, parts in by_setting.items():
            verdicts = claim_verdicts(parts)
            lines.append(f"| {describe(setting)} | "
                         + " | ".join(verdicts.get(c, "—") for c in names) + " |")
        lines.append("")
    rows = []
    for setting, parts in by_setting.items():
        if len(by_setting) > 1:
            lines += [f"### {describe(setting)}", ""]
        verdicts = claim_verdicts(parts)
        lines.append("Verdicts: " + "; ".join(f"**{c} {v}**" for c, v in verdicts.items())
                     + ".")
        lines += ["", parts_table(parts), ""]
        for p in parts:
            rows.append({**dict(setting), "claim": p.claim, "part": p.part,
                         "dataset": p.dataset, "statement": p.statement,
                         "statistic": p.statistic, "unit": p.unit,
                         "claimed_sign": p.sign, "sides": p.sides,
                         "estimate": p.test.estimate, "ci_low": p.test.ci_low,
                         "ci_high": p.test.ci_high, "p_value": p.test.p_value,
                         "verdict": p.verdict, "claim_verdict": verdicts[p.claim]})
    return "\n".join(lines), rows
