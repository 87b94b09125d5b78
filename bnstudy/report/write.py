"""The report's sections, and writing them: summary.csv, report.md, the figures as PNGs and
TensorBoard events."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from bnstudy.report.answer import answer_section
from bnstudy.report.claims import claims_section, csv_rows
from bnstudy.report.figures import (
    IMAGE_KINDS,
    PROBE_FIGURES,
    curves_figure,
    first_image,
    first_series,
    images_figure,
    mean_curve,
    regime_figure,
    robustness_figure,
)
from bnstudy.report.picture_section import pictures_section
from bnstudy.report.runs import (
    OUTCOMES,
    Run,
    comparisons,
    describe,
    group_keys,
    group_runs,
    load_runs,
    never_started,
    norm_label,
    norm_order,
    slug,
)
from bnstudy.report.stats import (
    ALPHA,
    SWEEPS,
    USABLE_WITHIN,
    VERDICT_COLUMNS,
    landscape_medians,
    per_seed,
    robustness_text,
    summarise,
    sweep_panels,
    verdict,
    verdict_rows,
)

REPORT_DIR = "report"


# --- sections -----------------------------------------------------------------------------


def comparison(ckey: tuple, by_norm: dict[str, list[Run]],
               target: float | None) -> tuple[str, dict[str, Figure]]:
    """One dataset × optim comparison: its report.md section and its figures by file stem."""
    name, label = slug(ckey), describe(ckey)
    lines, figures = [f"## {label}", ""], {}
    if {"bn", "none"} <= set(by_norm):
        bn, none = per_seed(by_norm["bn"], target), per_seed(by_norm["none"], target)
        lines += ["**Verdict.** " + verdict(bn["final_val_acc"], none["final_val_acc"],
                                             bn["first_epoch_train_loss"],
                                             none["first_epoch_train_loss"]), ""]
    else:
        lines += [f"**Verdict.** None: this sweep has only norm={', '.join(by_norm)} here.", ""]
    if any(r.outcome == "ok" and r.history for runs in by_norm.values() for r in runs):
        figures[f"curves_{name}"] = curves_figure(label, by_norm)
        lines += [f"![curves {label}](curves_{name}.png)", ""]
    else:
        lines += ["_Curves figure skipped: no job here finished ok._", ""]
    for kind, title in IMAGE_KINDS.items():
        found = {norm: first_image(by_norm[norm], kind) for norm in norm_order(by_norm)}
        missing = [norm_label(n) for n, hit in found.items() if hit is None]
        if missing:
            lines += [f"_{title} figure skipped: no ok job has images/{kind}_final.png "
                      f"on the {' and '.join(missing)} side._", ""]
            continue
        panels = [(f"{norm_label(n)} (seed {run.hparams.get('seed')})", path)
                  for n, (run, path) in found.items()]
        figures[f"{kind}_{name}"] = images_figure(f"{title} ({label})", panels)
        lines += [f"![{kind} {label}]({kind}_{name}.png)", ""]
    for kind, draw in PROBE_FIGURES.items():
        found = {norm: first_series(by_norm[norm], kind) for norm in norm_order(by_norm)}
        if not any(found.values()):
            continue  # recorded only with callbacks=probes
        missing = [norm_label(n) for n, run in found.items() if run is None]
        if missing:
            lines += [f"_{kind.capitalize()} figure skipped: no ok job recorded `{kind}` on the "
                      f"{' and '.join(missing)} side._", ""]
            continue
        figures[f"{kind}_{name}"] = draw(label, found)
        lines += [f"![{kind} {label}]({kind}_{name}.png)", ""]
        if kind == "gradients":
            lines += [landscape_medians(found), ""]
    return "\n".join(lines), figures


def robustness_section(hparam: str, groups: dict[tuple, list[Run]],
                       within: float = USABLE_WITHIN) -> tuple[str, dict[str, Figure]]:
    """The report.md section of a sweep over `hparam` and its figures `<hparam>_<dataset>`."""
    noun, title = SWEEPS[hparam]
    lines, figures = [f"## {title}", "",
                      f"Final validation accuracy against the {noun} (log axis): the mean over "
                      "seeds ± one sample standard deviation; × marks a diverged run. A "
                      f"{noun} is *usable* for a norm when every run there finished ok (none "
                      "diverged, failed or unfinished) and their mean final validation accuracy "
                      f"is at most {100 * within:g} percentage points below the best such mean "
                      "in the same panel (same dataset and optimizer, either norm). The wider "
                      "usable range is the one with more usable grid values.", ""], {}
    for dataset, panels in sweep_panels(groups, hparam).items():
        name = f"{hparam}_{dataset}"
        figures[name] = robustness_figure(hparam, dataset, panels, within)
        lines += [f"![{noun} {dataset}]({name}.png)", ""]
        lines += [f"- {robustness_text(hparam, f'{dataset}, {describe(panel)}', by_norm, within)}"
                  for panel, by_norm in panels.items()]
        lines.append("")
    return "\n".join(lines), figures


def regime_section(hparam: str, verdicts: list[dict]) -> tuple[str, dict[str, Figure]]:
    """The report.md section on BN − no BN across `hparam` (verdicts.csv) and its figure
    `regime_<hparam>`."""
    noun = SWEEPS[hparam][0]
    lines = [f"## Is BatchNorm worth it across the {noun}?", "",
             f"BN − no BN in final validation accuracy against the {noun}: the difference of the "
             "means over ok seeds with its 95% Welch interval; the verdict (in `verdicts.csv`) is "
             f"*wins* or *loses* where Welch's p < {ALPHA}, *ties* where the difference is within "
             "the seed spread, *no test* where a side has fewer than two ok seeds.", "",
             f"![BN − no BN vs {noun}](regime_{hparam}.png)", ""]
    for row in verdicts:
        if row.get(hparam) is None:
            continue
        label = describe(tuple((k, v) for k, v in row.items() if k in group_key_names(row)))
        lines.append(f"- {label}: BN {row['verdict']} ({_signed_pts(row)}, "
                     f"p = {_float(row['p_value'], '.2g')}; {row['n_bn']} vs {row['n_none']} "
                     "ok seeds)")
    lines.append("")
    return "\n".join(lines), {f"regime_{hparam}": regime_figure(hparam, verdicts, ALPHA)}


def group_key_names(row: dict) -> list[str]:
    """A verdicts.csv row's setting columns (dataset, optim, then the varying ones)."""
    return [k for k in row if k not in VERDICT_COLUMNS]


def _signed_pts(row: dict) -> str:
    if math.isnan(row["diff"]):
        return (f"a side has no ok run: BN {row['n_bn']} ok, {row['bn_diverged']} diverged; "
                f"no BN {row['n_none']} ok, {row['none_diverged']} diverged")
    return (f"{100 * row['diff']:+.2f} pts, {_pct(row['bn_mean'])} vs {_pct(row['none_mean'])}")


# --- summary.csv and report.md ------------------------------------------------------------


def csv_value(value):
    """NaN as an empty cell, floats to 6 decimals."""
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return value


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows({k: csv_value(v) for k, v in row.items()} for row in rows)


def _pct(mean: float, std: float = math.nan) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2%}" if math.isnan(std) else f"{mean:.2%} ± {100 * std:.2f}"


def _float(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else format(value, fmt)


def markdown_table(rows: list[dict], keys: list[str]) -> str:
    """The summary as a markdown table (accuracies in %, ± the std across seeds)."""
    head = [*keys, "ok seeds", "final val acc", "best val acc", "final val loss", "test acc",
            "1st-epoch train loss", "epochs to target (reached)", "wall time (s)",
            "diverged", "failed", "unfinished", "missing"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        to_target = (f"{_float(row['epochs_to_target_mean'], '.1f')} "
                     f"({row['n_reached_target']}/{row['n_seeds']} ≥ "
                     f"{_float(row['target_val_acc'], '.2f')})")
        cells = [*(str(row[k]) for k in keys), str(row["n_seeds"]),
                 _pct(row["final_val_acc_mean"], row["final_val_acc_std"]),
                 _pct(row["best_val_acc_mean"], row["best_val_acc_std"]),
                 _float(row["final_val_loss_mean"], ".3f"),
                 _pct(row["test_acc_mean"], row["test_acc_std"]),
                 _float(row["first_epoch_train_loss_mean"], ".3f"), to_target,
                 _float(row["wall_time_s_mean"], ".1f"),
                 *(str(row[f"n_{c}"]) for c in (*OUTCOMES[1:], "missing"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problems_markdown(runs: list[Run], unstarted: list[str]) -> str:
    """The jobs left out of the statistics, each with its status and error's first line."""
    lines = [f"| `{r.job}` | {r.status} | {_first_line(r.error)} |"
             for r in runs if r.outcome != "ok"]
    lines += [f"| {job} | never started (no job directory) | |" for job in unstarted]
    if not lines:
        return "Every job finished ok."
    return "\n".join(["| job | status | error |", "| --- | --- | --- |", *lines])


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0].replace("|", "\\|")


def report_markdown(sweep_dir: Path, runs: list[Run], rows: list[dict], keys: list[str],
                    sections: list[str], unstarted: list[str], answer: str = "") -> str:
    """The whole report.md: the header, the answer (`answer_section`), the summary, the
    sections, and the jobs left out."""
    counts = {o: sum(r.outcome == o for r in runs) for o in OUTCOMES}
    jobs = ", ".join(f"{n} {o}" for o, n in counts.items())
    if unstarted:
        jobs += f", {len(unstarted)} never started"
    return "\n".join([
        f"# BatchNorm vs No BatchNorm — report of `{sweep_dir}`", "",
        f"{len(runs)} job directories: {jobs}. Statistics are over the ok runs, grouped by every "
        "hparam except the seed. ± is the sample standard deviation (ddof=1) across seeds; "
        "the curves show the mean over seeds with a band of ± one such standard deviation "
        "(the seed-to-seed spread, not the standard error of the mean). Epochs to target: the "
        "first epoch (counted from 1) whose validation accuracy reaches the target, averaged "
        "over the seeds that reach it. Verdicts compare final validation accuracy with Welch's "
        f"t-test over seeds (p < {ALPHA}).", "", *([answer] if answer else []),
        "## Summary", "", markdown_table(rows, keys), "", "Also in `summary.csv`.", "",
        *sections, "## Jobs not in the statistics", "", problems_markdown(runs, unstarted), "",
    ])


# --- write --------------------------------------------------------------------------------


FIGURE_DPI = 100


def figure_png(fig: Figure) -> bytes:
    """`fig` rendered once, as PNG bytes at `FIGURE_DPI`; the figure is closed."""
    import matplotlib.pyplot as plt  # here: `bnstudy.report.figures` picks the Agg backend

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def png_pixels(png: bytes) -> np.ndarray:
    """A PNG's pixels as PIL decodes them: (H, W, C) uint8 (RGBA for matplotlib's)."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image)


def write_figures(figures: dict[str, Figure], markdown: str, out: Path,
                  curves: dict | None = None) -> None:
    """Each figure as `<name>.png`; them, the report text (its images named, not embedded:
    TensorBoard cannot serve the files) and the margin charts of `curves` (see
    `bnstudy.dashboard.write_margin_charts`) as TensorBoard events in `out` (an earlier
    report's figures and events go first, so none is left stale or shown twice). Each figure
    is drawn once (`figure_png`): the file holds those PNG bytes and TensorBoard their
    decoded pixels, so the two are the same picture; the figures are closed."""
    from torch.utils.tensorboard import SummaryWriter  # here, not at the top: imports torch

    stale = ("events.out.tfevents.*", "curves_*.png", "regime_*.png", "time_*.png",
             *(f"{k}_*.png" for k in (*IMAGE_KINDS, *PROBE_FIGURES, *SWEEPS)))
    for pattern in stale:
        for old in out.glob(pattern):
            old.unlink()
    with SummaryWriter(log_dir=str(out)) as writer:
        for name, fig in figures.items():
            png = figure_png(fig)
            (out / f"{name}.png").write_bytes(png)
            kind = next((k for k in SWEEPS if name.startswith(f"{k}_")), name.split("_")[0])
            writer.add_image(f"{kind}/{name[len(kind) + 1:]}", png_pixels(png),
                             dataformats="HWC")
        writer.add_text("report", re.sub(r"!\[([^\]]*)\]\(([^)]+)\.png\)",
                                         r"*(figure `\2`: see the Images tab)*", markdown))
        if curves:
            from bnstudy.dashboard import write_margin_charts

            write_margin_charts(writer, curves)


def write_report(sweep_dir: Path, targets: dict[str, float], costs=None) -> Path:
    """Loads, groups, summarises and writes `sweep_dir/report/`; returns report.md's path.
    `costs` measures C5's step costs (default: `bnstudy.report.cost.pair_costs`)."""
    runs = load_runs(sweep_dir)
    out = sweep_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    groups = group_runs(runs)
    seeds = {r.hparams.get("seed") for r in runs}

    def target(key: tuple) -> float | None:
        dataset = dict(key)["dataset"]
        return targets.get(dataset, targets.get("*"))

    rows = [summarise(key, group, seeds, target(key)) for key, group in groups.items()]
    write_csv(rows, out / "summary.csv")
    sections = []
    claims, claim_rows, results, figures = claims_section(comparisons(groups), sweep_dir,
                                                          runs, costs)
    verdicts = verdict_rows(comparisons(groups))
    (out / "pictures.csv").unlink(missing_ok=True)
    picture_text, picture_figs, picture_results = pictures_section(runs, out)  # pictures.csv
    claim_rows += [row for setting, parts in picture_results
                   for row in csv_rows(parts, setting)]
    for name, table in (("claims", claim_rows), ("verdicts", verdicts)):
        (out / f"{name}.csv").unlink(missing_ok=True)
        if table:
            write_csv(table, out / f"{name}.csv")
    if claims:
        sections.append(claims)
    for hparam in [h for h in SWEEPS if h in group_keys(runs)]:
        section, figs = robustness_section(hparam, groups)
        sections.append(section)
        figures.update(figs)
        section, figs = regime_section(hparam, verdicts)
        sections.append(section)
        figures.update(figs)
    for ckey, by_norm in comparisons(groups).items():
        section, figs = comparison(ckey, by_norm, target(ckey))
        sections.append(section)
        figures.update(figs)
    if picture_text:  # labelled figures, P1–P3
        sections.append(picture_text)
        figures.update(picture_figs)
    markdown = report_markdown(sweep_dir, runs, rows, group_keys(runs), sections,
                               never_started(sweep_dir), answer_section(verdicts, results))
    (out / "report.md").write_text(markdown)
    write_figures(figures, markdown, out, margin_curves(comparisons(groups)))
    return out / "report.md"


def margin_curves(compared: dict[tuple, dict[str, list[Run]]]) -> dict[str, dict[str, dict]]:
    """Per dataset-optim pair (other varying settings appended), per norm, per compared
    metric: (epochs, mean, std) over the ok seeds, for TensorBoard's margin charts."""
    from bnstudy.dashboard import COMPARED, pair_name

    curves: dict[str, dict[str, dict]] = {}
    for ckey, by_norm in compared.items():
        values = dict(ckey)
        pair = "-".join([pair_name(values["dataset"], values["optim"]),
                         *(f"{k}{v}" for k, v in ckey if k not in ("dataset", "optim"))])
        ok = {norm: [r for r in runs if r.outcome == "ok"] for norm, runs in by_norm.items()}
        curves[pair] = {norm: {m: mean_curve(runs, m) for m in COMPARED}
                        for norm, runs in ok.items() if runs}
    return curves
