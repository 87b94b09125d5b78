"""report.md's sections and their figures: the summary, each comparison, the robustness and
regime sweeps, the claims (C5's clock, C6's search) and the jobs left out."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

import bnstudy.report.figures as F
from bnstudy.report.claims import CLAIMS
from bnstudy.report.cost import compute_to_reach, study_curves
from bnstudy.report.render import (
    claim_rows,
    claims_block,
    markdown,
    number,
    pct,
    plural,
    test_words,
    tuning_table,
)
from bnstudy.report.runs import (
    FIRST_KEYS,
    OUTCOMES,
    STUDY,
    contrast_words,
    curves,
    describe,
    groups,
    norm_label,
    norm_order,
    ok,
    pair_words,
    slug,
    suffix,
    where,
)
from bnstudy.report.stats import (
    ALPHA,
    POWER,
    SWEEPS,
    USABLE_WITHIN,
    VERDICT_COLUMNS,
    point_means,
    sweep_panels,
    usable_values,
)
from bnstudy.report.verdicts import MIN_SEEDS, claim_verdicts, decided, setting_results, tuned_runs


def verdict_text(row, loss: tuple[float, float]) -> str:
    """A comparison's verdict in sentences: final val acc and its test; first-epoch losses."""
    t, b = row["treatment"], row["baseline"]
    if not row["n_treatment"] or not row["n_baseline"]:
        side = norm_label(t if not row["n_treatment"] else b, (t, b))
        return f"No verdict: the {side} side has no finished (ok) run."
    other = "without it" if b == STUDY[1] else f"with {norm_label(b)}"
    d = row["diff"]  # a win or a loss only where the test says so; else ahead or behind
    result = row["verdict"] if row["verdict"] in ("wins", "loses") else \
        "ties" if row["verdict"] == "equivalent" or d == 0 else "ends ahead" if d > 0 else \
        "ends behind"
    n = (row["n_treatment"], row["n_baseline"])
    seeds = f"{plural(n[0], 'seed')} each" if n[0] == n[1] else f"{n[0]} vs {plural(n[1], 'seed')}"
    on = "test accuracy (Welch: its own tuned setting a side)" \
        if row["quantity"] == "test_acc" else "final validation accuracy"
    text = (f"{norm_label(t, (t, b))} {result} on {on}: {row['treatment_mean']:.2%} "
            f"vs {row['baseline_mean']:.2%} {other} ({100 * row['diff']:+.2f} percentage points, "
            f"mean over {seeds}). ")
    p, how = row["p_value"], test_words(row["test"], row["n_paired"], list(n))
    held = f"p = {number(p, '.2g')}, Holm-adjusted over the report's comparisons " \
        f"{number(row['p_holm'], '.2g')}"
    margin = f"±{100 * row['margin']:g} percentage points"
    if min(n) < 2:
        text += "With one seed on a side, no significance can be claimed. "
    elif math.isnan(p):
        text += "The seeds show no spread, so the t-test is undefined. "
    elif row["verdict"] in ("wins", "loses"):
        text += f"The difference is larger than the seed-to-seed spread ({how}: {held} < {ALPHA}). "
    elif row["verdict"] == "equivalent":
        text += (f"The two are equivalent within {margin} (TOST {how}: p = "
                 f"{row['p_tost']:.2g}, Holm-adjusted {row['p_tost_holm']:.2g} < {ALPHA}). ")
    else:
        text += (f"Cannot tell: the difference is within the seed-to-seed spread ({how}: {held} "
                 f"≥ {ALPHA}), not significant" + ("" if math.isnan(row["margin"]) else
                                                   f", nor shown within {margin} (TOST)") + ". ")
    start = "lower" if loss[0] < loss[1] else "higher" if loss[0] > loss[1] else "the same"
    base = f"without {norm_label(t)}" if b == STUDY[1] else f"with {norm_label(b)}"
    return text + (f"Its first-epoch training loss is {start} "
                   f"({loss[0]:.3f} vs {loss[1]:.3f} {base}).")


def comparison(ckey: tuple, by_norm: dict[str, pd.DataFrame],
               rows: pd.DataFrame) -> tuple[str, dict[str, Figure]]:
    """One comparison's section: a verdict per pair (`rows` of verdicts.csv), its curves, images
    and probe figures by file stem."""
    name, label = slug(ckey), describe(ckey)
    lines, figures = [f"## {label}", ""], {}
    both = [row for _, row in rows.iterrows()
            if row["treatment"] in by_norm and row["baseline"] in by_norm]
    for row in both:
        loss = [ok(by_norm[n])["first_epoch_train_loss"].mean(skipna=False)
                for n in (row["treatment"], row["baseline"])]
        lines += ["**Verdict.** " + verdict_text(row, loss), ""]
    if not both:
        lines += [f"**Verdict.** None: this sweep has only norm={', '.join(by_norm)} here.", ""]
    if any(len(ok(g)) for g in by_norm.values()):
        figures[f"curves_{name}"] = F.curves_figure(label, by_norm)
        lines += [f"![curves {label}](curves_{name}.png)", ""]
    else:
        lines += ["_Curves figure skipped: no job here finished ok._", ""]
    for kind, title in F.IMAGE_KINDS.items():
        found = {norm: F.first_image(by_norm[norm], kind) for norm in norm_order(by_norm)}
        missing = [norm_label(n, found) for n, hit in found.items() if hit is None]
        if missing:
            lines += [f"_{title} figure skipped: no ok job has images/{kind}_final.png "
                      f"on the {' and '.join(missing)} side._", ""]
            continue
        panels = [(f"{norm_label(n, found)} (seed {seed})", path)
                  for n, (seed, path) in found.items()]
        figures[f"{kind}_{name}"] = F.images_figure(f"{title} ({label})", panels)
        lines += [f"![{kind} {label}]({kind}_{name}.png)", ""]
    for kind, draw in F.PROBE_FIGURES.items():
        found = {norm: F.first_series(by_norm[norm], kind) for norm in norm_order(by_norm)}
        if not any(run is not None for run in found.values()):
            continue  # recorded only with callbacks=probes
        missing = [norm_label(n, found) for n, run in found.items() if run is None]
        if missing:
            lines += [f"_{kind.capitalize()} figure skipped: no ok job recorded `{kind}` on the "
                      f"{' and '.join(missing)} side._", ""]
            continue
        figures[f"{kind}_{name}"] = draw(label, found)
        lines += [f"![{kind} {label}]({kind}_{name}.png)", ""]
        if kind == "gradients":
            lines += [F.landscape_medians(found), ""]
    return "\n".join(lines), figures


# --- robustness sweeps (experiment=lr_sweep | batch_sweep) and the regime ----------------------


def value_range(noun: str, usable: list, grid: list) -> str:
    """`0.01 to 1 (5 of 11 values)`, the values listed when not adjacent, or `no <noun>`."""
    count = f"{len(usable)} of {len(grid)} values"
    if not usable:
        return f"no {noun} ({count})"
    if len(usable) == 1:
        return f"{usable[0]:g} only ({count})"
    first, last = grid.index(usable[0]), grid.index(usable[-1])
    if last - first + 1 == len(usable):
        return f"{usable[0]:g} to {usable[-1]:g} ({count})"
    return f"{', '.join(f'{v:g}' for v in usable)} ({count}, not adjacent in the grid)"


def robustness_text(hparam: str, label: str, by_norm: dict[str, dict]) -> str:
    """One panel's line: the best run, each norm's usable range, which is wider."""
    noun = SWEEPS[hparam][0]
    best, usable = usable_values(by_norm)
    if math.isnan(best):
        return f"**{label}**: no {noun} has all its runs finished ok, so none is usable."
    order, means = norm_order(by_norm), point_means(by_norm)
    at = next((norm, v) for norm in order for v, m in means[norm].items() if m == best)
    parts = []
    for norm in order:
        grid = sorted(by_norm[norm], key=float)
        text = f"{norm_label(norm, order)} {value_range(noun, usable[norm], grid)}"
        for outcome in OUTCOMES[1:]:
            hit = [f"{v:g}" for v in grid if (by_norm[norm][v]["outcome"] == outcome).any()]
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
        names = " and ".join(norm_label(n, order) for n in widest)
        degree = "wider" if len(order) == 2 else "widest"
        counts = " vs ".join(str(n) for n in sorted(sizes.values(), reverse=True))
        wider = (f" {names} {'has' if len(widest) == 1 else 'have'} the {degree} usable range "
                 f"({counts} values).")
    return (f"**{label}** (best {best:.2%}: {norm_label(at[0], order)} at {hparam}={at[1]:g}). "
            f"Usable {noun}: {'; '.join(parts)}.{wider}")


def robustness_section(hparam: str, runs: pd.DataFrame,
                       keys: list[str]) -> tuple[str, dict[str, Figure]]:
    """The section of a sweep over `hparam`, its figures `<hparam>_<dataset>`."""
    noun, title = SWEEPS[hparam]
    lines, figures = [f"## {title}", "",
                      f"Final validation accuracy against the {noun} (log axis): the mean over "
                      "seeds ± one sample standard deviation; × marks a diverged run. A "
                      f"{noun} is *usable* for a norm when every run there finished ok (none "
                      "diverged, failed or unfinished) and their mean final validation accuracy "
                      f"is at most {100 * USABLE_WITHIN:g} percentage points below the best such "
                      "mean in the same panel (same dataset and optimizer, either norm). The "
                      "wider usable range is the one with more usable grid values.", ""], {}
    for dataset, panels in sweep_panels(runs, keys, hparam).items():
        name = f"{hparam}_{dataset}"
        figures[name] = F.robustness_figure(hparam, dataset, panels)
        lines += [f"![{noun} {dataset}]({name}.png)", "",
                  *(f"- {robustness_text(hparam, f'{dataset}, {describe(panel)}', by_norm)}"
                    for panel, by_norm in panels.items()), ""]
    return "\n".join(lines), figures


def regime_section(hparam: str, verdicts: pd.DataFrame) -> tuple[str, dict[str, Figure]]:
    """The section on treatment − baseline across `hparam`, its figure `regime_<hparam>`."""
    noun = SWEEPS[hparam][0]
    question, difference = contrast_words(zip(verdicts["treatment"], verdicts["baseline"],
                                              strict=True))
    lines = [f"## {question} across the {noun}?", "",
             f"{difference} in final validation accuracy against the {noun}: the mean difference "
             "over ok seeds with its 95% interval (paired t over the seeds both sides ran, Welch "
             "where they do not pair); the verdict (in `verdicts.csv`) is *wins* or *loses* "
             f"where p, Holm-adjusted over the report's comparisons (one family), is < {ALPHA} "
             "(a filled dot), *equivalent* where TOST puts the difference within the dataset's "
             "margin, *cannot tell* otherwise, *no test* where a side has fewer than two ok "
             "seeds.", "",
             f"![{difference} vs {noun}](regime_{hparam}.png)", ""]
    setting = [k for k in verdicts.columns if k not in VERDICT_COLUMNS]
    several = len(verdicts[["treatment", "baseline"]].drop_duplicates()) > 1
    for _, row in verdicts[verdicts[hparam].notna()].iterrows():
        t, b = pair_words(row["treatment"], row["baseline"])
        if math.isnan(row["diff"]):
            numbers = (f"a side has no ok run: {t} {row['n_treatment']} ok, "
                       f"{row['treatment_diverged']} diverged; {b} "
                       f"{row['n_baseline']} ok, {row['baseline_diverged']} diverged")
        else:
            numbers = (f"{100 * row['diff']:+.2f} pts, {pct(row['treatment_mean'])} vs "
                       f"{pct(row['baseline_mean'])}")
        against = f" against {b}" if several else ""
        how = test_words(row["test"], row["n_paired"], [row["n_treatment"], row["n_baseline"]])
        lines.append(f"- {describe(tuple((k, row[k]) for k in setting))}: {t}"
                     f"{against} {row['verdict']} ({numbers}, p = "
                     f"{number(row['p_value'], '.2g')}, Holm {number(row['p_holm'], '.2g')}; "
                     f"{how})")
    lines.append("")
    return "\n".join(lines), {f"regime_{hparam}": F.regime_figure(hparam, verdicts)}


# --- the claims (C5's clock, C6's search) -----------------------------------------------------


def cost_table(runs: pd.DataFrame, measured: dict) -> str:
    """C5's clock per pair: step costs, the ratio charged and its rounds' spread, the runs' own
    epoch-time ratio, and the compute at which each side reaches no BN's full-compute accuracy."""
    table = curves(ok(runs)).merge(runs[["job", "dataset", "optim", "norm"]], on="job")
    table["epoch_s"] = table.groupby("job")["time_s"].diff().fillna(table["time_s"])
    rows = []
    for (dataset, optim), c in measured.items():
        mine = ok(runs[(runs["dataset"] == dataset) & (runs["optim"] == optim)])
        own = {n: table.loc[table["job"].isin(mine.loc[mine["norm"] == n, "job"]),
                            "epoch_s"].median() for n in STUDY}
        means = study_curves(mine, c.charged)
        target = means[STUDY[1]][1][-1] if len(means[STUDY[1]][1]) else math.nan
        reach = {n: compute_to_reach(*means[n][:2], target) for n in STUDY}
        reach = {n: "never" if math.isnan(x) else f"{x:.1f}" for n, x in reach.items()}
        ratio = own[STUDY[0]] / own[STUDY[1]] if own[STUDY[1]] else math.nan
        rows.append({"pair": where(dataset, optim), "step, BN": f"{1e6 * c.treatment_s:.0f} µs",
                     "step, no BN": f"{1e6 * c.baseline_s:.0f} µs",
                     "BN / no BN charged (fastest blocks; median round; rounds' range)":
                         f"**{c.charged:.2f}** ({c.ratio:.2f}; {c.ratio_median:.2f}; "
                         f"{c.ratio_min:.2f} to {c.ratio_max:.2f})",
                     "runs' own epoch ratio": number(ratio, ".2f"),
                     "BN reaches": reach[STUDY[0]], "no BN reaches": reach[STUDY[1]]})
    return ("C5's clock (`bnstudy.report.cost`): CPU seconds per training step measured paired "
            "in one process at one torch thread, the two norms alternating in blocks; each "
            "side's step is its fastest block (noise only adds time); a round's ratio pairs two "
            "adjacent blocks, and C5 charges BN the median round ratio's 95% upper bound (of "
            f"{next(iter(measured.values())).rounds} rounds: an order "
            "statistic, conservative, yet not moved by one freak block). A run's epoch e ends at "
            "e × its ratio no-BN epochs of compute; its value there is the best validation "
            "accuracy so far, linear between epoch ends. The runs' own epoch seconds "
            "(`time_s`, shared machine) are shown as a cross-check only. *Reaches*: the compute "
            "(no-BN epochs) at which the mean over seeds first reaches no BN's at its full "
            "compute.\n\n" + markdown(rows))


INTRO = (
    "Every claim part is declared once (`bnstudy/report/claims.py`) and decided by one rule: "
    f"fewer than {MIN_SEEDS} ok seeds in a group, and we **cannot tell**. Otherwise the "
    "contrast is tested **paired** where the design pairs (same-seed runs of its groups "
    "start from the same weights and see the same batches: a paired t over the seeds every "
    "group ran; C1–C5 and the pictures) and with **Welch**'s t where it does not (C6: each "
    "norm at its own tuned setting; or seeds that do not pair one to one); on test accuracy "
    "the test images' own sampling error is added where the runs saved per-image results. "
    "Each p is **Holm**-adjusted within the claim's family (curves C1–C4, cost C5, tuned C6–C7, "
    "pictures P1–P3), over the parts tested. A contrast **holds** when its estimate lies on "
    f"the claimed side of zero with adjusted p < {ALPHA}, **does not hold** when on the other "
    f"side with adjusted p < {ALPHA}; else it is **equivalent** when two one-sided tests "
    "(TOST, Holm-adjusted the same way) put it within the dataset's margin "
    "(`dataset.equivalence_margin`, accuracy only), and otherwise we **cannot tell**. A part "
    "every seed must meet holds when all do, does not hold when none does. A claim holds when "
    "all its parts hold; it does not hold when any part does not hold or is equivalent (a "
    "claimed difference found within the margin). Accuracies are in percentage points (pts). "
    f"*Detectable* is the smallest difference the seeds run find with {POWER:.0%} power, for "
    "the test used (paired: the differences' spread), at the family's strictest Holm level "
    f"({ALPHA} / the parts tested: a p below it decides whatever the others' p); *seeds a "
    "side to decide* is how many would find one of the size observed at that level. Also in "
    "`claims.csv` (with `test`, `p_holm`, `margin`, `p_tost`, `p_tost_holm`).")


def claims_section(runs: pd.DataFrame, keys: list[str], sweep_dir: Path,
                   costs: Callable[[pd.DataFrame], dict]) -> tuple[str, list[dict], list, dict]:
    """`## Claims`, claims.csv's rows, the one setting's results (for the answer) and figures
    `time_compute[_<setting>]`; ("", [], [], {}) when no claim applies."""
    tuned, tuning = tuned_runs(sweep_dir, runs)
    extra = [k for k in keys if k not in FIRST_KEYS]
    if len(tuned):
        found = {(("tuned", "each norm at its best"),): (decided("tuned", tuned), {}, tuned)}
    else:
        split = groups(runs, extra) if extra else [((), runs)]
        split = sorted(split, key=lambda item: [_sort_value(v) for _, v in item[0]])
        found = {setting: (*setting_results(members, costs), members)
                 for setting, members in split}
    found = {s: v for s, v in found.items() if v[0]}
    if not found:
        return "", [], [], {}
    names = list(dict.fromkeys(r.claim for res, _, _ in found.values() for r in res))
    lines = ["## Claims", "", INTRO, "", *[f"- **{c}**: {CLAIMS[c]}" for c in names
                                             if c in CLAIMS], ""]
    if len(found) > 1:
        lines += [markdown([{"setting": describe(s), **{c: claim_verdicts(res).get(c, "—")
                                                        for c in names}}
                            for s, (res, _, _) in found.items()]), ""]
    rows, figures = [], {}
    for setting, (results, measured, members) in found.items():
        if len(found) > 1 or len(tuned):
            lines += [f"### {describe(setting)}", ""]
        lines += claims_block(results)
        if measured:
            name = f"time_compute{suffix(setting)}"
            figures[name] = F.time_figure(members, measured)
            lines += [f"![accuracy against compute]({name}.png)", "",
                      cost_table(members, measured), ""]
        if len(tuned):
            lines += [tuning_table(tuning), ""]
        rows += claim_rows(results, dict(setting))
    first = next(iter(found.values()))[0] if len(found) == 1 else []
    return "\n".join(lines), rows, first, figures


def _sort_value(value) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


# --- summary and the jobs left out --------------------------------------------------------------


def summary_table(summary: pd.DataFrame, keys: list[str]) -> str:
    """The summary as a Markdown table (accuracies in %, ± the std across seeds)."""
    rows = [{**{k: str(row[k]) for k in keys}, "ok seeds": row["n_seeds"],
             "final val acc": pct(row["final_val_acc_mean"], row["final_val_acc_std"]),
             "best val acc": pct(row["best_val_acc_mean"], row["best_val_acc_std"]),
             "final val loss": number(row["final_val_loss_mean"], ".3f"),
             "test acc": pct(row["test_acc_mean"], row["test_acc_std"]),
             "1st-epoch train loss": number(row["first_epoch_train_loss_mean"], ".3f"),
             "epochs to target (reached)": f"{number(row['epochs_to_target_mean'], '.1f')} "
             f"({row['n_reached_target']}/{row['n_seeds']} ≥ "
             f"{number(row['target_val_acc'], '.2f')})",
             "wall time (s)": number(row["wall_time_s_mean"], ".1f"),
             **{o: row[f"n_{o}"] for o in (*OUTCOMES[1:], "missing")}}
            for _, row in summary.iterrows()]
    return markdown(rows)


def problems_table(runs: pd.DataFrame, unstarted: list[str], live: bool = False) -> str:
    """The jobs left out, with status and error's first line (`live`: the sweep still runs)."""
    rows = [{"job": f"`{r.job}`", "status": r.status,
             "error": (r.error or "").strip().split("\n")[0].replace("|", "\\|")}
            for r in runs[runs["outcome"] != "ok"].itertuples()]
    unstarted_status = ("not started yet (the sweep is running)" if live
                        else "never started (no job directory)")
    rows += [{"job": job, "status": unstarted_status, "error": ""} for job in unstarted]
    return markdown(rows) if rows else "Every job finished ok."
