"""The claims registry: each part declared once as data (statement, the groups it contrasts as
weighted `Term`s, the per-run quantity, claimed sign, source table, family); `verdicts`
decides them by one rule, Holm-adjusted within each family (`FAMILIES`); `render` tables
them. C1–C4: curves; C5: equal training time; C6: tuned settings; P1–P3: pictures. Adding a
claim: a `CLAIMS` line and its `Part`s in `declare`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bnstudy.report.runs import OPTIM_LABELS, STUDY, norm_word, where

FAMILIES = {"C1": "curves", "C2": "curves", "C3": "curves", "C4": "curves", "C5": "cost",
            "C6": "tuned", "C7": "tuned", "P1": "pictures", "P2": "pictures", "P3": "pictures"}
RECOGNISED = 0.8   # P3: at least this share of a run's class images read as their class
BUDGETS = (1.0, 0.5)  # C5: shares of the baseline run's training time


@dataclass(frozen=True)
class Term:
    """One group of a contrast: its weight and the runs it selects (None: any value)."""

    weight: float
    dataset: str | None = None
    optim: str | None = None
    norm: str | None = None

    def selects(self, table: pd.DataFrame) -> pd.Series:
        mask = pd.Series(True, index=table.index)
        for key, want in (("dataset", self.dataset), ("optim", self.optim), ("norm", self.norm)):
            if want is not None:
                mask &= table[key] == want if key in table else False
        return mask

    def label(self, with_optim: bool = True) -> str:
        """`BN`, `no BN + SGD`, `BN + Adam`."""
        words = [norm_word(self.norm)] if self.norm else []
        if self.optim and with_optim:
            words.append(OPTIM_LABELS.get(self.optim, self.optim))
        return " + ".join(words) or "all"


@dataclass(frozen=True)
class Part:
    """A claim's part: `statement` tested on `quantity` of `source` through `terms` (`sign`:
    the claimed sign), or `rule`, met by every seed; `family`: Holm's (`FAMILIES`)."""

    claim: str
    part: str
    statement: str
    statistic: str
    quantity: str
    terms: tuple[Term, ...]
    sign: int = 1
    source: str = "curves"
    fmt: str = "acc"   # acc: percentage points; loss: 3 decimals; else a format spec
    rule: Callable[[float], bool] | None = None
    rule_words: str = ""
    family: str = ""

    def __post_init__(self):
        if not self.family:
            object.__setattr__(self, "family", FAMILIES.get(self.claim, self.claim))

    @property
    def paired(self) -> bool:
        """Same-seed runs of its terms pair (same settings but the contrasted ones); C6's tuned
        runs do not (each norm at its own setting)."""
        return self.source != "tuned"


def pair(dataset: str, optim: str, treatment: str = STUDY[0],
         baseline: str = STUDY[1]) -> tuple[Term, Term]:
    """treatment − baseline within one dataset × optimizer."""
    return Term(1.0, dataset, optim, treatment), Term(-1.0, dataset, optim, baseline)


def _gap(dataset: str) -> tuple[Term, ...]:
    """(BN − no BN with SGD) − (BN − no BN with Adam)."""
    return (*pair(dataset, "sgd"), Term(-1.0, dataset, "adam", "bn"),
            Term(1.0, dataset, "adam", "none"))


CLAIMS = {
    "C1": "MNIST, SGD: the BN model starts at a lower loss; the non-BN model keeps improving",
    "C2": "MNIST: BN's advantage is smaller with Adam than with SGD",
    "C3": "CIFAR-10, SGD: BN improves much faster, and non-BN is no match at the end",
    "C4": "CIFAR-10: with Adam BN still ends better, by less than with SGD",
    "C5": "When training time is limited, BN offers a performance boost (at equal time)",
    "C6": "At each one's best settings (tuned learning rate, same search budget), BN wins",
    "C7": "With a small tuning budget (1 or 2 trials of random search), BN is ahead",
    "P1": "MNIST first-layer weights: without BN more interpretable (digit strokes); with BN "
          "+ Adam most units structured, while some non-BN units stay pure noise",
    "P2": "CIFAR-10 hallucinations: non-BN captures the class's general colour; BN gives more "
          "defined shapes; Adam + BN the most distinct images",
    "P3": "MNIST hallucinations show recognisable class shapes",
}
NOISE_RULE = dict(source="pictures", fmt=".0%", rule=lambda x: x < 0.5,
                  rule_words="under 50% noise-like units")


def declare(datasets: list[str]) -> list[Part]:
    """Every part of every claim; C5 and C6 for each dataset × optimizer present."""
    parts = [
        Part("C1", "a", "MNIST, SGD: BN starts at a lower loss",
             "first-epoch val loss, BN − no BN", "first_val_loss", pair("mnist", "sgd"),
             sign=-1, fmt="loss"),
        Part("C1", "b", "MNIST, SGD: no BN keeps improving",
             "no BN's val loss, middle epoch − last epoch", "late_val_loss_drop",
             (Term(1.0, "mnist", "sgd", "none"),), fmt="loss"),
        Part("C2", "", "MNIST: the BN − no BN gap is smaller with Adam than with SGD",
             "(BN − no BN with SGD) − (BN − no BN with Adam), final val acc", "final_val_acc",
             _gap("mnist")),
        Part("C3", "a", "CIFAR-10, SGD: BN improves much faster",
             "mean val acc over the epochs (area under the curve), BN − no BN", "mean_val_acc",
             pair("cifar10", "sgd")),
        Part("C3", "b", "CIFAR-10, SGD: no BN is no match for BN (\"worthless\")",
             "final val acc, BN − no BN", "final_val_acc", pair("cifar10", "sgd")),
        Part("C4", "a", "CIFAR-10, Adam: BN ends with better accuracy",
             "final val acc, BN − no BN", "final_val_acc", pair("cifar10", "adam")),
        Part("C4", "b", "CIFAR-10: the gap is smaller with Adam than with SGD",
             "(BN − no BN with SGD) − (BN − no BN with Adam), final val acc", "final_val_acc",
             _gap("cifar10")),
    ]
    cells = [(d, o) for d in datasets for o in OPTIM_LABELS]
    for dataset, optim in cells:
        for share, letter in zip(BUDGETS, "ab", strict=True):
            budget = ("" if share == 1 else f"{share:.0%} of ") + "the no-BN run's training time"
            parts.append(Part(
                "C5", f"{letter} ({where(dataset, optim)})",
                f"{where(dataset, optim)}: at {budget}, BN is ahead",
                f"best val acc so far at {budget}, between epochs linear, BN − no BN",
                f"val_acc_at_{share:g}", pair(dataset, optim), source="time"))
    parts += [Part("C6", f" ({where(dataset, optim)})",
                   f"{where(dataset, optim)}: at each one's tuned settings BN ends ahead",
                   "test acc of the best setting re-run over seeds, BN − no BN", "test_acc",
                   pair(dataset, optim), source="tuned") for dataset, optim in cells]
    for optim, label in OPTIM_LABELS.items():
        parts.append(Part(
            "P1", f"a ({label})", "MNIST: without BN the first-layer weights are more "
            "interpretable (more of each unit in the data's principal components)",
            "pc_alignment, no BN − BN", "pc_alignment", pair("mnist", optim, "none", "bn"),
            source="pictures", fmt=".3f"))
        parts.append(Part(
            "P1", f"b ({label})", "MNIST: without BN the weights are digit strokes (most units "
            "structured, not noise-like)", "noise_units", "noise_units",
            (Term(1.0, "mnist", optim, "none"),), **NOISE_RULE))
    parts.append(Part("P1", "c", "MNIST, BN + Adam: most units learn structured patterns",
                      "noise_units", "noise_units", (Term(1.0, "mnist", "adam", "bn"),),
                      **NOISE_RULE))
    for optim, label in OPTIM_LABELS.items():
        parts.append(Part(
            "P1", f"d ({label})", "MNIST: some non-BN units stay pure noise", "noise_units",
            "noise_units", (Term(1.0, "mnist", optim, "none"),), source="pictures", fmt=".0%",
            rule=lambda x: x > 0, rule_words="at least one noise-like unit"))
    for optim, label in OPTIM_LABELS.items():
        for part, column, what in (("a1", "colour_fidelity", "the class's general colour"),
                                   ("a2", "blueness_airplane", "airplanes mostly blue"),
                                   ("a3", "greenness_dog", "dogs greenish"),
                                   ("a4", "greenness_frog", "frogs greenish")):
            parts.append(Part(
                "P2", f"{part} ({label})", f"CIFAR-10: non-BN networks capture {what}",
                f"{column}, no BN + {label}", column, (Term(1.0, "cifar10", optim, "none"),),
                source="pictures", fmt="+.3f"))
    parts += [Part("P2", f"b ({label})", "CIFAR-10: BN networks give more defined shapes "
                   "(stronger edges at the scale of shapes)", "sharpness, BN − no BN",
                   "sharpness", pair("cifar10", optim), source="pictures", fmt=".3f")
              for optim, label in OPTIM_LABELS.items()]
    for norm, optim in (("bn", "sgd"), ("none", "sgd"), ("none", "adam")):
        other = Term(-1.0, "cifar10", optim, norm)
        parts.append(Part(
            "P2", f"c (vs {other.label()})", "CIFAR-10: Adam + BN gives the most distinct images",
            f"distinctness, BN + Adam − {other.label()}", "distinctness",
            (Term(1.0, "cifar10", "adam", "bn"), other), source="pictures", fmt=".2f"))
    for norm in ("none", "bn"):
        for optim in OPTIM_LABELS:
            term = Term(1.0, "mnist", optim, norm)
            parts.append(Part(
                "P3", f" ({term.label()})", "MNIST hallucinations show recognisable class shapes",
                "referee_acc", "referee_acc", (term,), source="pictures", fmt=".0%",
                rule=lambda x: x >= RECOGNISED - 1e-9,
                rule_words=f"the independent CNN reads ≥ {RECOGNISED:.0%} of the digits"))
    return parts
