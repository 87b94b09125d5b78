"""`write_report`: the pipeline. The table of runs (`runs.load_runs`) → the summary, verdicts
and claims (`stats`, `verdicts`) → report.md, the CSV files, the figures as PNGs and the
TensorBoard events of `SWEEP_DIR/report/`."""

from __future__ import annotations

import functools
import io
import os
import re
import shlex
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

import bnstudy.report.sections as S
from bnstudy.jobdir import dir_override
from bnstudy.records import SEARCH_DIR, TUNING_FILE, read_tuning, study_dir
from bnstudy.report.answer import answer_section, decide_command
from bnstudy.report.budget import budget_section
from bnstudy.report.cost import CLOCK_FILE, pair_costs
from bnstudy.report.picture_section import pictures_section
from bnstudy.report.render import claim_rows, write_csv
from bnstudy.report.runs import (
    OUTCOMES,
    STUDY,
    ReportError,
    compared,
    group_keys,
    load_runs,
    never_started,
    norms_title,
    settings,
)
from bnstudy.report.stats import ALPHA, SWEEPS, summary, verdicts
from bnstudy.report.verdicts import tuned_runs

REPORT_DIR = "report"
FIGURE_DPI = 100


def report_markdown(sweep_dir: Path, runs: pd.DataFrame, summary_md: str, sections: list[str],
                    unstarted: list[str], answer: str = "", used: int | None = None) -> str:
    """The whole report.md: the header, the answer, the summary, the sections, the jobs left out
    (while a job trains, `running`, the unstarted ones are yet to start)."""
    live = "status" in runs and bool((runs["status"] == "running").any())  # `load_run`: locked
    counts = runs["outcome"].value_counts()
    jobs = ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)
    if unstarted:
        jobs += f", {len(unstarted)} " + ("not started yet" if live else "never started")
    return "\n".join([
        f"# {norms_title(set(runs.get('norm', pd.Series()).dropna()) or set(STUDY))} — report "
        f"of `{sweep_dir}`", "",
        f"{len(runs)} job directories: {jobs}. Statistics are over the ok runs"
        + ("" if used is None else f" of the {used} re-runs of the cells' kept settings (the "
           "other candidates' re-runs are in the search table and `tuning.json`)")
        + ", grouped by every hparam except the seed. ± is the sample standard deviation "
        "(ddof=1) across seeds; the curves show the mean over seeds with a band of ± one such "
        "standard deviation (the seed-to-seed spread, not the standard error of the mean). "
        "Epochs to target: the first epoch (counted from 1) whose validation accuracy reaches the "
        "target, averaged over the seeds that reach it. Verdicts compare " + (
            "final validation accuracy over seeds: a paired t-test over the seeds both norms ran "
            "(Welch's where the seeds do not pair), " if used is None else "test accuracy over "
            "seeds (each norm's setting was chosen on its validation accuracy): Welch's t-test, ")
        + f"p Holm-adjusted over the report's comparisons (p < {ALPHA}); *equivalent* only where "
        "two one-sided tests (TOST) put the difference within the dataset's "
        "`equivalence_margin`, else *cannot tell*.", "", *([answer] if answer else []),
        "## Summary", "", summary_md, "", "Also in `summary.csv`.", "",
        *sections, "## Jobs not in the statistics", "",
        S.problems_table(runs, unstarted, live), ""])


def figure_png(fig: Figure) -> bytes:
    """`fig` rendered once, as PNG bytes at `FIGURE_DPI`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def write_figures(figures: dict[str, Figure], markdown: str, out: Path,
                  scalars: dict[str, list[tuple[int, float]]] | None = None) -> None:
    """Each figure as `out/<name>.png` (a new folder) and, as that PNG's pixels, a TensorBoard
    image; the report text (images named, not embedded) and `scalars` (tag: points) too."""
    from torch.utils.tensorboard import SummaryWriter  # here, not at the top: imports torch

    with SummaryWriter(log_dir=str(out)) as writer:
        for name, fig in figures.items():
            png = figure_png(fig)
            (out / f"{name}.png").write_bytes(png)
            kind = next((k for k in SWEEPS if name.startswith(f"{k}_")), name.split("_")[0])
            with Image.open(io.BytesIO(png)) as image:
                writer.add_image(f"{kind}/{name[len(kind) + 1:]}", np.asarray(image),
                                 dataformats="HWC")
        for tag, points in (scalars or {}).items():
            for step, value in points:
                writer.add_scalar(tag, value, step)
        writer.add_text("report", re.sub(r"!\[([^\]]*)\]\(([^)]+)\.png\)",
                                         r"*(figure `\2`: see the Images tab)*", markdown))


def write_report(sweep_dir: Path, targets: dict[str, float], costs=None,
                 pairs: list[tuple[str, str]] | None = None, named: list[str] = ()) -> Path:
    """Writes `sweep_dir/report/`, returns report.md's path. `costs`: C5's clock (default
    `cost.pair_costs`); `named`: the datasets given targets (one absent is a ReportError)."""
    sweep_dir = Path(sweep_dir)
    resume = f"command with resume=true {dir_override('hydra.sweep.dir', sweep_dir)}"
    if (study := study_dir(sweep_dir)) != sweep_dir:
        what = "the searches' folder" if sweep_dir.name == SEARCH_DIR else "one cell's search"
        raise ReportError(f"{sweep_dir} is {what} in the tuned study {study}, so "
                          "nothing was written. Report the study, which covers every cell: "
                          f"python -m bnstudy.report {shlex.quote(str(study))}")
    if (sweep_dir / SEARCH_DIR).is_dir() and not (sweep_dir / TUNING_FILE).is_file():
        raise ReportError(f"{sweep_dir} holds a tuned study whose searches did not finish (no "
                          f"{TUNING_FILE} yet), so there is nothing to report. To finish them: "
                          f"its {resume}")
    try:
        read_tuning(sweep_dir)
    except ValueError as err:  # not JSON: cut short or edited by hand
        raise ReportError(f"{sweep_dir / TUNING_FILE} cannot be read ({err}), so nothing was "
                          f"written. The study's {resume} writes it again from its finished "
                          "trials and runs.") from None
    hidden = f".{REPORT_DIR}-{socket.gethostname()}-"  # + pid: the report being written
    final, out = sweep_dir / REPORT_DIR, sweep_dir / f"{hidden}{os.getpid()}"
    costs = costs or functools.partial(pair_costs, kept=out / CLOCK_FILE)
    everything = load_runs(sweep_dir)
    tuned = tuned_runs(sweep_dir, everything)[0]  # a tuned sweep: the kept settings' re-runs
    runs = tuned if len(tuned) else everything
    pairs = compared(runs, pairs)
    datasets = set(runs.get("dataset", pd.Series()).dropna())
    if absent := [d for d in named if d not in datasets]:  # `--target-acc mnst=0.9`
        raise ReportError(f"--target-acc {absent[0]}=...: the sweep has no dataset {absent[0]}, "
                          f"nothing was written. Its datasets: {', '.join(sorted(datasets))}.")
    for stale in sweep_dir.glob(f"{hidden}*"):  # left by a report killed outright
        if not _running(stale.name.removeprefix(hidden)):
            shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)  # this process id's, left by another process
    try:  # written whole, then swapped in: a Ctrl-C or an error leaves the earlier report
        out.mkdir()
    except OSError as err:
        raise ReportError(f"{sweep_dir} cannot be written ({err.strerror or err}), so nothing "
                          "was written. Copy the sweep to a folder you can write to and report "
                          "the copy.") from None
    for reused in [*final.glob(CLOCK_FILE), *final.glob("referee_*.pt")]:  # measured once
        shutil.copy2(reused, out / reused.name)
    try:
        _write(sweep_dir, out, runs, everything, tuned, pairs, targets, costs)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    old = sweep_dir / f"{hidden}{os.getpid()}-old"
    if final.is_dir():
        os.replace(final, old)
    os.replace(out, final)  # the old one removed after: a short window for a second report
    shutil.rmtree(old, ignore_errors=True)
    return final / "report.md"


def _running(pid: str) -> bool:
    """Whether a process of this machine with that id runs (a report writing its folder)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's
        return True
    return True


def _write(sweep_dir: Path, out: Path, runs: pd.DataFrame, everything: pd.DataFrame,
           tuned: pd.DataFrame, pairs, targets: dict[str, float], costs) -> None:
    """The report's files into `out`."""
    keys = group_keys(runs)
    table = summary(runs, keys, targets)
    write_csv(table, out / "summary.csv")
    verdict_table = verdicts(runs, pairs, tuned=bool(len(tuned)))
    claims, claim_table, results, figures = S.claims_section(runs, keys, sweep_dir, costs)
    budget = budget_section(sweep_dir, pairs, out)
    claim_table += budget.rows
    figures.update(budget.figures)
    picture_text, picture_figs, picture_results = pictures_section(runs, out)
    claim_table += [row for setting, parts in picture_results
                    for row in claim_rows(parts, setting)]
    for name, rows in (("claims", claim_table), ("verdicts", verdict_table)):
        if len(rows):
            write_csv(rows, out / f"{name}.csv")
    made = [(text, {}) for text in (claims, budget.text) if text]
    for hparam in [h for h in SWEEPS if h in keys]:
        made += [S.robustness_section(hparam, runs, keys), S.regime_section(hparam, verdict_table)]
    for ckey, by_norm in settings(runs):
        mine = verdict_table
        for k, v in ckey if len(mine) else ():
            mine = mine[mine[k].map(str) == str(v)]
        made.append(S.comparison(ckey, by_norm, mine))
    made += [(picture_text, picture_figs)] if picture_text else []  # labelled figures, P1–P3
    for _, figs in made:
        figures.update(figs)
    answer = answer_section(verdict_table, results, budget.small, decide_command(sweep_dir))
    markdown = report_markdown(sweep_dir, everything, S.summary_table(table, keys),
                               [text for text, _ in made],
                               never_started(sweep_dir, everything), answer, len(tuned) or None)
    (out / "report.md").write_text(markdown)
    write_figures(figures, markdown, out, budget.scalars)
    from bnstudy.dashboard import MEAN_DIR, refresh_mean_runs

    refresh_mean_runs(sweep_dir, root=out / MEAN_DIR)  # margin charts: mean ± std over seeds
