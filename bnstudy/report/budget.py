"""Claim C7, the budget curve of a tuned sweep (`SWEEP/tuning.json`): is BN worth it at a budget?

Per cell, the expected best validation accuracy after k trials of its random search (Tang et
al. 2020's unbiased estimator: E_k = Σ_i v_(i) C(i−1, k−1) / C(n, k), v ascending), and after s
seconds. Bands: a percentile bootstrap of each arm's trials. Each pair at k in `SMALL`: the
bootstrap p, Holm-adjusted over the pair's parts; BN − no BN's parts are claim C7."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from bnstudy.records import read_tuning
from bnstudy.report.claims import CLAIMS
from bnstudy.report.figures import norm_color
from bnstudy.report.render import markdown, plural
from bnstudy.report.runs import STUDY, contrast_words, norm_label, pair_words, study_order, where
from bnstudy.report.stats import Contrast, decide, holm
from bnstudy.report.verdicts import combine

BOOT = 1000          # bootstrap resamples of each cell's trials
BOOT_SEED = 0        # the bootstrap's numpy seed: the same report from the same trials
LEVEL = 0.95         # the bands' coverage
SMALL = (1, 2)       # C7's budgets, in trials
SHOWN = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # the Markdown table's k (budget.csv: all)
BUDGET_FILE = "budget.csv"


@functools.lru_cache(maxsize=8)
def weights(n: int) -> np.ndarray:
    """(n, n): row k−1 holds each sorted position's weight C(i−1, k−1) / C(n, k) (i from 1)."""
    return np.array([[math.comb(i - 1, k - 1) / math.comb(n, k) for i in range(1, n + 1)]
                     for k in range(1, n + 1)])


def expected_best(values) -> np.ndarray:
    """The expected best of k trials drawn without replacement from `values` (…, n), k = 1..n."""
    values = np.sort(np.asarray(values, dtype=float), axis=-1)
    return values @ weights(values.shape[-1]).T


@dataclass(frozen=True)
class Arm:
    """One cell's curve: its trials' scores and mean seconds, E_k and the bootstrap's curves."""

    norm: str
    values: np.ndarray
    seconds: float          # mean trial seconds; NaN when the trials' times are unknown
    curve: np.ndarray
    boots: np.ndarray       # BOOT × n

    @property
    def n(self) -> int:
        return len(self.values)


def band(samples: np.ndarray, axis: int | None = None) -> tuple:
    """The `LEVEL` percentile band of `samples` (along `axis`: one band per column)."""
    tail = 100 * (1 - LEVEL) / 2
    return tuple(np.percentile(samples, [tail, 100 - tail], axis=axis))


def arm(cell: dict, rng: np.random.Generator) -> Arm | None:
    """The cell's `Arm` (None without a finished trial): the finished trials' values, a failed
    one (state FAIL, or no value) left out."""
    done = [t for t in cell.get("trials", []) if t.get("value") is not None
            and t.get("state", "COMPLETE") == "COMPLETE"]
    if not done:
        return None
    values = np.array([float(t["value"]) for t in done])
    times = [t["seconds"] for t in done if t.get("seconds") is not None]
    boots = expected_best(rng.choice(values, size=(BOOT, len(values)), replace=True))
    return Arm(cell["norm"], values, float(np.mean(times)) if times else math.nan,
               expected_best(values), boots)


@dataclass(frozen=True)
class Budget:
    """One pair's curves: treatment and baseline arms within a dataset × optimizer."""

    dataset: str
    optim: str
    treatment: Arm
    baseline: Arm

    @property
    def tested(self) -> bool:
        """Whether its bootstrap can test: a search of one trial has no spread to resample."""
        return min(self.treatment.n, self.baseline.n) > 1

    @property
    def pair(self) -> tuple[str, str]:
        return self.treatment.norm, self.baseline.norm

    @property
    def name(self) -> str:
        return "-".join((self.dataset, self.optim, *self.pair))

    def diff(self, kt: int, kb: int) -> tuple[float, float, float]:
        """E treatment (kt trials) − E baseline (kb trials), with the band."""
        t, b = self.treatment, self.baseline
        return (float(t.curve[kt - 1] - b.curve[kb - 1]),
                *band(t.boots[:, kt - 1] - b.boots[:, kb - 1]))

    def p_value(self, k: int) -> float:
        """The bootstrap's two-sided p of E treatment − E baseline at k trials against 0:
        twice the smaller share of resampled differences on either side ((count + 1) / (B + 1))."""
        d = self.treatment.boots[:, k - 1] - self.baseline.boots[:, k - 1]
        side = min((d <= 0).sum(), (d >= 0).sum())
        return min(1.0, 2 * (side + 1) / (len(d) + 1))

    def seconds_grid(self) -> list[float]:
        """The budgets in seconds at which either arm's k(s) steps up, from the first that
        affords both a trial to the last both searches reached; none without both times."""
        t, b = self.treatment, self.baseline
        if math.isnan(t.seconds) or math.isnan(b.seconds) or min(t.seconds, b.seconds) <= 0:
            return []
        lo, hi = max(t.seconds, b.seconds), min(t.n * t.seconds, b.n * b.seconds)
        steps = {j * a.seconds for a in (t, b) for j in range(1, a.n + 1)}
        return sorted(s for s in steps if lo - 1e-9 <= s <= hi + 1e-9)

    def rows(self) -> list[dict]:
        """budget.csv's rows: per k (both arms at k trials), then per budget in seconds."""
        t, b = self.treatment, self.baseline
        points = [("trials", k, None, k, k) for k in range(1, min(t.n, b.n) + 1)]
        points += [("seconds", None, s, *(int(math.floor(s / a.seconds + 1e-9)) for a in (t, b)))
                   for s in self.seconds_grid()]  # k(s): the trials that fit in s seconds
        rows = []
        for axis, k, seconds, kt, kb in points:
            row = {"dataset": self.dataset, "optim": self.optim, "treatment": t.norm,
                   "baseline": b.norm, "budget": axis, "k": k, "seconds": seconds,
                   "treatment_k": kt, "baseline_k": kb,
                   "treatment_seconds": kt * t.seconds, "baseline_seconds": kb * b.seconds}
            for side, a, ka in (("treatment", t, kt), ("baseline", b, kb)):
                row[f"{side}_best"] = float(a.curve[ka - 1])
                row[f"{side}_low"], row[f"{side}_high"] = band(a.boots[:, ka - 1])
            row["diff"], row["diff_low"], row["diff_high"] = self.diff(kt, kb)
            rows.append(row)
        return rows


def budgets(tuning: dict, pairs: list[tuple[str, str]]) -> list[Budget]:
    """Each (treatment, baseline) pair within each dataset × optimizer both norms searched,
    in the study's order; the bootstrap seeded afresh per pair."""
    cells = {(c.get("dataset"), c.get("optim"), c.get("norm")): c
             for c in tuning.get("cells", [])}
    found = []
    for dataset in study_order({d for d, _, _ in cells}):
        optims = dict.fromkeys(o for d, o, _ in cells if d == dataset)
        for optim, pair in itertools.product(optims, pairs):
            if all((dataset, optim, norm) in cells for norm in pair):
                rng = np.random.default_rng(BOOT_SEED)
                t, b = (arm(cells[dataset, optim, norm], rng) for norm in pair)
                if t is not None and b is not None:
                    found.append(Budget(dataset, optim, t, b))
    return found


def words(budget: Budget) -> str:
    """The pair's budget in words: below which budget the treatment is ahead (its band above
    0), where the difference vanishes (band includes 0) or reverses (band below 0)."""
    rows = budget.rows()
    trials, seconds = ([r for r in rows if r["budget"] == axis] for axis in ("trials", "seconds"))
    t, b = pair_words(*budget.pair)
    ahead = lambda r: r["diff_low"] > 0  # noqa: E731
    behind = lambda r: r["diff_high"] < 0  # noqa: E731
    if not budget.tested:
        return (f"One trial on a side: {t} − {b} {100 * trials[0]['diff']:+.2f} pts, "
                "direction and size only (a bootstrap of one trial has no spread).")
    reverses = next(filter(behind, trials), None)
    after = f"; {b} is ahead from {plural(int(reverses['k']), 'trial')}" if reverses else ""
    if not any(map(ahead, trials)):
        return f"{t} is not shown ahead at any budget up to {plural(len(trials), 'trial')}{after}."
    if all(map(ahead, trials)):
        up_to = f" / {seconds[-1]['seconds']:.0f} s" if seconds and all(map(ahead, seconds)) \
            else ""
        return f"{t} is ahead at every budget up to {plural(len(trials), 'trial')}{up_to}."
    if not ahead(trials[0]):
        start = next(filter(ahead, trials), None)
        return f"{t} is not shown ahead at a small budget; it is ahead at {start['k']:.0f} trials."
    stop = next(r for r in trials if not ahead(r))
    stop_s = next((r for r in seconds if not ahead(r)), None) \
        if seconds and ahead(seconds[0]) else None
    how = "reverses" if behind(stop) else "vanishes"
    per_second = f" / {stop_s['seconds']:.0f} s of search" if stop_s else ""
    return (f"{t} is worth it below {stop['k']:.0f} trials{per_second} here: at "
            f"{stop['k']:.0f} trials the difference {how}{after}.")


def claim_rows(found: list[Budget]) -> list[dict]:
    """One pair's parts (dataset × optimizer × k in `SMALL`) as claims.csv rows, decided on their
    bootstrap p Holm-adjusted over those parts, with the verdict of them all (C7's for BN)."""
    rows = []
    for budget in found:
        t, b = budget.treatment, budget.baseline
        words, tested = pair_words(t.norm, b.norm), budget.tested
        for k in (k for k in SMALL if k <= min(t.n, b.n)):
            diff, low, high = budget.diff(k, k)
            rows.append({
                "claim": "C7", "part": f" ({where(budget.dataset, budget.optim)}, k={k})",
                "family": "tuned", "dataset": budget.dataset,
                "statement": f"{where(budget.dataset, budget.optim)}: after "
                             f"{plural(k, 'trial')} of search {words[0]} is ahead",
                "statistic": f"expected best val acc after {plural(k, 'trial')} (Tang et al.), "
                             f"{' − '.join(words)}",
                "unit": "accuracy", "claimed_sign": 1,
                "sides": "; ".join(f"{word} {100 * a.curve[k - 1]:.2f}% ({plural(a.n, 'trial')})"
                                   for a, word in zip((t, b), words, strict=True)),
                "estimate": diff, "ci_low": low, "ci_high": high, "test": "bootstrap",
                "p_value": budget.p_value(k) if tested else math.nan, "claim_verdict": "",
                "detectable_80": math.nan, "seeds_needed": math.nan, "seeds_would_show": "",
                "note": f"{LEVEL:.0%} bootstrap band ({BOOT} resamples of each search)"
                if tested else "one trial on a side: a bootstrap of one has no spread, so no "
                "test (direction and size only)"})
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["verdict"] = decide(Contrast(row["estimate"], row["ci_low"], row["ci_high"],
                                         row["p_value"], test="bootstrap", p_holm=adjusted))
    overall = combine([r["verdict"] for r in rows])
    return [{**r, "claim_verdict": overall} for r in rows]


def figure(budget: Budget) -> Figure:
    """Expected best val acc against the budget in trials and in seconds, both arms banded."""
    fig = Figure(figsize=(11, 4))
    by_k, by_s = fig.subplots(1, 2)
    for a in (budget.treatment, budget.baseline):
        color, ks = norm_color(a.norm), np.arange(1, a.n + 1)
        low, high = band(a.boots, axis=0)
        for ax, x in ((by_k, ks), (by_s, ks * a.seconds)):
            if np.isnan(x).any():
                continue
            ax.plot(x, 100 * a.curve, color=color, marker="o", ms=3,
                    label=f"{norm_label(a.norm, budget.pair)} ({plural(a.n, 'trial')})")
            ax.fill_between(x, 100 * low, 100 * high, color=color, alpha=0.2, lw=0)
    for ax, label in ((by_k, "trials of random search (k)"),
                      (by_s, "seconds of search (k × the cell's mean trial seconds)")):
        ax.set_xlabel(label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.grid(alpha=0.3)
    by_k.set_ylabel("expected best validation accuracy (%)")
    by_k.legend()
    question = contrast_words([budget.pair])[0]  # `Is BatchNorm worth it`
    fig.suptitle(f"{where(budget.dataset, budget.optim)}: {question[0].lower()}{question[1:]} at "
                 f"your tuning budget? (band: {LEVEL:.0%} bootstrap)")
    fig.tight_layout()
    return fig


def scalars(found: list[Budget]) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard charts: `budget/<dataset>-<optim>/<norm>` (expected best val acc, %, at step
    k) and `…/<treatment>-<baseline>` (their difference, pts)."""
    charts = {}
    for budget in found:
        root = f"budget/{budget.dataset}-{budget.optim}"
        for a in (budget.treatment, budget.baseline):
            charts[f"{root}/{a.norm}"] = [(k, 100 * float(v)) for k, v in enumerate(a.curve, 1)]
        n = min(budget.treatment.n, budget.baseline.n)
        charts[f"{root}/{'-'.join(budget.pair)}"] = [(k, 100 * budget.diff(k, k)[0])
                                                     for k in range(1, n + 1)]
    return charts


def table(budget: Budget) -> str:
    """The pair's curve at a few k, in %, with bands."""
    t, b = pair_words(*budget.pair)
    fmt = lambda e, lo, hi, s="": f"{100 * e:{s}.2f} ({100 * lo:{s}.2f} to {100 * hi:{s}.2f})"  # noqa: E731
    return markdown([
        {"trials (k)": f"{r['k']:.0f}",
         f"seconds ({t} / {b})": f"{r['treatment_seconds']:.0f} / {r['baseline_seconds']:.0f}",
         f"{t}, %": fmt(r["treatment_best"], r["treatment_low"], r["treatment_high"]),
         f"{b}, %": fmt(r["baseline_best"], r["baseline_low"], r["baseline_high"]),
         f"{t} − {b}, pts": fmt(r["diff"], r["diff_low"], r["diff_high"], "+"),
         "band": "above 0" if r["diff_low"] > 0 else "below 0" if r["diff_high"] < 0
         else "includes 0"}
        for r in budget.rows() if r["budget"] == "trials"
        and (r["k"] in SHOWN or r["k"] == min(budget.treatment.n, budget.baseline.n))])


@dataclass
class Section:
    """The tuning budget's part of the report: text, figures, C7's claims.csv rows, TensorBoard
    scalars and, per (dataset, optim, treatment, baseline), the answer after one trial."""

    text: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    small: dict[tuple[str, str, str, str], str] = field(default_factory=dict)


def small_words(budget: Budget, verdict: str) -> str:
    """After one trial of each search, in the answer's words: C7's `verdict`, the 95% band."""
    diff, low, high = budget.diff(1, 1)
    t, b = pair_words(*budget.pair)
    who = {"holds": f"{t} ahead", "does not hold": f"{b} ahead"}.get(verdict, "cannot tell")
    return f"{who}, {100 * diff:+.2f} pts ({100 * low:+.2f} to {100 * high:+.2f})"


def budget_section(sweep_dir: Path, pairs: list[tuple[str, str]], out: Path) -> Section:
    """A tuned sweep's `Section` (C7), its figures `budget_<pair>`, and `out/budget.csv`;
    empty without `tuning.json` or a pair both of whose norms were searched."""
    tuning = read_tuning(sweep_dir)
    found = [] if tuning is None else budgets(tuning, pairs)
    if not found:
        return Section()
    csv = pd.DataFrame([r for b in found for r in b.rows()]).astype({"k": "Int64"})
    csv.round(6).to_csv(out / BUDGET_FILE, index=False, lineterminator="\r\n")  # as write_csv
    decided = pair_rows(found)
    rows = decided.get(STUDY, [])  # C7 is BN's claim; another pair is decided alike, unclaimed
    several, claimed = len(decided) > 1, " (C7's, for BN − no BN)" if rows else ""
    lines = ["### The tuning budget" + (" (C7)" if rows else ""), "",
             *([f"**C7**: {CLAIMS['C7']}.", ""] if rows else []),
             "*Expected best validation accuracy after k trials*: the mean, over every k-subset "
             "of a cell's independent random-search trials, of the subset's best (Tang et al. "
             "2020's unbiased estimator); a diverged trial scores 0, a failed one is left out. "
             "*After s seconds*: the expected best of the ⌊s / mean trial seconds⌋ trials that "
             "fit, each cell at its own trial time. Bands: "
             f"{LEVEL:.0%} percentile bootstrap, {BOOT} resamples of each search's trials "
             f"(numpy seed {BOOT_SEED}), the two searches resampled independently. Each pair "
             f"is decided at k = {', '.join(map(str, SMALL))}: each part's two-sided bootstrap p "
             "(twice the share of resampled differences on the far side of 0), Holm-adjusted "
             f"over the pair's parts{claimed}, < 0.05: holds above 0, does not hold below, else "
             "cannot tell. The table's band column is the 95% band alone, uncorrected. All "
             f"budgets: `{BUDGET_FILE}`.", "",
             *([f"Verdict: **C7 {rows[0]['claim_verdict']}**.", ""] if rows else [])]
    figures = {}
    for budget in found:
        name = f"budget_{budget.name}"
        figures[name] = figure(budget)
        compared = f", {' − '.join(pair_words(*budget.pair))}" if several else ""
        lines += [f"**{where(budget.dataset, budget.optim)}{compared}**: {words(budget)}", "",
                  f"![expected best against the budget]({name}.png)", "", table(budget), ""]
    return Section("\n".join(lines), figures, rows, scalars(found), small_answers(found, decided))


def pair_rows(found: list[Budget]) -> dict[tuple[str, str], list[dict]]:
    """Each pair's `claim_rows`, Holm within the pair: BN − no BN's are C7."""
    pairs = dict.fromkeys(b.pair for b in found)
    return {pair: claim_rows([b for b in found if b.pair == pair]) for pair in pairs}


def small_answers(found: list[Budget], decided: dict[tuple[str, str], list[dict]]
                  ) -> dict[tuple[str, str, str, str], str]:
    """Per (dataset, optim, treatment, baseline), the answer after one trial (`decided` at k=1)."""
    at_one = {pair: iter(r["verdict"] for r in rows if r["part"].endswith("k=1)"))
              for pair, rows in decided.items()}  # in `found`'s order within each pair
    return {(b.dataset, b.optim, *b.pair): small_words(b, next(at_one[b.pair])) for b in found}
