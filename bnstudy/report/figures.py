"""Every figure of the report as a matplotlib Figure: curves, saved images, probe series, the
sweeps' accuracy and verdict against the swept hparam, accuracy against compute."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import imread
from matplotlib.ticker import MaxNLocator, NullLocator

from bnstudy.norms import NORMS
from bnstudy.report.claims import BUDGETS
from bnstudy.report.cost import full_compute, study_curves
from bnstudy.report.render import plural
from bnstudy.report.runs import (
    STUDY,
    contrast_words,
    curves,
    describe,
    norm_label,
    norm_order,
    norms_title,
    num,
    ok,
    pair_words,
    where,
)
from bnstudy.report.stats import (
    ALPHA,
    SWEEPS,
    USABLE_WITHIN,
    VERDICT_COLUMNS,
    mean_std,
    usable_values,
    values,
)

CURVE_PANELS = (("train/loss", "Training loss"), ("val/loss", "Validation loss"),
                ("train/acc", "Training accuracy"), ("val/acc", "Validation accuracy"))
IMAGE_KINDS = {"weights": "Final first-layer weights", "hallucinations": "Final hallucinations"}
MAX_COLUMNS = 3  # panels a row: more datasets (or optimizers) start another row


def norm_color(norm: str) -> str | None:
    """The registry's colour for `norm`; None (matplotlib's next colour) for an unknown one."""
    return NORMS[norm].color if norm in NORMS else None


def _seed_label(norm: str, run: pd.Series, among) -> str:
    return f"{norm_label(norm, among)} (seed {run.get('seed')})"


def panel_grid(n: int, width: float, height: float, columns: int = MAX_COLUMNS, extra: float = 0,
               **subplots) -> tuple[Figure, list[Axes]]:
    """A figure of `n` panels of `width` × `height` inches (plus `extra`), at most `columns` a
    row, the unused cells hidden; the figure and its `n` panels, row by row."""
    cols = max(1, min(n, columns))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + extra))
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def finished(fig: Figure, title: str) -> Figure:
    """`fig` laid out under the suptitle `title`, its lines wrapped to the figure's width."""
    points = FontProperties(size=rcParams["figure.titlesize"]).get_size_in_points()
    chars = max(24, int(fig.get_figwidth() * 72 / (0.55 * points)))  # about 0.55 em a character
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in title.splitlines()))
    fig.tight_layout()
    return fig


def mean_curve(runs: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs (counted from 1), and per epoch the mean and sample std of `metric` over runs."""
    moments = [(e + 1, *mean_std(g[metric])) for e, g in curves(runs).groupby("epoch")]
    return tuple(np.array(c, dtype=float) for c in zip(*moments, strict=True)) if moments \
        else (np.array([]),) * 3


def curves_figure(label: str, by_norm: dict[str, pd.DataFrame]) -> Figure:
    """2 × 2 panels (train/val × loss/accuracy): mean over seeds ± one std band, per norm."""
    fig, axes = panel_grid(4, 5.5, 3.75, columns=2, sharex=True)
    for ax, (metric, title) in zip(axes, CURVE_PANELS, strict=True):
        for norm in norm_order(by_norm):
            runs = ok(by_norm[norm])
            if runs.empty:
                continue
            epochs, mean, std = mean_curve(runs, metric)
            color = norm_color(norm)
            ax.plot(epochs, mean, marker="o", ms=3, color=color,
                    label=f"{norm_label(norm, by_norm)} ({plural(len(runs), 'seed')})")
            if len(runs) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
    axes[0].legend()
    return finished(fig, f"{norms_title(by_norm)} — Training Curves ({label})\n"
                         "mean over seeds, band ± 1 std across seeds")


def first_image(runs: pd.DataFrame, kind: str) -> tuple[object, Path] | None:
    """(seed, path) of the first ok run's `images/<kind>_final.png`; None if none has one."""
    for run in runs[runs["outcome"] == "ok"].itertuples():
        path = Path(run.path) / "images" / f"{kind}_final.png"
        if path.is_file():
            return getattr(run, "seed", None), path
    return None


def images_figure(title: str, panels: list[tuple[str, Path]]) -> Figure:
    """The PNGs side by side, each under its title; the figure takes the first one's aspect."""
    images = [imread(path) for _, path in panels]
    height, width = images[0].shape[:2]
    fig, axes = panel_grid(len(panels), 5.5, 5.5 * height / width + 0.9)
    for ax, (panel_title, _), image in zip(axes, panels, images, strict=True):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        ax.set_title(panel_title)
        ax.axis("off")
    return finished(fig, title)


def first_series(runs: pd.DataFrame, key: str) -> pd.Series | None:
    """The first seed's ok run that recorded the probe series `key`; None if none did."""
    found = runs[(runs["outcome"] == "ok") & runs["probes"].map(lambda p: key in p)]
    return None if found.empty else found.iloc[0]


def activations_figure(label: str, found: dict[str, pd.Series]) -> Figure:
    """A unit per row, a norm per column: its pre-activation percentiles vs training step."""
    series = {norm: run["probes"]["activations"] for norm, run in found.items()}
    rows = max(len(data["units"]) for data in series.values())
    fig = Figure(figsize=(5.5 * len(series), 2.4 * rows + 1.2))
    axes = fig.subplots(rows, len(series), squeeze=False, sharex=True, sharey="row")
    for col, (norm, data) in enumerate(series.items()):
        values = np.array(data["values"], dtype=float).reshape(
            len(data["steps"]), len(data["units"]), len(data["percentiles"]))
        median = int(np.argmin([abs(p - 50) for p in data["percentiles"]]))
        for row, unit in enumerate(data["units"]):
            ax = axes[row, col]
            for k, percentile in enumerate(data["percentiles"]):
                ax.plot(data["steps"], values[:, row, k], color=norm_color(norm),
                        lw=1.8 if k == median else 1, ls="-" if k == median else "--",
                        label=f"{percentile:g}th percentile")
            ax.set_title(f"{_seed_label(norm, found[norm], found)}: unit {unit}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=8)
        axes[-1, col].set_xlabel("training step")
    layer = next(iter(series.values()))
    return finished(fig, f"Pre-activation percentiles at ReLU `{layer['module']}` ({label})\n"
                         "each unit's values over the training batch, in training mode")


def gradients_figure(label: str, found: dict[str, pd.Series]) -> Figure:
    """Gradient norms per layer; along the gradient the loss and gradient change (band: the
    step sizes η) and the β-smoothness; vs training step, norms overlaid."""
    fig, axes = panel_grid(4, 5.5, 3.75, columns=2, sharex=True)
    styles = ("-", "--", ":", "-.")
    for norm, run in found.items():
        data, color = run["probes"]["gradients"], norm_color(norm)
        for i, (layer, norms) in enumerate(data["norms"].items()):
            axes[0].plot(data["steps"], norms, color=color,
                         ls=styles[i % len(styles)], label=f"{norm_label(norm, found)}: {layer}")
        land = data["landscape"]
        for ax, key in ((axes[1], "loss"), (axes[2], "grad_change")):
            values = np.array(land[key], dtype=float).reshape(len(land["steps"]), -1)
            ax.fill_between(land["steps"], values.min(1), values.max(1), color=color, alpha=0.3,
                            lw=0, label=_seed_label(norm, run, found))
        axes[3].plot(land["steps"], np.array(land["beta_smoothness"], dtype=float),
                     color=color, marker="o", ms=3, label=_seed_label(norm, run, found))
    etas = next(iter(found.values()))["probes"]["gradients"]["landscape"]["etas"]
    span = f"η from {min(etas):g} to {max(etas):g}"
    titles = ("Gradient norm per layer", f"Loss landscape: L(θ − ηg), {span}",
              f"Gradient predictiveness: ‖∇L(θ − ηg) − ∇L(θ)‖, {span}",
              "β-smoothness: max over η of ‖Δ∇L‖ / ‖ηg‖")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    for ax in axes[2:]:
        ax.set_xlabel("training step")
    return finished(fig, f"Gradient behaviour along training ({label})")


PROBE_FIGURES = {"activations": activations_figure, "gradients": gradients_figure}


def landscape_medians(found: dict[str, pd.Series]) -> str:
    """The report.md line under the gradients figure: each side's median landscape numbers."""
    parts = []
    for norm, run in found.items():
        land = run["probes"]["gradients"]["landscape"]
        medians = [float(np.nanmedian(np.array(land[key], dtype=float)))
                   for key in ("loss_range", "grad_change_max", "beta_smoothness")]
        parts.append(f"{norm_label(norm, found)} " + ", ".join(f"{m:.3g}" for m in medians))
    return ("Median over the measured steps of the loss range, the largest gradient change "
            "and the β-smoothness: " + "; ".join(parts) + ".")


# --- robustness sweeps (experiment=lr_sweep | batch_sweep) ---------------------------------


def log_axis(ax: Axes, hparam: str, grid: list[float], title: str) -> None:
    """`hparam`'s log axis (base 2 for batch sizes), a tick per grid value; title, grid."""
    ax.set_xscale("log", base=2 if hparam == "batch_size" else 10)
    ax.set_xticks(grid, [f"{v:g}" for v in grid], rotation=45 if len(grid) > 6 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_title(title)
    ax.set_xlabel(SWEEPS[hparam][0])
    ax.grid(alpha=0.3)


def robustness_figure(hparam: str, dataset: str, panels: dict[tuple, dict]) -> Figure:
    """A panel per optimizer: final val acc vs `hparam` (log), mean ± std a line per norm; × at
    0: a diverged run; failed/unfinished counted in the corner; dotted: the usable floor."""
    noun, title = SWEEPS[hparam]
    fig, axes = panel_grid(len(panels), 5.5, 4.8, sharey=True)
    epochs = {e for p in panels.values() for by_value in p.values()
              for runs in by_value.values() for e in runs.get("max_epochs", [None])}
    for ax, (panel, by_norm) in zip(axes, panels.items(), strict=True):
        order, notes = norm_order(by_norm), []
        grid = sorted({v for by_value in by_norm.values() for v in by_value}, key=float)
        for i, norm in enumerate(order):
            by_value, color = by_norm[norm], norm_color(norm)
            grid_values = sorted(by_value, key=float)
            moments = np.array([mean_std(values(by_value[v]))
                                for v in grid_values]).reshape(-1, 2)
            ax.errorbar(grid_values, moments[:, 0], yerr=np.nan_to_num(moments[:, 1]),
                        color=color, marker="o", ms=4, capsize=3, label=norm_label(norm, order))
            diverged = [float(v) for v in grid_values
                        for o in by_value[v]["outcome"] if o == "diverged"]
            if diverged:  # side by side when both norms diverge at one value
                shift = 1.06 ** (i - (len(order) - 1) / 2)
                ax.plot(np.array(diverged) * shift, np.zeros(len(diverged)), ls="none",
                        marker="x", ms=9, mew=2, color=color, clip_on=False,
                        label=f"{norm_label(norm, order)}: diverged ({len(diverged)})")
            found = pd.concat(by_value.values())["outcome"].value_counts()
            if left_out := [f"{found[o]} {o}" for o in ("failed", "unfinished") if o in found]:
                notes.append(f"{norm_label(norm, order)}: {', '.join(left_out)} (not drawn)")
        best = usable_values(by_norm)[0]
        if not math.isnan(best):
            ax.axhline(best - USABLE_WITHIN, color="grey", ls=":", lw=1,
                       label=f"usable: ≥ best − {100 * USABLE_WITHIN:g} points")
        if notes:
            ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=8)
        log_axis(ax, hparam, [float(v) for v in grid], describe(panel) if panel else dataset)
        ax.set_ylim(-0.04, 1.02)
        ax.legend(fontsize=8)
    for ax in axes[::MAX_COLUMNS]:
        ax.set_ylabel("final validation accuracy")
    after = f" after {epochs.pop()} epoch(s)" if len(epochs) == 1 else ""
    return finished(fig, f"{title} ({dataset}): final validation accuracy{after} vs {noun}\n"
                         "mean over seeds ± 1 std across seeds; × a diverged run (drawn at 0)")


# --- the verdict across a swept hparam (verdicts.csv) --------------------------------------


def regime_figure(hparam: str, verdicts: pd.DataFrame) -> Figure:
    """A panel per dataset: treatment − baseline (verdicts.csv) vs `hparam` (log), a line per
    optimizer and setting with its 95% interval; filled where Holm p < `ALPHA`."""
    noun = SWEEPS[hparam][0]
    rows = verdicts.to_dict("records")
    pairs = {(r["treatment"], r["baseline"]): None for r in rows}
    several, (question, difference) = len(pairs) > 1, contrast_words(pairs)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    fig, axes = panel_grid(len(datasets), 5.8, 4.8)
    for ax, dataset in zip(axes, datasets, strict=True):
        lines: dict[tuple, list[dict]] = {}
        for row in rows:
            if row["dataset"] == dataset and row.get(hparam) is not None:
                rest = tuple((k, v) for k, v in row.items() if k not in (
                    "dataset", hparam, *VERDICT_COLUMNS))
                if several:
                    rest += (("compared", f"{row['treatment']}-{row['baseline']}"),)
                lines.setdefault(rest, []).append(row)
        notes, grid = [], set()
        for i, (rest, points) in enumerate(lines.items()):
            points = sorted(points, key=lambda r: float(r[hparam]))
            grid |= {float(r[hparam]) for r in points}
            x = np.array([float(r[hparam]) for r in points])
            y, low, high = (100 * np.array([num(r[key]) for r in points])
                            for key in ("diff", "diff_ci_low", "diff_ci_high"))
            color = f"C{i}"
            ax.errorbar(x, y, yerr=np.nan_to_num(np.vstack([y - low, high - y])), color=color,
                        marker="none", capsize=3, label=describe(rest))
            significant = np.array([num(r.get("p_holm", r["p_value"])) < ALPHA
                                    for r in points])
            for mask, face in ((significant, None), (~significant, "white")):
                ax.plot(x[mask], y[mask], ls="none", marker="o", ms=6, mfc=face, color=color)
            untested: dict[str, list[str]] = {}  # why: at which values
            for r in points:
                if r["verdict"] == "no test":
                    untested.setdefault(_untested(r), []).append(f"{float(r[hparam]):g}")
            for why, shown in untested.items():
                at = f"any {hparam}" if len(shown) == len(points) else \
                    f"{hparam} {', '.join(shown)}"
                notes.append(textwrap.fill(f"{describe(rest)}: no test at {at} ({why})", 60,
                                           subsequent_indent="  "))
            pair = (points[0]["treatment"], points[0]["baseline"])
            for side, other, marker, y_edge in (("treatment", "baseline", "^", 0.97),
                                                ("baseline", "treatment", "v", 0.03)):
                alone = [float(r[hparam]) for r in points if r[f"n_{side}"] and not r[f"n_{other}"]]
                if alone:  # only one side finished ok: an arrow at the panel's edge, its side
                    ax.plot(alone, [y_edge] * len(alone), ls="none", marker=marker, ms=8,
                            color=color, transform=ax.get_xaxis_transform(),
                            label=f"{describe(rest)}: only {norm_label(points[0][side], pair)} "
                                  "finished ok")
        ax.axhline(0, color="grey", lw=1)
        if notes:
            ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=7)
        log_axis(ax, hparam, sorted(grid), dataset)
        ax.legend(fontsize=8, loc="lower left")
    for ax in axes[::MAX_COLUMNS]:
        ax.set_ylabel(f"{difference}, final val acc (points)")
    tests = {r["test"] for r in rows  # as verdicts.csv's
             if isinstance(r.get("test"), str) and r["verdict"] != "no test"}
    return finished(fig, f"{question}? {difference} vs {noun}\n"
                         f"mean over seeds, bar: 95% {tests.pop() + ' ' if len(tests) == 1 else ''}"
                         f"interval; filled: p < {ALPHA:g}, hollow: within the seed spread")


def _untested(row: dict) -> str:
    """Why a verdicts.csv row has no test: the side(s) short of two ok seeds, and their
    diverged runs."""
    words = dict(zip(("treatment", "baseline"), pair_words(row["treatment"], row["baseline"]),
                     strict=True))
    short = [f"{row[f'n_{side}']} ok {words[side]}"
             + (f", {row[f'{side}_diverged']} diverged" if row[f"{side}_diverged"] else "")
             for side in ("treatment", "baseline") if row[f"n_{side}"] < 2]
    return "; ".join(short) or "no spread"


# --- per unit of compute (C5) -------------------------------------------------------------


def time_figure(runs: pd.DataFrame, measured: dict) -> Figure:
    """C5's reading: best val acc so far against compute in no-BN epochs (BN's at the charged
    ratio), mean ± std over seeds, a panel per dataset × optimizer; dotted: the budgets."""
    pairs = [pair for pair in dict.fromkeys(zip(runs["dataset"], runs["optim"], strict=True))
             if pair in measured]
    fig, axes = panel_grid(len(pairs), 5.6, 3.9, columns=2, extra=0.6)
    for ax, (dataset, optim) in zip(axes, pairs, strict=True):
        cost = measured[dataset, optim]
        mine = ok(runs[(runs["dataset"] == dataset) & (runs["optim"] == optim)])
        sides = study_curves(mine, cost.charged)
        for norm in norm_order(set(mine["norm"]) & set(STUDY)):
            (x, mean, std), seeds = sides[norm], int((mine["norm"] == norm).sum())
            color = norm_color(norm)
            ax.plot(x, 100 * mean, marker="o", ms=3, color=color,
                    label=f"{norm_label(norm)} ({plural(seeds, 'seed')})")
            if seeds > 1:
                ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), color=color,
                                alpha=0.2, lw=0)
        for share in BUDGETS:
            ax.axvline(share * full_compute(mine), color="grey", ls=":", lw=1)
        ax.set_title(f"{where(dataset, optim)} (BN step ×{cost.charged:.2f}, rounds "
                     f"{cost.ratio_min:.2f} to {cost.ratio_max:.2f})", fontsize=9)
        ax.set_xlabel("training compute (no-BN epochs)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation accuracy so far (%)")
    axes[0].legend()
    return finished(fig, "Is BatchNorm worth it per unit of compute? Best validation accuracy so "
                         "far against compute\n(BN's step charged the median round's 95% upper "
                         "bound; mean over seeds, band ± 1 std; dotted: C5's budgets)")
