"""The study's claims, each part declared once: what it says, which runs it reads, the per-run
quantity, the contrast and its claimed sign. One rule decides every part, one writer tables them.

Claims (`CLAIMS`, the parts in `declare`):

- **C1–C4**, the seed study's curve claims (per-run quantities from the epoch history);
- **C5**, worth it per second: at equal training time, measured in the cost of a training step
  (`bnstudy.report.cost`), BN ends ahead;
- **C6**, worth it at each one's best: with each norm's own tuned learning rate (`experiment=
  tuned`), BN ends with the better test accuracy;
- **P1–P3**, the picture claims (per-run quantities from `pictures.csv`).

A part is a contrast Σ weight × mean(quantity over a group's ok runs) (Welch: its interval
and two-sided test), or a rule every seed must meet. The decision rule, for every part: fewer
than `MIN_SEEDS` ok runs in a group, or no spread at all, and we **cannot tell**; otherwise a
contrast **holds** when its estimate lies on the claimed side of zero with p < 0.05, **does not
hold** when it lies on the other side with p < 0.05, else **cannot tell**; a rule holds when
every seed meets it, does not hold when none does, else cannot tell. A claim holds when all its
parts hold, does not hold when any part does not, and otherwise cannot tell. Every contrast also
gets its power (`bnstudy.report.stats.power`): the smallest difference its seeds detect at 80 %
power and the seeds a side that would decide a difference of the size observed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnstudy.records import TUNING_FILE
from bnstudy.report.runs import FIRST_KEYS, Run, describe
from bnstudy.report.stats import ALPHA, POWER, Contrast, contrast, mean_std, num, power_of

VERDICTS = ("holds", "does not hold", "cannot tell")
MIN_SEEDS = 2      # fewer ok runs in a group than this: cannot tell (curves and pictures alike)
DECIDABLE = 30     # a "cannot tell" needing more seeds a side than this is a practical tie
OPTIM_LABELS = {"sgd": "SGD", "adam": "Adam"}
NORM_WORDS = {"bn": "BN", "none": "no BN"}
RECOGNISED = 0.8   # P3: at least this share of a run's class images read as their class
BUDGETS = (1.0, 0.5)  # C5: shares of the no-BN run's training time


@dataclass(frozen=True)
class Term:
    """One group of a contrast: its weight and the runs it selects (None: any value)."""

    weight: float
    dataset: str | None = None
    optim: str | None = None
    norm: str | None = None

    def selects(self, row: dict) -> bool:
        return all(want is None or row.get(key) == want for key, want in
                   (("dataset", self.dataset), ("optim", self.optim), ("norm", self.norm)))

    def label(self, with_optim: bool = True) -> str:
        """`BN`, `no BN + SGD`, `BN + Adam`."""
        words = [NORM_WORDS.get(self.norm, self.norm)] if self.norm else []
        if self.optim and with_optim:
            words.append(OPTIM_LABELS.get(self.optim, self.optim))
        return " + ".join(words) or "all"


@dataclass(frozen=True)
class Part:
    """A declared part of a claim: `statement` is tested on `quantity`, a column of the per-run
    rows of `source` (`curves`, `time`, `tuned` or `pictures`), through `terms`."""

    claim: str
    part: str
    statement: str
    statistic: str
    quantity: str
    terms: tuple[Term, ...]
    sign: int = 1
    source: str = "curves"
    fmt: str = "acc"   # acc: percentage points; loss: 3 decimals; else a format spec
    rule: Callable[[float], bool] | None = None  # a part every seed must meet
    rule_words: str = ""


@dataclass(frozen=True)
class Result:
    """A part tested on runs: each group's values, the contrast, verdict and power."""

    declared: Part
    groups: tuple[list[float], ...]
    test: Contrast
    verdict: str
    detectable: float = math.nan       # the smallest |difference| detected at 80 % power
    seeds_needed: float = math.nan     # seeds a side that decide the observed difference
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def claim(self) -> str:
        return self.declared.claim

    @property
    def part(self) -> str:
        return self.declared.part

    @property
    def estimate(self) -> float:
        return self.test.estimate


# --- the declarations -------------------------------------------------------------------------


def _pair(dataset: str, optim: str) -> tuple[Term, Term]:
    return Term(1.0, dataset, optim, "bn"), Term(-1.0, dataset, optim, "none")


def _gap(dataset: str) -> tuple[Term, ...]:
    """(BN − no BN with SGD) − (BN − no BN with Adam)."""
    return (*_pair(dataset, "sgd"), Term(-1.0, dataset, "adam", "bn"),
            Term(1.0, dataset, "adam", "none"))


DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST"}


def study_order(datasets) -> list[str]:
    """The study's datasets first, in its order, then any other, by name."""
    known = [d for d in DATASET_LABELS if d in datasets]
    return known + sorted((d for d in datasets if d not in DATASET_LABELS), key=str)


def _where(dataset: str, optim: str) -> str:
    return f"{DATASET_LABELS.get(dataset, dataset)}, {OPTIM_LABELS.get(optim, optim)}"


def _noise_units_under_half(x: float) -> bool:
    return x < 0.5


def _some_noise_unit(x: float) -> bool:
    return x > 0


def _recognised(x: float) -> bool:
    return x >= RECOGNISED - 1e-9


CLAIMS = {
    "C1": "MNIST, SGD: the BN model starts at a lower loss; the non-BN model keeps improving",
    "C2": "MNIST: BN's advantage is smaller with Adam than with SGD",
    "C3": "CIFAR-10, SGD: BN improves much faster, and non-BN is no match at the end",
    "C4": "CIFAR-10: with Adam BN still ends better, by less than with SGD",
    "C5": "When training time is limited, BN offers a performance boost (at equal time)",
    "C6": "At each one's best settings (tuned learning rate, same search budget), BN wins",
    "P1": "MNIST first-layer weights: without BN more interpretable (digit strokes); with BN "
          "+ Adam most units structured, while some non-BN units stay pure noise",
    "P2": "CIFAR-10 hallucinations: non-BN captures the class's general colour; BN gives more "
          "defined shapes; Adam + BN the most distinct images",
    "P3": "MNIST hallucinations show recognisable class shapes",
}


def declare(datasets: list[str]) -> list[Part]:
    """Every part of every claim, in order; C5 and C6 for each dataset × optimizer present."""
    parts = [
        Part("C1", "a", "MNIST, SGD: BN starts at a lower loss",
             "first-epoch val loss, BN − no BN", "first_val_loss", _pair("mnist", "sgd"),
             sign=-1, fmt="loss"),
        Part("C1", "b", "MNIST, SGD: no BN keeps improving",
             "no BN's val loss, middle epoch − last epoch", "late_val_loss_drop",
             (Term(1.0, "mnist", "sgd", "none"),), fmt="loss"),
        Part("C2", "", "MNIST: the BN − no BN gap is smaller with Adam than with SGD",
             "(BN − no BN with SGD) − (BN − no BN with Adam), final val acc", "final_val_acc",
             _gap("mnist")),
        Part("C3", "a", "CIFAR-10, SGD: BN improves much faster",
             "mean val acc over the epochs (area under the curve), BN − no BN", "mean_val_acc",
             _pair("cifar10", "sgd")),
        Part("C3", "b", "CIFAR-10, SGD: no BN is no match for BN (\"worthless\")",
             "final val acc, BN − no BN", "final_val_acc", _pair("cifar10", "sgd")),
        Part("C4", "a", "CIFAR-10, Adam: BN ends with better accuracy",
             "final val acc, BN − no BN", "final_val_acc", _pair("cifar10", "adam")),
        Part("C4", "b", "CIFAR-10: the gap is smaller with Adam than with SGD",
             "(BN − no BN with SGD) − (BN − no BN with Adam), final val acc", "final_val_acc",
             _gap("cifar10")),
    ]
    for dataset in datasets:
        for optim in OPTIM_LABELS:
            for share in BUDGETS:
                budget = "the no-BN run's training time" if share == 1 else \
                    f"{share:.0%} of the no-BN run's training time"
                parts.append(Part(
                    "C5", f"{'ab'[BUDGETS.index(share)]} ({_where(dataset, optim)})",
                    f"{_where(dataset, optim)}: at {budget}, BN is ahead",
                    f"val acc at the last epoch within {budget}, BN − no BN",
                    f"val_acc_at_{share:g}", _pair(dataset, optim), source="time"))
    for dataset in datasets:
        for optim in OPTIM_LABELS:
            parts.append(Part(
                "C6", f" ({_where(dataset, optim)})",
                f"{_where(dataset, optim)}: at each one's tuned settings BN ends ahead",
                "test acc of the best setting re-run over seeds, BN − no BN", "test_acc",
                _pair(dataset, optim), source="tuned"))
    for optim, label in OPTIM_LABELS.items():
        parts.append(Part(
            "P1", f"a ({label})", "MNIST: without BN the first-layer weights are more "
            "interpretable (more of each unit in the data's principal components)",
            "pc_alignment, no BN − BN", "pc_alignment",
            (Term(1.0, "mnist", optim, "none"), Term(-1.0, "mnist", optim, "bn")),
            source="pictures", fmt=".3f"))
        parts.append(Part(
            "P1", f"b ({label})", "MNIST: without BN the weights are digit strokes (most units "
            "structured, not noise-like)", "noise_units", "noise_units",
            (Term(1.0, "mnist", optim, "none"),), source="pictures", fmt=".0%",
            rule=_noise_units_under_half, rule_words="under 50% noise-like units"))
    parts.append(Part(
        "P1", "c", "MNIST, BN + Adam: most units learn structured patterns", "noise_units",
        "noise_units", (Term(1.0, "mnist", "adam", "bn"),), source="pictures", fmt=".0%",
        rule=_noise_units_under_half, rule_words="under 50% noise-like units"))
    for optim, label in OPTIM_LABELS.items():
        parts.append(Part(
            "P1", f"d ({label})", "MNIST: some non-BN units stay pure noise", "noise_units",
            "noise_units", (Term(1.0, "mnist", optim, "none"),), source="pictures", fmt=".0%",
            rule=_some_noise_unit, rule_words="at least one noise-like unit"))
    for optim, label in OPTIM_LABELS.items():
        for part, column, what in (("a1", "colour_fidelity", "the class's general colour"),
                                   ("a2", "blueness_airplane", "airplanes mostly blue"),
                                   ("a3", "greenness_dog", "dogs greenish"),
                                   ("a4", "greenness_frog", "frogs greenish")):
            parts.append(Part(
                "P2", f"{part} ({label})", f"CIFAR-10: non-BN networks capture {what}",
                f"{column}, no BN + {label}", column, (Term(1.0, "cifar10", optim, "none"),),
                source="pictures", fmt="+.3f"))
    for optim, label in OPTIM_LABELS.items():
        parts.append(Part(
            "P2", f"b ({label})", "CIFAR-10: BN networks give more defined shapes (stronger "
            "edges at the scale of shapes)", "sharpness, BN − no BN", "sharpness",
            _pair("cifar10", optim), source="pictures", fmt=".3f"))
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
                rule=_recognised,
                rule_words=f"the independent CNN reads ≥ {RECOGNISED:.0%} of the digits"))
    return parts


# --- the one decision rule --------------------------------------------------------------------


def decide(estimate: float, p_value: float, sign: int, alpha: float = ALPHA) -> str:
    """holds / does not hold / cannot tell for a contrast (module docstring)."""
    if math.isnan(p_value) or p_value >= alpha:
        return "cannot tell"
    return "holds" if np.sign(estimate) == sign else "does not hold"


def every_seed(flags: list[bool]) -> str:
    """The verdict of a part every seed must meet, from each seed's flag."""
    if len(flags) < MIN_SEEDS:
        return "cannot tell"
    if all(flags):
        return "holds"
    return "does not hold" if not any(flags) else "cannot tell"


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts'."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "cannot tell"


def claim_verdicts(results: list[Result]) -> dict[str, str]:
    """Each claim's verdict, in order of first appearance."""
    names = list(dict.fromkeys(r.claim for r in results))
    return {c: combine([r.verdict for r in results if r.claim == c]) for c in names}


def values(rows: list[dict], term: Term, quantity: str) -> list[float]:
    """The quantity of each ok run the term selects, NaN left out, in seed order."""
    chosen = sorted((r for r in rows if term.selects(r) and r.get("outcome", "ok") == "ok"),
                    key=lambda r: (_seed(r.get("seed")), str(r.get("job", ""))))
    out = []
    for r in chosen:
        try:
            x = float(r.get(quantity))
        except (TypeError, ValueError):
            continue
        if not math.isnan(x):
            out.append(x)
    return out


def _seed(seed) -> float:
    try:
        return float(seed)
    except (TypeError, ValueError):
        return math.inf


def run_part(part: Part, rows: list[dict]) -> Result:
    """The part on the rows: its groups' values, contrast, verdict and power."""
    groups = tuple(values(rows, t, part.quantity) for t in part.terms)
    test = contrast([(t.weight, xs) for t, xs in zip(part.terms, groups, strict=True)])
    if part.rule is not None:
        flags = [part.rule(x) for x in groups[0]]
        return Result(part, groups, test, every_seed(flags),
                      extra={"met": sum(flags), "of": len(flags)})
    if any(len(xs) < MIN_SEEDS for xs in groups):
        return Result(part, groups, test, "cannot tell",
                      note=f"fewer than {MIN_SEEDS} ok seeds on a side")
    verdict = decide(test.estimate, test.p_value, part.sign)
    detectable, needed = power_of([(t.weight, xs) for t, xs in
                                   zip(part.terms, groups, strict=True)])
    result = Result(part, groups, test, verdict, detectable, needed)
    return Result(part, groups, test, verdict, detectable, needed, note=power_note(result))


def power_note(r: Result) -> str:
    """Why a part cannot be told, in words: too few seeds, or no difference seen (bounded)."""
    if r.verdict != "cannot tell" or math.isnan(r.test.estimate):
        return ""
    scale, unit, fmt = _scale(r.declared.fmt)
    n = min(len(xs) for xs in r.groups)
    seen = f"with {n} seeds a side only |differences| ≥ {scale * r.detectable:{fmt}}{unit} " \
        f"are detected at {POWER:.0%} power"
    if math.isnan(r.test.p_value):
        return "no spread over the seeds: no test"
    if r.seeds_needed <= DECIDABLE:
        return (f"too few seeds: {seen}; {r.seeds_needed:.0f} seeds a side would decide a "
                f"difference of the size observed")
    bound = max(abs(r.test.ci_low), abs(r.test.ci_high))
    needed = "over 1000" if math.isinf(r.seeds_needed) else f"{r.seeds_needed:.0f}"
    return (f"no difference seen: any is below {scale * bound:{fmt}}{unit} (95% interval); one "
            f"of the size observed needs {needed} seeds a side")


def evaluate(parts: list[Part], rows: dict[str, list[dict]]) -> list[Result]:
    """The declared parts whose every group has runs (of any outcome) in the rows of their
    source, tested."""
    results = []
    for part in parts:
        mine = rows.get(part.source, [])
        if all(any(t.selects(r) for r in mine) for t in part.terms):
            results.append(run_part(part, mine))
    return results


# --- the one table writer ---------------------------------------------------------------------


def _scale(fmt: str) -> tuple[float, str, str]:
    """(scale, unit, format) of a part's numbers."""
    if fmt == "acc":
        return 100.0, " pts", ".2f"
    if fmt == "loss":
        return 1.0, "", ".3f"
    if fmt.endswith("%"):
        return 100.0, " pts", ".1f"
    return 1.0, "", fmt.lstrip("+")


def spread(xs: list[float], fmt: str) -> str:
    """`mean ± std (n)` in the part's format (accuracies and shares in %)."""
    if not xs:
        return "— (no ok run)"
    mean, std = mean_std(xs)
    if fmt in ("acc",) or fmt.endswith("%"):
        digits = ".2f" if fmt == "acc" else f".{fmt[1:-1] or '0'}f"
        text = f"{100 * mean:{digits}}%" + ("" if math.isnan(std) else f" ± {100 * std:{digits}}")
    else:
        f = ".3f" if fmt == "loss" else fmt
        text = format(mean, f) + ("" if math.isnan(std) else f" ± {format(std, f.lstrip('+'))}")
    return f"{text} ({len(xs)})"


def sides(r: Result) -> str:
    """Each group's `label mean ± std (n)`; the optimizer named only where the groups differ
    in it."""
    terms = r.declared.terms
    optims = len({t.optim for t in terms}) > 1 or (len(terms) == 1 and r.declared.source
                                                   == "pictures")
    text = "; ".join(f"{t.label(optims)} {spread(xs, r.declared.fmt)}"
                     for t, xs in zip(terms, r.groups, strict=True))
    if r.declared.rule is not None:
        text += f"; {r.extra['met']} of {r.extra['of']} seeds meet it"
    return text


def _signed(x: float, fmt: str) -> str:
    return "—" if math.isnan(x) else f"{x:+{fmt}}"


def estimate_text(r: Result) -> str:
    if r.declared.rule is not None:
        return "—"
    if math.isnan(r.test.estimate):
        return "— (a side has no ok run)"
    scale, unit, fmt = _scale(r.declared.fmt)
    ci = ("no interval" if math.isnan(r.test.ci_low) else
          f"95% CI {scale * r.test.ci_low:+{fmt}} to {scale * r.test.ci_high:+{fmt}}")
    return f"{_signed(scale * r.test.estimate, fmt)}{unit} ({ci})"


def power_text(r: Result) -> str:
    if math.isnan(r.detectable):
        return "—"
    scale, unit, fmt = _scale(r.declared.fmt)
    needed = "> 1000" if math.isinf(r.seeds_needed) else f"{r.seeds_needed:.0f}"
    return f"{scale * r.detectable:{fmt}}{unit}; {needed}"


def _p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.2g}"


def statistic(r: Result) -> str:
    part = r.declared
    return f"{part.statistic}: {part.rule_words}" if part.rule is not None else part.statistic


def parts_table(results: list[Result]) -> str:
    """report.md's table of the parts."""
    lines = ["| claim | statement | statistic | mean ± std over ok seeds (n) | estimate | p | "
             f"detectable at {POWER:.0%} power; seeds a side to decide | verdict |",
             "|" + " --- |" * 8]
    for r in results:
        verdict = f"**{r.verdict}**" + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.claim}{r.part} | {r.declared.statement} | {statistic(r)} | "
                     f"{sides(r)} | {estimate_text(r)} | {_p(r.test.p_value)} | "
                     f"{power_text(r)} | {verdict} |")
    return "\n".join(lines)


def csv_rows(results: list[Result], setting: dict) -> list[dict]:
    """claims.csv's rows: the columns it always had, then the power columns."""
    verdicts = claim_verdicts(results)
    rows = []
    for r in results:
        part = r.declared
        dataset = {t.dataset for t in part.terms}
        rows.append({**setting, "claim": r.claim, "part": r.part,
                     "dataset": dataset.pop() if len(dataset) == 1 else "",
                     "statement": part.statement, "statistic": statistic(r),
                     "unit": {"acc": "accuracy", "loss": "loss"}.get(part.fmt, part.quantity),
                     "claimed_sign": part.sign, "sides": sides(r),
                     "estimate": r.test.estimate, "ci_low": r.test.ci_low,
                     "ci_high": r.test.ci_high, "p_value": r.test.p_value,
                     "verdict": r.verdict, "claim_verdict": verdicts[r.claim],
                     "detectable_80": r.detectable, "seeds_needed": r.seeds_needed,
                     "note": r.note})
    return rows


def plain_words(results: list[Result]) -> list[str]:
    """One sentence per part that does not hold or cannot be told."""
    lines = []
    for r in results:
        if r.verdict == "does not hold":
            lines.append(f"- **{r.claim}{r.part} does not hold**: {r.declared.statement} — "
                         f"measured {sides(r)}.")
        elif r.verdict == "cannot tell":
            why = f"; {r.note}" if r.note else ""
            lines.append(f"- {r.claim}{r.part}: cannot tell ({r.declared.statement}) — "
                         f"{sides(r)}{why}.")
    return lines


def verdict_line(results: list[Result]) -> str:
    return "Verdicts: " + "; ".join(f"**{c} {v}**" for c, v in
                                    claim_verdicts(results).items()) + "."


# --- the per-run rows each source gives -------------------------------------------------------


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


CURVE_QUANTITIES = {"first_val_loss": first_val_loss, "late_val_loss_drop": late_val_loss_drop,
                    "mean_val_acc": mean_val_acc, "final_val_acc": final_val_acc}


def run_row(run: Run) -> dict:
    """A run's row: its dataset, optim, norm, seed, outcome and every curve quantity (NaN for
    a run without history), plus its history for the time claims."""
    hp = run.hparams
    row = {"dataset": hp.get("dataset"), "optim": hp.get("optim"), "norm": hp.get("norm"),
           "seed": hp.get("seed"), "job": run.job, "outcome": run.outcome,
           "test_acc": num(run.test_acc), "history": run.history or []}
    for name, of in CURVE_QUANTITIES.items():
        row[name] = of(run.history) if run.history else math.nan
    return row


def val_acc_within(history: list[dict], epoch_cost: float, budget: float) -> float:
    """The validation accuracy at the last epoch that ends within `budget`, each epoch costing
    `epoch_cost` (both in no-BN epochs); NaN when not even the first one does."""
    done = [row for i, row in enumerate(history) if (i + 1) * epoch_cost <= budget + 1e-9]
    return num(done[-1].get("val/acc")) if done else math.nan


def time_rows(rows: list[dict], ratios: dict[tuple[str, str], float]) -> list[dict]:
    """The curve rows with C5's quantities `val_acc_at_<share>`: each norm's validation accuracy
    at a share of the no-BN runs' training time, a BN epoch costing `ratios[dataset, optim]`
    no-BN epochs (pairs without a ratio are left out)."""
    out = []
    for (dataset, optim), ratio in ratios.items():
        mine = [r for r in rows if (r["dataset"], r["optim"]) == (dataset, optim)]
        full = max((len(r["history"]) for r in mine if r["norm"] == "none"), default=0)
        for r in mine:
            cost = ratio if r["norm"] == "bn" else 1.0
            out.append({**r, **{f"val_acc_at_{share:g}": val_acc_within(r["history"], cost,
                                                                           share * full)
                                for share in BUDGETS}})
    return out


def tuned_rows(sweep_dir: Path, runs: list[Run]) -> tuple[list[dict], dict]:
    """C6's rows: the seed re-runs of each cell's best setting that `SWEEP/tuning.json` lists
    (`experiment=tuned`), and the tuning record itself ({} without one)."""
    path = sweep_dir / TUNING_FILE
    if not path.is_file():
        return [], {}
    tuning = json.loads(path.read_text())
    by_job = {r.job: r for r in runs}
    rows = [run_row(by_job[job]) for cell in tuning.get("cells", [])
            for job in cell.get("final_jobs", []) if job in by_job]
    return rows, tuning


# --- the report's Claims section ----------------------------------------------------------------


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


def setting_results(study: dict[tuple[str, str], dict[str, list[Run]]],
                    costs: Callable[[list[Run]], dict]) -> tuple[list[Result], dict]:
    """The curve and time claims' results of one setting, and its step costs by pair."""
    runs = [r for by_norm in study.values() for group in by_norm.values() for r in group]
    rows = [run_row(r) for r in runs]
    datasets = study_order({r["dataset"] for r in rows})
    measured = costs(runs) if any(p.source == "time" for p in declare(datasets)) else {}
    ratios = {pair: c.ratio for pair, c in measured.items()}
    results = evaluate(declare(datasets), {"curves": rows, "time": time_rows(rows, ratios)})
    typical = {pair: c.ratio_median for pair, c in measured.items()}
    other = {f"{r.claim}{r.part}": r.verdict for r in
             evaluate([p for p in declare(datasets) if p.source == "time"],
                      {"time": time_rows(rows, typical)})}
    return [clock_guard(r, other, measured) for r in results], measured


def clock_guard(r: Result, other: dict[str, str], measured: dict) -> Result:
    """A time part whose verdict differs between the clock's ratio (each side's fastest block)
    and its rounds' median ratio is left to the noise: cannot tell, with both ratios named."""
    key = f"{r.claim}{r.part}"
    if r.declared.source != "time" or other.get(key, r.verdict) == r.verdict:
        return r
    pair = next(((t.dataset, t.optim) for t in r.declared.terms), None)
    c = measured[pair]
    return Result(r.declared, r.groups, r.test, "cannot tell", r.detectable, r.seeds_needed,
                  note=f"the verdict changes within the clock's spread (BN / no BN "
                       f"{c.ratio:.2f} to {c.ratio_median:.2f}): measure on a quieter machine")


def cost_table(study: dict, measured: dict) -> str:
    """C5's clock per pair: each side's step cost, BN's ratio over the rounds, the runs' own
    epoch-time ratio as a cross-check, and when each side reaches no BN's final accuracy."""
    if not measured:
        return ""
    lines = ["C5's clock (`bnstudy.report.cost`): seconds per training step measured paired in "
             "one process, alternating blocks, one torch thread; each side's cost is its fastest "
             "block (noise only adds time). The runs' own epoch seconds (`time_s`, shared "
             "machine) are shown as a cross-check only. *Reaches*: when the mean validation "
             "accuracy first reaches no BN's final mean, in no-BN epochs of training time.", "",
             "| pair | step, BN | step, no BN | BN / no BN (rounds' range) | runs' own epoch "
             "ratio | BN reaches | no BN reaches |", "|" + " --- |" * 7]
    for (dataset, optim), c in measured.items():
        by_norm = study[(dataset, optim)]
        own = {n: _epoch_seconds(by_norm.get(n, [])) for n in ("bn", "none")}
        own_ratio = own["bn"] / own["none"] if own["none"] else math.nan
        curves = {n: _mean_curve(by_norm.get(n, [])) for n in ("bn", "none")}
        target = curves["none"][-1] if curves["none"] else math.nan
        reach = {n: _reaches(curves[n], target, c.ratio if n == "bn" else 1.0)
                 for n in ("bn", "none")}
        lines.append(
            f"| {_where(dataset, optim)} | {1e6 * c.bn_s:.0f} µs | {1e6 * c.none_s:.0f} µs | "
            f"**{c.ratio:.2f}** ({c.ratio_min:.2f} to {c.ratio_max:.2f}) | "
            f"{'—' if math.isnan(own_ratio) else f'{own_ratio:.2f}'} | {reach['bn']} | "
            f"{reach['none']} |")
    return "\n".join(lines)


def _epoch_seconds(runs: list[Run]) -> float:
    """The median seconds of an epoch over the ok runs' histories (`time_s` is cumulative)."""
    steps = [b["time_s"] - a["time_s"] for r in runs if r.outcome == "ok" and r.history
             for a, b in zip([{"time_s": 0.0}, *r.history[:-1]], r.history, strict=True)
             if "time_s" in b and "time_s" in a]
    return float(np.median(steps)) if steps else math.nan


def _mean_curve(runs: list[Run]) -> list[float]:
    histories = [r.history for r in runs if r.outcome == "ok" and r.history]
    if not histories:
        return []
    epochs = min(len(h) for h in histories)
    return [float(np.mean([num(h[e].get("val/acc")) for h in histories])) for e in range(epochs)]


def _reaches(curve: list[float], target: float, epoch_cost: float) -> str:
    hit = next((e + 1 for e, acc in enumerate(curve) if acc >= target - 1e-12), None)
    return "never" if hit is None else f"{hit * epoch_cost:.1f} (epoch {hit})"


def tuning_table(tuning: dict) -> str:
    lines = [f"Search: Optuna {tuning.get('sampler', 'TPE')} (sampler seed "
             f"{tuning.get('sampler_seed')}), {tuning.get('n_trials')} trials per cell on the "
             f"validation split; the best setting re-run with seeds {tuning.get('seeds')} and "
             "compared on the test split, which the search never saw.", "",
             "| dataset | optimizer | norm | trials | best setting | best val acc (search) |",
             "|" + " --- |" * 6]
    for cell in tuning.get("cells", []):
        best = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in cell.get("best_params", {}).items())
        value = cell.get("best_value")
        lines.append(f"| {cell.get('dataset')} | {cell.get('optim')} | "
                     f"{NORM_WORDS.get(cell.get('norm'), cell.get('norm'))} | "
                     f"{len(cell.get('trials', []))} | {best} | "
                     f"{'—' if value is None else f'{100 * value:.2f} %'} |")
    return "\n".join(lines)


INTRO = (
    "Every claim part is declared once (`bnstudy/report/claims.py`) and decided by one rule: "
    f"fewer than {MIN_SEEDS} ok seeds in a group, and we **cannot tell**; a contrast **holds** "
    "when its estimate lies on the claimed side of zero with Welch's two-sided "
    f"p < {ALPHA}, **does not hold** when it lies on the other side with p < {ALPHA}, and "
    "otherwise we **cannot tell**; a part every seed must meet holds when all do, does not "
    "hold when none does. A claim holds when all its parts hold, does not hold when any does "
    f"not. Accuracies are in percentage points (pts); the 95% CI is Welch's. *Detectable* is "
    f"the smallest difference the seeds run find with {POWER:.0%} power; *seeds a side to "
    "decide* is how many would find one of the size observed. A *cannot tell* says which it "
    "is: too few seeds (and how many would decide), or no difference seen (bounded by its "
    "interval, and the seeds a difference that small would need). "
    "Also in `claims.csv`.")


def claims_section(comparisons: dict[tuple, dict[str, list[Run]]], sweep_dir: Path,
                   runs: list[Run], costs: Callable[[list[Run]], dict] | None = None
                   ) -> tuple[str, list[dict], list[Result], dict]:
    """The report.md section `## Claims`, the rows of claims.csv, the results of the default
    setting (or the tuned one) and the figures (`time[_<setting>]`: accuracy against compute);
    ("", [], [], {}) when no setting has a comparison a claim needs. `costs` measures the step
    costs (`cost.pair_costs`)."""
    if costs is None:
        from bnstudy.report.cost import pair_costs as costs
    tuned, tuning = tuned_rows(sweep_dir, runs)
    by_setting = {s: setting_results(study, costs) for s, study in settings(comparisons).items()}
    studies = settings(comparisons)
    if tuned:
        datasets = study_order({r["dataset"] for r in tuned})
        by_setting = {(("tuned", "each norm at its best"),):
                      (evaluate(declare(datasets), {"tuned": tuned}), {})}
    by_setting = {s: (res, m) for s, (res, m) in by_setting.items() if res}
    if not by_setting:
        return "", [], [], {}
    lines = ["## Claims", "", INTRO, ""]
    names = list(dict.fromkeys(r.claim for res, _ in by_setting.values() for r in res))
    lines += [f"- **{c}**: {CLAIMS[c]}" for c in names if c in CLAIMS] + [""]
    if len(by_setting) > 1:
        lines += ["| setting | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
        for setting, (results, _) in by_setting.items():
            verdicts = claim_verdicts(results)
            lines.append(f"| {describe(setting)} | "
                         + " | ".join(verdicts.get(c, "—") for c in names) + " |")
        lines.append("")
    rows, figures = [], {}
    for setting, (results, measured) in by_setting.items():
        if len(by_setting) > 1 or tuned:
            lines += [f"### {describe(setting)}", ""]
        lines += [verdict_line(results), "", parts_table(results), ""]
        lines += plain_words(results) + ([""] if plain_words(results) else [])
        if measured:
            from bnstudy.report.figures import time_figure

            name = "time_compute" + "".join(f"_{k}{v}" for k, v in setting)
            figures[name] = time_figure(studies[setting], measured)
            lines += [f"![accuracy against compute]({name}.png)", "",
                      cost_table(studies[setting], measured), ""]
        if tuned:
            lines += [tuning_table(tuning), ""]
        rows += csv_rows(results, dict(setting))
    first = next(iter(by_setting.values()))[0] if len(by_setting) == 1 else []
    return "\n".join(lines), rows, first, figures
