"""The numbers: per-run metrics, their mean and spread over seeds, the Welch verdict, and the
usable ranges of a robustness sweep, with the sentences report.md states them in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from bnstudy.report.runs import OUTCOMES, Run, norm_label, norm_order

ALPHA = 0.05
POWER = 0.8  # the power a detectable difference and the seeds needed are stated at
METRICS = ("final_val_acc", "best_val_acc", "final_val_loss", "test_acc",
           "first_epoch_train_loss", "epochs_to_target", "wall_time_s")
SWEEPS = {"lr": ("learning rate", "Learning-rate robustness"),  # hparam: (noun, section title)
          "batch_size": ("batch size", "Batch-size sensitivity")}
USABLE_WITHIN = 0.05  # a swept value is usable within 5 accuracy points of its panel's best
VERDICT_COLUMNS = ("n_bn", "n_none", "bn_mean", "none_mean", "diff", "p_value", "verdict",
                   "diff_ci_low", "diff_ci_high", "bn_diverged", "none_diverged",
                   "detectable_80", "seeds_needed")  # verdicts.csv,
# after dataset, optim and the varying settings


def num(value) -> float:
    """A JSON number as float; null (a NaN or inf that JSON cannot hold) as NaN."""
    return math.nan if value is None else float(value)


def plural(n: int, noun: str) -> str:
    """`1 seed`, `2 seeds`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- per run and over seeds ---------------------------------------------------------------


def epochs_to_target(history: list[dict], target: float | None) -> float:
    """The first epoch (counted from 1) whose validation accuracy reaches `target`; NaN if none."""
    if target is None:
        return math.nan
    hits = [row["epoch"] + 1 for row in history if num(row.get("val/acc")) >= target]
    return float(hits[0]) if hits else math.nan


def run_metrics(run: Run, target: float | None) -> dict[str, float]:
    """The numbers the summary averages over seeds, for one run with a history."""
    first, last = run.history[0], run.history[-1]
    return {
        "final_val_acc": num(last.get("val/acc")),
        "best_val_acc": max(num(row.get("val/acc")) for row in run.history),
        "final_val_loss": num(last.get("val/loss")),
        "test_acc": num(run.test_acc),
        "first_epoch_train_loss": num(first.get("train/loss")),
        "epochs_to_target": epochs_to_target(run.history, target),
        "wall_time_s": num(run.wall_time_s),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), std


def per_seed(runs: list[Run], target: float | None) -> dict[str, list[float]]:
    """Each metric's values over the group's ok runs (with a history), in seed order."""
    rows = [run_metrics(r, target) for r in runs if r.outcome == "ok" and r.history]
    return {name: [row[name] for row in rows] for name in METRICS}


def summarise(key: tuple, runs: list[Run], seeds: set, target: float | None) -> dict:
    """One summary.csv row: the group's hparams, seed statistics and job counts."""
    values = per_seed(runs, target)
    n = len(values["final_val_acc"])
    row: dict = dict(key)
    row["n_seeds"] = n
    for name in ("final_val_acc", "best_val_acc"):
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values[name])
    row["final_val_loss_mean"] = mean_std(values["final_val_loss"])[0]
    row["test_acc_mean"], row["test_acc_std"] = mean_std(values["test_acc"])
    row["first_epoch_train_loss_mean"] = mean_std(values["first_epoch_train_loss"])[0]
    reached = [e for e in values["epochs_to_target"] if not math.isnan(e)]
    row["target_val_acc"] = math.nan if target is None else target
    row["epochs_to_target_mean"] = mean_std(reached)[0]
    row["n_reached_target"] = len(reached)
    row["wall_time_s_mean"] = mean_std(values["wall_time_s"])[0]
    for outcome in OUTCOMES[1:]:
        row[f"n_{outcome}"] = sum(r.outcome == outcome for r in runs)
    row["n_missing"] = len(seeds - {r.hparams.get("seed") for r in runs})
    return row


# --- verdict ------------------------------------------------------------------------------


def verdict(bn_acc: list[float], none_acc: list[float],
            bn_loss0: list[float], none_loss0: list[float], alpha: float = ALPHA) -> str:
    """Does BN win on final validation accuracy, by how much, and beyond the seed spread?

    Takes each side's per-seed final validation accuracies and first-epoch training losses;
    the significance is Welch's t-test (unequal variances) over the seeds, at `alpha`.
    """
    if not bn_acc or not none_acc:
        side = "BatchNorm" if not bn_acc else "No BatchNorm"
        return f"No verdict: the {side} side has no finished (ok) run."
    bn, none = float(np.mean(bn_acc)), float(np.mean(none_acc))
    diff = 100 * (bn - none)
    result = "wins" if diff > 0 else "loses" if diff < 0 else "ties"
    seeds = (f"{plural(len(bn_acc), 'seed')} each" if len(bn_acc) == len(none_acc)
             else f"{len(bn_acc)} vs {plural(len(none_acc), 'seed')}")
    text = (f"BatchNorm {result} on final validation accuracy: {bn:.2%} vs {none:.2%} without it "
            f"({diff:+.2f} percentage points, mean over {seeds}). ")
    if min(len(bn_acc), len(none_acc)) < 2:
        text += "With one seed on a side, no significance can be claimed. "
    elif np.ptp(bn_acc) == 0 and np.ptp(none_acc) == 0:
        text += "The seeds show no spread, so Welch's t-test is undefined. "
    else:
        p = float(stats.ttest_ind(bn_acc, none_acc, equal_var=False).pvalue)
        if p < alpha:
            text += (f"The difference is larger than the seed-to-seed spread "
                     f"(Welch's t-test p = {p:.2g} < {alpha}). ")
        else:
            text += (f"The difference is within the seed-to-seed spread "
                     f"(Welch's t-test p = {p:.2g} ≥ {alpha}): not significant. ")
    loss_bn, loss_none = float(np.mean(bn_loss0)), float(np.mean(none_loss0))
    start = "lower" if loss_bn < loss_none else "higher" if loss_bn > loss_none else "the same"
    return text + (f"Its first-epoch training loss is {start} "
                   f"({loss_bn:.3f} vs {loss_none:.3f} without BatchNorm).")


def landscape_medians(found: dict[str, Run]) -> str:
    """The report.md line under the gradients figure: each side's median landscape numbers."""
    parts = []
    for norm, run in found.items():
        land = run.probes["gradients"]["landscape"]
        medians = {key: float(np.nanmedian(np.array(land[key], dtype=float)))
                   for key in ("loss_range", "grad_change_max", "beta_smoothness")}
        parts.append(f"{norm_label(norm)} {medians['loss_range']:.3g}, "
                     f"{medians['grad_change_max']:.3g}, {medians['beta_smoothness']:.3g}")
    return ("Median over the measured steps of the loss range, the largest gradient change "
            "and the β-smoothness: " + "; ".join(parts) + ".")


# --- robustness sweeps (experiment=lr_sweep | batch_sweep) ---------------------------------


def sweep_panels(groups: dict[tuple, list[Run]], hparam: str) -> dict[str, dict[tuple, dict]]:
    """The groups by dataset, then panel (the key without dataset, norm and `hparam`: the optim
    and any other varying hparam), then norm, then value of `hparam`, ascending."""
    known = [(key, runs) for key, runs in groups.items() if dict(key).get(hparam) is not None]
    out: dict[str, dict[tuple, dict]] = {}
    for key, runs in sorted(known, key=lambda item: float(dict(item[0])[hparam])):
        values = dict(key)
        panel = tuple(kv for kv in key if kv[0] not in ("dataset", "norm", hparam))
        by_norm = out.setdefault(values["dataset"], {}).setdefault(panel, {})
        by_norm.setdefault(values["norm"], {})[values[hparam]] = runs
    return out


def point_means(by_norm: dict[str, dict]) -> dict[str, dict]:
    """Per norm and swept value whose runs all finished ok, their mean final validation accuracy."""
    return {norm: {value: mean_std(per_seed(runs, None)["final_val_acc"])[0]
                   for value, runs in by_value.items() if all(r.outcome == "ok" for r in runs)}
            for norm, by_value in by_norm.items()}


def usable_values(by_norm: dict[str, dict],
                  within: float = USABLE_WITHIN) -> tuple[float, dict[str, list]]:
    """The panel's best mean final validation accuracy, and per norm its usable swept values:
    every run there finished ok (none diverged, failed or unfinished) and their mean final
    validation accuracy is at most `within` (0.05: 5 points) below that best."""
    means = point_means(by_norm)
    best = max((m for by_value in means.values() for m in by_value.values() if not math.isnan(m)),
               default=math.nan)
    return best, {norm: [v for v, m in by_value.items() if best - m <= within + 1e-12]
                  for norm, by_value in means.items()}


def value_range(noun: str, usable: list, grid: list) -> str:
    """`0.01 to 1 (5 of 11 values)`, the values listed when they are not adjacent in the grid,
    or `no <noun>`."""
    count = f"{len(usable)} of {len(grid)} values"
    if not usable:
        return f"no {noun} ({count})"
    if len(usable) == 1:
        return f"{usable[0]:g} only ({count})"
    first, last = grid.index(usable[0]), grid.index(usable[-1])
    if last - first + 1 == len(usable):
        return f"{usable[0]:g} to {usable[-1]:g} ({count})"
    return f"{', '.join(f'{v:g}' for v in usable)} ({count}, not adjacent in the grid)"


def robustness_text(hparam: str, label: str, by_norm: dict[str, dict],
                    within: float = USABLE_WITHIN) -> str:
    """One panel's report.md line: the best run, each norm's usable range, which is wider."""
    noun = SWEEPS[hparam][0]
    best, usable = usable_values(by_norm, within)
    if math.isnan(best):
        return f"**{label}**: no {noun} has all its runs finished ok, so none is usable."
    order, means = norm_order(by_norm), point_means(by_norm)
    where = next((norm, v) for norm in order for v, m in means[norm].items() if m == best)
    parts = []
    for norm in order:
        grid = sorted(by_norm[norm], key=float)
        text = f"{norm_label(norm)} {value_range(noun, usable[norm], grid)}"
        for outcome in OUTCOMES[1:]:
            hit = [f"{v:g}" for v in grid if any(r.outcome == outcome for r in by_norm[norm][v])]
            if hit:
                text += f", {outcome} at {hparam} {', '.join(hit)}"
        parts.append(text)
    sizes = {norm: len(usable[norm]) for norm in order}
    widest = [norm for norm in order if sizes[norm] == max(sizes.values())]
    if len(order) < 2:
        wider = ""
    elif len(widest) == len(order):
        wider = f" The usable ranges are equally wide ({plural(sizes[order[0]], 'value')} each)."
    else:
        names = " and ".join(map(norm_label, widest))
        degree = "wider" if len(order) == 2 else "widest"
        counts = " vs ".join(str(n) for n in sorted(sizes.values(), reverse=True))
        wider = (f" {names} {'has' if len(widest) == 1 else 'have'} the {degree} usable range "
                 f"({counts} values).")
    return (f"**{label}** (best {best:.2%}: {norm_label(where[0])} at {hparam}={where[1]:g}). "
            f"Usable {noun}: {'; '.join(parts)}.{wider}")


# --- differences with intervals (claims, verdicts.csv) ------------------------------------


@dataclass(frozen=True)
class Contrast:
    """A weighted sum of group means (`BN − no BN`, a difference of two such differences, or
    one group's mean), its 95 % interval and two-sided p-value against zero. The interval and
    the test are Welch's: each group keeps its own variance, the degrees of freedom are
    Welch–Satterthwaite's. NaN where undefined (a group with < 2 values, or no spread at all)."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float


def contrast(terms: list[tuple[float, list[float]]], alpha: float = ALPHA) -> Contrast:
    """Σ weight × mean(values) over `terms` [(weight, values), ...]; with [(1, a), (-1, b)] the
    interval and p-value are exactly Welch's t-test's (scipy's `ttest_ind(equal_var=False)`)."""
    if any(not values for _, values in terms):
        return Contrast(math.nan, math.nan, math.nan, math.nan)
    estimate = float(sum(w * np.mean(values) for w, values in terms))
    if any(len(values) < 2 for _, values in terms):
        return Contrast(estimate, math.nan, math.nan, math.nan)
    parts = [w * w * float(np.var(values, ddof=1)) / len(values) for w, values in terms]
    var = sum(parts)
    if all(np.ptp(values) == 0 for _, values in terms):  # not a rounding residue's tiny var
        return Contrast(estimate, math.nan, math.nan, math.nan)
    df = var ** 2 / sum(p ** 2 / (len(values) - 1)
                        for p, (_, values) in zip(parts, terms, strict=True))
    se = math.sqrt(var)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return Contrast(estimate, estimate - half, estimate + half, p)


def bn_verdict(diff: Contrast, alpha: float = ALPHA) -> str:
    """`wins` / `loses` (BN − no BN beyond the seed spread, p < alpha), `ties` (within it), or
    `no test` (a side with fewer than two ok seeds, or no spread on either side)."""
    if math.isnan(diff.p_value):
        return "no test"
    if diff.p_value >= alpha:
        return "ties"
    return "wins" if diff.estimate > 0 else "loses"


def verdict_rows(comparisons: dict[tuple, dict[str, list[Run]]]) -> list[dict]:
    """verdicts.csv: per comparison (dataset, optim and every other varying setting) the ok
    seeds, mean final validation accuracies and BN − no BN with its Welch p-value, 95 %
    interval, verdict (`bn_verdict`) and power (`power_of`), and each side's diverged runs. A
    side with no ok run leaves its mean empty."""
    rows = []
    for ckey, by_norm in comparisons.items():
        bn, none = (per_seed(by_norm.get(norm, []), None)["final_val_acc"]
                    for norm in ("bn", "none"))
        diff = contrast([(1.0, bn), (-1.0, none)])
        detectable, needed = power_of([(1.0, bn), (-1.0, none)])
        rows.append({**dict(ckey), "n_bn": len(bn), "n_none": len(none),
                     "bn_mean": mean_std(bn)[0], "none_mean": mean_std(none)[0],
                     "diff": diff.estimate, "p_value": diff.p_value,
                     "verdict": bn_verdict(diff),
                     "diff_ci_low": diff.ci_low, "diff_ci_high": diff.ci_high,
                     **{f"{norm}_diverged": sum(r.outcome == "diverged"
                                                for r in by_norm.get(norm, []))
                        for norm in ("bn", "none")},
                     "detectable_80": detectable, "seeds_needed": needed})
    return rows


# --- power (claims) -----------------------------------------------------------------------


def welch_power(delta: float, variances: list[float], sizes: list[int],
                alpha: float = ALPHA) -> float:
    """The probability that Welch's two-sided test at `alpha` of a contrast whose true value is
    `delta` rejects zero, the groups having these (weight² × sample) variances and sizes:
    the noncentral t with Welch–Satterthwaite's degrees of freedom."""
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
    """(the smallest |contrast| these seeds detect with `power`, the seeds a side — the same in
    every group — that would detect a contrast of the size observed with `power`; inf when more
    than `most`). NaN, NaN where the contrast has no test (a group with < 2 values, no spread)."""
    if any(len(values) < 2 for _, values in terms) or \
            all(np.ptp(values) == 0 for _, values in terms):
        return math.nan, math.nan
    variances = [w * w * float(np.var(values, ddof=1)) for w, values in terms]
    sizes = [len(values) for _, values in terms]
    se = math.sqrt(sum(v / n for v, n in zip(variances, sizes, strict=True)))
    high = se
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
