"""The numbers over the table of runs: contrasts (paired t, Welch, test images' error), TOST,
Holm, power, THE decision rule, the summary and verdict tables, a sweep's usable ranges."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bnstudy.report.runs import OUTCOMES, curves, groups, margins, ok, settings

ALPHA = 0.05
POWER = 0.8  # the power a detectable difference and the seeds needed are stated at
SWEEPS = {"lr": ("learning rate", "Learning-rate robustness"),  # hparam: (noun, section title)
          "batch_size": ("batch size", "Batch-size sensitivity")}
USABLE_WITHIN = 0.05  # a swept value is usable within 5 accuracy points of its panel's best
_COMPARISON_WORDS = {"holds": "wins", "does not hold": "loses"}  # treatment − baseline
PAIRED, WELCH, UNPAIRED, IMAGES, ONE = ("paired t", "Welch", "Welch, seeds unpaired",
                                        "Welch + test images", "one-sample t")
VERDICT_COLUMNS = ("treatment", "baseline", "quantity", "n_treatment", "n_baseline",
                   "treatment_mean", "baseline_mean", "diff", "test", "n_paired", "p_value",
                   "p_holm", "verdict", "diff_ci_low", "diff_ci_high", "margin", "p_tost",
                   "p_tost_holm", "treatment_diverged", "baseline_diverged", "detectable_80",
                   "seeds_needed", "seeds_would_show")


# --- the contrast, TOST, Holm and the one rule ------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """One variance component of a contrast, `var / n` with n − 1 df (`seeds`: shrinks with
    more seeds; the test images' does not)."""

    var: float
    n: int
    seeds: bool = True


@dataclass(frozen=True)
class Contrast:
    """Σ weight × group mean, its 95% interval, two-sided p (`test`: paired t over `n_paired`
    seeds, or Welch), TOST's p against ±`margin`, both Holm-adjusted in the family; NaN: none."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str = WELCH
    n_paired: int = 0
    margin: float = math.nan
    p_tost: float = math.nan
    p_holm: float = math.nan
    p_tost_holm: float = math.nan
    spreads: tuple[Spread, ...] = ()


def t_parts(spreads: tuple[Spread, ...], n: int | None = None) -> tuple[float, float]:
    """(standard error, Welch–Satterthwaite df) of the components (`n`: seeds replacing each
    seed component's); the df of the seeds' components alone where they vary, so that the test
    images' component widens the interval and never buys df."""
    parts = [(s.var / m, m, s.seeds) for s in spreads for m in [n if n and s.seeds else s.n]]
    seeded = [(v, m) for v, m, by_seed in parts if by_seed and v > 0] or \
        [(v, m) for v, m, _ in parts if v > 0]
    df = sum(v for v, _ in seeded) ** 2 / sum(v * v / (m - 1) for v, m in seeded)
    return math.sqrt(sum(v for v, _, _ in parts)), df


def paired_sums(terms: list[tuple[float, list[float]]], seeds: list[list]) -> list[float] | None:
    """Per seed every term has once, Σ weight × value; None with fewer than 2 such seeds."""
    if any(None in ss or len(set(ss)) < len(ss) for ss in seeds):
        return None
    maps = [dict(zip(ss, xs, strict=True)) for (_, xs), ss in zip(terms, seeds, strict=True)]
    shared = [s for s in maps[0] if all(s in m for m in maps)]
    if len(shared) < 2:
        return None
    return [sum(w * m[s] for (w, _), m in zip(terms, maps, strict=True)) for s in shared]


def image_spread(images: list[tuple[float, list[np.ndarray]]]) -> Spread | None:
    """The test images' sampling error of Σ weight × group mean test acc (`images`: per term its
    weight and runs' per-image bool arrays): var_i(d_i) / n, d_i the contrast on image i."""
    if not images or any(len(arrays) == 0 for _, arrays in images):
        return None
    d = sum(w * np.mean(np.stack(arrays).astype(float), axis=0) for w, arrays in images)
    return Spread(float(np.var(d, ddof=1)), len(d), seeds=False)


def images_of(terms: list[tuple[float, pd.DataFrame]]) -> Spread | None:
    """`image_spread` of each term's runs (weight, rows), where they saved `test_correct`."""
    if not all("test_correct" in rows for _, rows in terms):
        return None
    return image_spread([(w, [a for a in rows["test_correct"] if a is not None])
                         for w, rows in terms])


def contrast(terms: list[tuple[float, list[float]]], alpha: float = ALPHA,
             seeds: list[list] | None = None, images: Spread | None = None,
             margin: float = math.nan) -> Contrast:
    """The contrast of `terms` [(weight, values), ...]: paired over the seeds they share when
    `seeds` pair them, else Welch's; `images`: the test images' error; TOST against ±`margin`."""
    sums = paired_sums(terms, seeds) if seeds is not None and len(terms) > 1 else None
    test = PAIRED if sums else ONE if len(terms) == 1 else UNPAIRED if seeds else WELCH
    if any(len(values) == 0 for _, values in terms):
        return Contrast(math.nan, math.nan, math.nan, math.nan, test)
    if sums:
        estimate = float(np.mean(sums))
        spreads = (Spread(float(np.var(sums, ddof=1)), len(sums)),)
        flat = np.ptp(sums) == 0
    else:
        estimate = float(sum(w * np.mean(values) for w, values in terms))
        spreads = tuple(Spread(w * w * float(np.var(xs, ddof=1)) if len(xs) > 1 else math.nan,
                               len(xs)) for w, xs in terms)
        flat = any(len(v) < 2 for _, v in terms) or all(np.ptp(v) == 0 for _, v in terms)
    if images is not None:
        test = IMAGES
        spreads += (images,)
    n_paired = len(sums) if sums else 0
    if flat:
        return Contrast(estimate, math.nan, math.nan, math.nan, test, n_paired, margin)
    se, df = t_parts(spreads)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(estimate) / se, df))
    tost = max(float(stats.t.sf((estimate + margin) / se, df)),
               float(stats.t.cdf((estimate - margin) / se, df)))
    return Contrast(estimate, estimate - half, estimate + half, p, test, n_paired, margin,
                    tost, p, tost, spreads)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values; a NaN (no test) stays NaN and is not counted."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    out[order] = np.maximum.accumulate(np.minimum(1.0, (len(order) - np.arange(len(order)))
                                                  * p[order]))
    return out.tolist()


def holm_family(tests: list[Contrast]) -> list[Contrast]:
    """The family's contrasts with Holm's adjustment of the p and, apart, of the TOST p."""
    return [replace(t, p_holm=a, p_tost_holm=b) for t, a, b in zip(
        tests, holm([t.p_value for t in tests]), holm([t.p_tost for t in tests]), strict=True)]


def strictest_level(tests: list[Contrast], alpha: float = ALPHA) -> float:
    """Holm's strictest step in a family, alpha / the contrasts tested: a p below it is decided
    whatever the others' p, so power and the seeds that would decide are stated at it."""
    return alpha / max(1, sum(not math.isnan(t.p_value) for t in tests))


def decide(test: Contrast, sign: int = 1, alpha: float = ALPHA) -> str:
    """THE rule, on Holm-adjusted p: p < alpha holds on the claimed side (`sign`) of 0, does not
    hold on the other; else TOST's p < alpha: equivalent (within ±margin); else cannot tell."""
    if test.p_holm < alpha:
        return "holds" if np.sign(test.estimate) == sign else "does not hold"
    return "equivalent" if test.p_tost_holm < alpha else "cannot tell"


def comparison_word(verdict: str, p_value: float) -> str:
    """A comparison's word for its verdict: wins, loses, equivalent, cannot tell, no test."""
    return "no test" if math.isnan(p_value) else _COMPARISON_WORDS.get(verdict, verdict)


def t_power(delta: float, spreads: tuple[Spread, ...], n: int | None = None,
            alpha: float = ALPHA) -> float:
    """The power of the two-sided t test of a contrast of true value `delta` with these
    variance components (`n` seeds a side or pairs, if given): the noncentral t."""
    se, df = t_parts(spreads, n)
    crit, ncp = float(stats.t.ppf(1 - alpha / 2, df)), abs(delta) / se
    return nct_tail(crit, df, ncp, upper=True) + nct_tail(-crit, df, ncp)


def tost_power(delta: float, margin: float, spreads: tuple[Spread, ...], n: int | None = None,
               alpha: float = ALPHA) -> float:
    """The power of TOST against ±`margin` for a contrast of true value `delta`: 1 − the chance
    each one-sided test misses (noncentral t; a lower bound, close where the power is high)."""
    se, df = t_parts(spreads, n)
    crit = float(stats.t.ppf(1 - alpha, df))
    miss = nct_tail(crit, df, (delta + margin) / se) + \
        nct_tail(-crit, df, (delta - margin) / se, upper=True)
    return max(0.0, 1.0 - miss)


def nct_tail(x: float, df: float, ncp: float, upper: bool = False) -> float:
    """The noncentral t's P(T ≤ x) (P(T > x) if `upper`); the normal's where scipy gives NaN."""
    p = stats.nct.sf(x, df, ncp) if upper else stats.nct.cdf(x, df, ncp)
    if math.isnan(p):
        p = stats.norm.sf(x - ncp) if upper else stats.norm.cdf(x - ncp)
    return float(p)


def fewest_seeds(power_at, power: float, most: int) -> float:
    """The fewest seeds n in [2, `most`] with `power_at(n)` ≥ `power` (rising in n), else inf."""
    if power_at(most) < power:
        return math.inf
    return float(2 + bisect.bisect_left(range(2, most), True, key=lambda n: power_at(n) >= power))


def power_of(test: Contrast, power: float = POWER, alpha: float = ALPHA,
             most: int = 1000) -> tuple[float, float, str]:
    """(smallest |contrast| detected with `power`, fewest seeds a side that would detect the
    observed one or show it equivalent (inf above `most`), which); NaN, NaN, "" without a test."""
    spreads = test.spreads
    if math.isnan(test.p_value) or not spreads:
        return math.nan, math.nan, ""
    high = t_parts(spreads)[0]
    while t_power(high, spreads, alpha=alpha) < power:
        high *= 2
    detectable = float(optimize.brentq(
        lambda d: t_power(d, spreads, alpha=alpha) - power, 0.0, high))
    observed = abs(test.estimate)
    differ = math.inf if observed == 0 else fewest_seeds(
        lambda n: t_power(observed, spreads, n, alpha), power, most)
    same = math.inf if not observed < test.margin else fewest_seeds(  # (NaN margin: none)
        lambda n: tost_power(observed, test.margin, spreads, n, alpha), power, most)
    return (detectable, same, "equivalence") if same < differ else \
        (detectable, differ, "a difference")


# --- the summary and verdict tables ----------------------------------------------------------


def summary(runs: pd.DataFrame, keys: list[str], targets: dict[str, float]) -> pd.DataFrame:
    """summary.csv: per group, the ok runs' means (and stds, ddof=1), epochs to target, job
    counts by outcome, missing seeds."""
    seeds = set(runs["seed"]) if "seed" in runs else {None}
    rows = []
    for key, group in groups(runs, keys):
        target = targets.get(dict(key)["dataset"], targets.get("*"))
        good = ok(group)
        table = curves(good)  # each run's first epoch (from 1) whose val acc reaches the target:
        hit = table[table["val/acc"] >= (math.inf if target is None else target)]
        first = hit.groupby("job", sort=False)["epoch"].min() + 1
        reached = good["job"].map(first).astype(float).dropna()
        row = {**dict(key), "n_seeds": len(good)}
        for name in ("final_val_acc", "best_val_acc", "final_val_loss", "test_acc",
                     "first_epoch_train_loss"):
            row[f"{name}_mean"] = good[name].mean(skipna=False)
            if name.endswith("acc"):
                row[f"{name}_std"] = good[name].std(skipna=False)
        row.update(target_val_acc=math.nan if target is None else target,
                   epochs_to_target_mean=reached.mean(), n_reached_target=len(reached),
                   wall_time_s_mean=good["wall_time_s"].mean(skipna=False))
        row.update({f"n_{o}": int((group["outcome"] == o).sum()) for o in OUTCOMES[1:]})
        row["n_missing"] = len(seeds - (set(group["seed"]) if "seed" in group else {None}))
        rows.append(row)
    return pd.DataFrame(rows)


def seeded(runs: pd.DataFrame | None, quantity: str = "final_val_acc") -> list[tuple]:
    """The ok runs' (seed, `quantity`), NaN left out, in seed order."""
    if runs is None:
        return []
    good = ok(runs)
    seeds = good["seed"] if "seed" in good else [None] * len(good)
    return [(s, float(x)) for s, x in zip(seeds, good[quantity], strict=True)
            if not math.isnan(x)]


def values(runs: pd.DataFrame | None, quantity: str = "final_val_acc") -> list[float]:
    """The ok runs' `quantity`, NaN left out, in seed order."""
    return [x for _, x in seeded(runs, quantity)]


def mean_std(xs) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    xs = list(xs)
    return (float(np.mean(xs)) if xs else math.nan,
            float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan)


def verdicts(runs: pd.DataFrame, pairs: list[tuple[str, str]], tuned: bool = False
             ) -> pd.DataFrame:
    """verdicts.csv: per comparison and pair, treatment − baseline in final val acc (`tuned`:
    test acc, Welch, as C6), Holm-adjusted over the table, TOST, verdict, power."""
    rows, tests, margin = [], [], margins(runs)
    quantity = "test_acc" if tuned else "final_val_acc"
    for ckey, by_norm in settings(runs):
        for treatment, baseline in pairs:
            if treatment not in by_norm and baseline not in by_norm:
                continue
            sides = [seeded(by_norm.get(n), quantity) for n in (treatment, baseline)]
            xs = [[x for _, x in side] for side in sides]
            images = images_of([(1.0, ok(by_norm[treatment])), (-1.0, ok(by_norm[baseline]))]) \
                if tuned and treatment in by_norm and baseline in by_norm else None  # as C6
            tests.append(contrast([(1.0, xs[0]), (-1.0, xs[1])], seeds=None if tuned else
                                  [[s for s, _ in side] for side in sides], images=images,
                                  margin=margin.get(dict(ckey).get("dataset"), math.nan)))
            diverged = [0 if n not in by_norm else int((by_norm[n]["outcome"] == "diverged").sum())
                        for n in (treatment, baseline)]
            rows.append({**dict(ckey), "treatment": treatment, "baseline": baseline,
                         "quantity": quantity, "n_treatment": len(xs[0]), "n_baseline": len(xs[1]),
                         "treatment_mean": mean_std(xs[0])[0], "baseline_mean": mean_std(xs[1])[0],
                         "treatment_diverged": diverged[0], "baseline_diverged": diverged[1]})
    for row, diff in zip(rows, holm_family(tests), strict=True):
        row.update({k: getattr(diff, k) for k in VERDICT_COLUMNS if hasattr(diff, k)},  # same name
                   diff=diff.estimate, diff_ci_low=diff.ci_low, diff_ci_high=diff.ci_high,
                   verdict=comparison_word(decide(diff), diff.p_value))
        row.update(zip(("detectable_80", "seeds_needed", "seeds_would_show"),
                       power_of(diff, alpha=strictest_level(tests)), strict=True))
    return pd.DataFrame(rows, columns=[*dict.fromkeys(
        [k for r in rows for k in r if k not in VERDICT_COLUMNS]), *VERDICT_COLUMNS])


# --- robustness sweeps (experiment=lr_sweep | batch_sweep) -----------------------------------


def sweep_panels(runs: pd.DataFrame, keys: list[str], hparam: str
                 ) -> dict[str, dict[tuple, dict[str, dict]]]:
    """The groups by dataset, panel (the key but dataset, norm, `hparam`), norm, `hparam` value."""
    known = [(k, g) for k, g in groups(runs, keys) if dict(k).get(hparam) is not None]
    out: dict[str, dict[tuple, dict]] = {}
    for key, group in sorted(known, key=lambda item: float(dict(item[0])[hparam])):
        values_ = dict(key)
        panel = tuple(kv for kv in key if kv[0] not in ("dataset", "norm", hparam))
        by_norm = out.setdefault(values_["dataset"], {}).setdefault(panel, {})
        by_norm.setdefault(values_["norm"], {})[values_[hparam]] = group
    return out


def point_means(by_norm: dict[str, dict]) -> dict[str, dict]:
    """Per norm and swept value whose runs all finished ok, their mean final val acc."""
    return {norm: {value: mean_std(values(g))[0] for value, g in by_value.items()
                   if (g["outcome"] == "ok").all()} for norm, by_value in by_norm.items()}


def usable_values(by_norm: dict[str, dict],
                  within: float = USABLE_WITHIN) -> tuple[float, dict[str, list]]:
    """The panel's best mean final val acc, and per norm its usable values: all runs ok, their
    mean at most `within` below that best."""
    means = point_means(by_norm)
    best = max((m for by_value in means.values() for m in by_value.values() if not math.isnan(m)),
               default=math.nan)
    return best, {norm: [v for v, m in by_value.items() if best - m <= within + 1e-12]
                  for norm, by_value in means.items()}
