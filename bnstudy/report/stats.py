"""The numbers over the table of runs: Welch's contrast and its power, THE decision rule, the
summary and verdict tables, and the usable ranges of a robustness sweep."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bnstudy.report.runs import OUTCOMES, curves, groups, ok, settings

ALPHA = 0.05
POWER = 0.8  # the power a detectable difference and the seeds needed are stated at
SWEEPS = {"lr": ("learning rate", "Learning-rate robustness"),  # hparam: (noun, section title)
          "batch_size": ("batch size", "Batch-size sensitivity")}
USABLE_WITHIN = 0.05  # a swept value is usable within 5 accuracy points of its panel's best
VERDICTS = ("holds", "does not hold", "cannot tell")  # the one vocabulary of the rule
# how a comparison (treatment − baseline, claimed sign +) words them; no p-value: "no test"
COMPARISON_WORDS = dict(zip(VERDICTS, ("wins", "loses", "ties"), strict=True))
VERDICT_COLUMNS = ("treatment", "baseline", "n_treatment", "n_baseline", "treatment_mean",
                   "baseline_mean", "diff", "p_value", "verdict", "diff_ci_low", "diff_ci_high",
                   "treatment_diverged", "baseline_diverged", "detectable_80", "seeds_needed")


# --- Welch's contrast and the one rule -----------------------------------------------------


@dataclass(frozen=True)
class Contrast:
    """Σ weight × group mean, its 95% interval and two-sided p against 0, Welch's (each group
    its own variance, Welch–Satterthwaite df); NaN where undefined (< 2 values, no spread)."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float


def contrast(terms: list[tuple[float, list[float]]], alpha: float = ALPHA) -> Contrast:
    """The contrast of `terms` [(weight, values), ...]; [(1, a), (-1, b)] is scipy's
    `ttest_ind(a, b, equal_var=False)`."""
    if any(len(values) == 0 for _, values in terms):
        return Contrast(math.nan, math.nan, math.nan, math.nan)
    estimate = float(sum(w * np.mean(values) for w, values in terms))
    if untestable(terms):
        return Contrast(estimate, math.nan, math.nan, math.nan)
    parts = [w * w * float(np.var(values, ddof=1)) / len(values) for w, values in terms]
    var = sum(parts)
    df = var ** 2 / sum(p ** 2 / (len(values) - 1)
                        for p, (_, values) in zip(parts, terms, strict=True))
    se = math.sqrt(var)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return Contrast(estimate, estimate - half, estimate + half, p)


def untestable(terms: list[tuple[float, list[float]]]) -> bool:
    """A group with < 2 values, or no spread at all (not a rounding residue's variance)."""
    return any(len(v) < 2 for _, v in terms) or all(np.ptp(v) == 0 for _, v in terms)


def decide(test: Contrast, sign: int = 1, alpha: float = ALPHA) -> str:
    """THE rule: p < alpha on the claimed side (`sign`) of 0 holds, on the other side does not
    hold; else cannot tell."""
    if math.isnan(test.p_value) or test.p_value >= alpha:
        return "cannot tell"
    return "holds" if np.sign(test.estimate) == sign else "does not hold"


def comparison_word(verdict: str, p_value: float) -> str:
    """A comparison's word for the rule's verdict: wins, loses, ties, or no test (no p)."""
    return "no test" if math.isnan(p_value) else COMPARISON_WORDS[verdict]


def welch_power(delta: float, variances: list[float], sizes: list[int],
                alpha: float = ALPHA) -> float:
    """The power of Welch's two-sided test of a contrast of true value `delta`, its groups of
    these (weight² × sample) variances and sizes: the noncentral t, Welch–Satterthwaite df."""
    parts = [v / n for v, n in zip(variances, sizes, strict=True)]
    se = math.sqrt(sum(parts))
    df = sum(parts) ** 2 / sum(p * p / (n - 1) for p, n in zip(parts, sizes, strict=True))
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    ncp = abs(delta) / se
    power = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if math.isnan(power):  # scipy's nct gives up far in the tail: all or nothing there
        return 1.0 if ncp > crit else 0.0
    return power


def power_of(terms: list[tuple[float, list[float]]], power: float = POWER,
             alpha: float = ALPHA, most: int = 1000) -> tuple[float, float]:
    """(the smallest |contrast| detected with `power`, the seeds a side detecting one of the size
    observed; inf above `most`); NaN, NaN where there is no test."""
    if untestable(terms):
        return math.nan, math.nan
    variances = [w * w * float(np.var(values, ddof=1)) for w, values in terms]
    sizes = [len(values) for _, values in terms]
    high = math.sqrt(sum(v / n for v, n in zip(variances, sizes, strict=True)))
    while welch_power(high, variances, sizes, alpha) < power:
        high *= 2
    detectable = float(optimize.brentq(
        lambda d: welch_power(d, variances, sizes, alpha) - power, 0.0, high))
    observed = abs(float(sum(w * np.mean(values) for w, values in terms)))
    if observed == 0 or welch_power(observed, variances, [most] * len(sizes), alpha) < power:
        return detectable, math.inf
    low, high = 2, most  # the power grows with n: bisect for the first n that reaches it
    while low < high:
        mid = (low + high) // 2
        if welch_power(observed, variances, [mid] * len(sizes), alpha) >= power:
            high = mid
        else:
            low = mid + 1
    return detectable, float(low)


# --- the summary and verdict tables ----------------------------------------------------------


def epochs_to_target(runs: pd.DataFrame, target: float | None) -> pd.Series:
    """Per run, the first epoch (from 1) whose val acc reaches `target`; NaN if none."""
    table = curves(runs)
    hit = table[table["val/acc"] >= (math.inf if target is None else target)]
    first = hit.groupby("job", sort=False)["epoch"].min() + 1
    return runs["job"].map(first).astype(float)


def summary(runs: pd.DataFrame, keys: list[str], targets: dict[str, float]) -> pd.DataFrame:
    """summary.csv: per group, the ok runs' means (and stds, ddof=1), epochs to target, job
    counts by outcome, missing seeds."""
    seeds = set(runs["seed"]) if "seed" in runs else {None}
    rows = []
    for key, group in groups(runs, keys):
        target = targets.get(dict(key)["dataset"], targets.get("*"))
        good = ok(group)
        reached = epochs_to_target(good, target).dropna()
        row = {**dict(key), "n_seeds": len(good)}
        for name in ("final_val_acc", "best_val_acc", "final_val_loss", "test_acc",
                     "first_epoch_train_loss"):
            row[f"{name}_mean"] = good[name].mean(skipna=False)
            if name in ("final_val_acc", "best_val_acc", "test_acc"):
                row[f"{name}_std"] = good[name].std(skipna=False)
        row.update(target_val_acc=math.nan if target is None else target,
                   epochs_to_target_mean=reached.mean(), n_reached_target=len(reached),
                   wall_time_s_mean=good["wall_time_s"].mean(skipna=False))
        for outcome in OUTCOMES[1:]:
            row[f"n_{outcome}"] = int((group["outcome"] == outcome).sum())
        present = set(group["seed"]) if "seed" in group else {None}
        row["n_missing"] = len(seeds - present)
        rows.append(row)
    return pd.DataFrame(rows)


def values(runs: pd.DataFrame | None, quantity: str = "final_val_acc") -> list[float]:
    """The ok runs' `quantity`, NaN left out, in seed order."""
    if runs is None:
        return []
    return [float(x) for x in ok(runs)[quantity] if not math.isnan(x)]


def verdicts(runs: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """verdicts.csv: per comparison and compared pair, the ok seeds, mean final val accs,
    treatment − baseline with Welch's p, 95% interval, verdict, power, diverged runs."""
    rows = []
    for ckey, by_norm in settings(runs):
        for treatment, baseline in pairs:
            if treatment not in by_norm and baseline not in by_norm:
                continue
            sides = [values(by_norm.get(n)) for n in (treatment, baseline)]
            terms = [(1.0, sides[0]), (-1.0, sides[1])]
            diff = contrast(terms)
            detectable, needed = power_of(terms)
            diverged = [0 if n not in by_norm else int((by_norm[n]["outcome"] == "diverged").sum())
                        for n in (treatment, baseline)]
            rows.append({**dict(ckey), "treatment": treatment, "baseline": baseline,
                         "n_treatment": len(sides[0]), "n_baseline": len(sides[1]),
                         "treatment_mean": np.mean(sides[0]) if sides[0] else math.nan,
                         "baseline_mean": np.mean(sides[1]) if sides[1] else math.nan,
                         "diff": diff.estimate, "p_value": diff.p_value,
                         "verdict": comparison_word(decide(diff), diff.p_value),
                         "diff_ci_low": diff.ci_low, "diff_ci_high": diff.ci_high,
                         "treatment_diverged": diverged[0], "baseline_diverged": diverged[1],
                         "detectable_80": detectable, "seeds_needed": needed})
    return pd.DataFrame(rows)


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
    return {norm: {value: float(np.mean(values(g))) if values(g) else math.nan
                   for value, g in by_value.items() if (g["outcome"] == "ok").all()}
            for norm, by_value in by_norm.items()}


def usable_values(by_norm: dict[str, dict],
                  within: float = USABLE_WITHIN) -> tuple[float, dict[str, list]]:
    """The panel's best mean final val acc, and per norm its usable values: all runs ok, their
    mean at most `within` below that best."""
    means = point_means(by_norm)
    best = max((m for by_value in means.values() for m in by_value.values() if not math.isnan(m)),
               default=math.nan)
    return best, {norm: [v for v, m in by_value.items() if best - m <= within + 1e-12]
                  for norm, by_value in means.items()}
