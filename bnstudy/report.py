"""`python -m bnstudy.report SWEEP_DIR`: the BN-vs-no-BN report of a finished multirun.

Reads every job directory of the sweep (`metrics.json`, `.hydra/config.yaml`, `images/*.png`),
groups the jobs by every hparam except the seed, and writes `SWEEP_DIR/report/`:

- `curves_<dataset>_<optim>.png`: train/val loss and accuracy per epoch, BN and no BN overlaid;
  the line is the mean over seeds and the shaded band is ± one sample standard deviation
  (ddof=1) across seeds: the seed-to-seed spread, the quantity the t-test weighs, not the
  (narrower) standard error of the mean. With one seed there is no band.
- `weights_<dataset>_<optim>.png`, `hallucinations_<dataset>_<optim>.png`: each side's
  `images/{weights,hallucinations}_final.png` of its first seed, no BN left, BN right.
- `activations_<dataset>_<optim>.png`, `gradients_<dataset>_<optim>.png` (runs trained with
  `callbacks=probes`): the first ok seed's pre-activation percentiles per tracked unit, no BN
  and BN side by side; its per-layer gradient norms, loss landscape, gradient predictiveness
  and β-smoothness vs step, overlaid (see `bnstudy.probes`).
- `lr_<dataset>.png`, `batch_size_<dataset>.png` (when `lr` or `batch_size` varies, as in
  `experiment=lr_sweep` or `batch_sweep`): final validation accuracy vs that hparam, a panel per
  optimizer, a line per norm, diverged runs marked; report.md states each norm's usable range.
- `summary.csv`: one row per dataset × optim × norm (× any other varying hparam).
- `report.md`: the table, the figures and one verdict per dataset × optim, from Welch's t-test
  on the seeds' final validation accuracies.
- TensorBoard events holding the same figures and report, to browse next to the runs.

Statistics use the `ok` runs only; diverged, failed, unfinished and missing jobs are counted
and listed, never dropped silently.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from scipy import stats  # noqa: E402

from bnstudy.records import RECORD_NAME  # noqa: E402

REPORT_DIR = "report"
ALPHA = 0.05
DEFAULT_TARGETS = {"mnist": 0.9, "cifar10": 0.4}
FIRST_KEYS = ("dataset", "optim", "norm")
NORM_LABELS = {"bn": "BatchNorm", "none": "No BatchNorm", "layer": "LayerNorm"}
NORM_COLORS = {"bn": "tab:blue", "none": "tab:orange", "layer": "tab:green"}
CURVE_PANELS = (("train/loss", "Training loss"), ("val/loss", "Validation loss"),
                ("train/acc", "Training accuracy"), ("val/acc", "Validation accuracy"))
IMAGE_KINDS = {"weights": "Final first-layer weights", "hallucinations": "Final hallucinations"}
METRICS = ("final_val_acc", "best_val_acc", "final_val_loss", "test_acc",
           "first_epoch_train_loss", "epochs_to_target", "wall_time_s")
OUTCOMES = ("ok", "diverged", "failed", "unfinished")
SWEEPS = {"lr": ("learning rate", "Learning-rate robustness"),  # hparam: (noun, section title)
          "batch_size": ("batch size", "Batch-size sensitivity")}
USABLE_WITHIN = 0.05  # a swept value is usable within 5 accuracy points of its panel's best


class ReportError(Exception):
    """The sweep directory cannot be reported on (absent, or no jobs in it)."""


@dataclass(frozen=True)
class Run:
    """One job of the sweep, as its directory left it."""

    job: str
    path: Path
    status: str  # ok | diverged | failed | running | interrupted | (unreadable|no) metrics.json
    hparams: dict
    history: list
    test_acc: float | None
    wall_time_s: float | None
    error: str | None
    probes: dict = field(default_factory=dict)  # the record's probe series, by key

    @property
    def outcome(self) -> str:
        """ok, diverged, failed or unfinished (no result yet, or none ever written)."""
        return self.status if self.status in OUTCOMES else "unfinished"


# --- load ---------------------------------------------------------------------------------


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories (those holding `.hydra/config.yaml` or a record), by number."""
    if not sweep_dir.is_dir():
        raise ReportError(
            f"{sweep_dir} does not exist or is not a directory. Pass the directory of a multirun "
            "of `python -m bnstudy.train -m ...` (its hydra.sweep.dir, by default "
            "outputs/multirun/<date>_<time>), which holds one sub-directory per job."
        )
    dirs = [d for d in sweep_dir.iterdir()
            if (d / ".hydra" / "config.yaml").is_file() or (d / RECORD_NAME).is_file()]
    if not dirs:
        raise ReportError(
            f"{sweep_dir} holds no jobs: none of its sub-directories has a .hydra/config.yaml "
            f"or a {RECORD_NAME}. Pass the directory of a multirun of `python -m bnstudy.train "
            "-m ...` (its hydra.sweep.dir), not a single run's directory or its parent."
        )
    return sorted(dirs, key=lambda d: (_job_number(d.name), d.name))


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else -1


def hparams_from_config(job: Path) -> dict:
    """The hparams `bnstudy.train` records, from the job's `.hydra/config.yaml` ({} if none)."""
    from bnstudy.train import hparams  # here, not at the top: it imports Lightning (seconds)

    config = job / ".hydra" / "config.yaml"
    return hparams(OmegaConf.load(config)) if config.is_file() else {}


def load_run(job: Path) -> Run:
    """The job's record; a missing or unreadable `metrics.json` gives an unfinished Run."""
    record, status, error = {}, "no metrics.json", None
    if (job / RECORD_NAME).is_file():
        try:
            record = json.loads((job / RECORD_NAME).read_text())
            status = record.get("status", "running")
            error = record.get("error")
        except (OSError, ValueError) as err:
            status, error = "unreadable metrics.json", str(err)
    test = record.get("test") or {}
    return Run(
        job=job.name,
        path=job,
        status=status,
        hparams=record.get("hparams") or hparams_from_config(job),
        history=record.get("history") or [],
        test_acc=test.get("acc"),
        wall_time_s=record.get("wall_time_s"),
        error=error,
        probes={key: record[key] for key in PROBE_FIGURES if record.get(key)},
    )


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every job of the sweep, finished or not."""
    return [load_run(job) for job in job_dirs(sweep_dir)]


def never_started(sweep_dir: Path) -> list[str]:
    """The jobs that `multirun.yaml` plans but that have no directory, as override strings.

    Knows the plan of Hydra's basic sweeper (every combination of comma-separated values, from
    `hydra.sweeper.params` and the command line, which wins); for other sweeps (intervals, say)
    it names none.
    """
    plan_file = sweep_dir / "multirun.yaml"
    if not plan_file.is_file():
        return []
    plan = OmegaConf.load(plan_file).hydra
    params = [f"{k}={v}" for k, v in (OmegaConf.select(plan, "sweeper.params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *plan.overrides.task])
    parsed = list({o.get_key_element(): o for o in overrides}.values())  # the last of a key wins
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return []
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
               if o.is_sweep_override()
               else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]
    started = {frozenset(OmegaConf.load(f)) for f in sweep_dir.glob("*/.hydra/overrides.yaml")}
    swept = [i for i, o in enumerate(parsed) if o.is_sweep_override()]
    return [" ".join(job[i] for i in swept) for job in itertools.product(*choices)
            if frozenset(job) not in started]


# --- group and summarise ------------------------------------------------------------------


def group_keys(runs: list[Run]) -> list[str]:
    """dataset, optim, norm, then every other hparam that varies across the sweep; never seed."""
    names = dict.fromkeys(k for r in runs for k in r.hparams)
    varying = [k for k in names
               if k not in (*FIRST_KEYS, "seed") and len({str(r.hparams.get(k)) for r in runs}) > 1]
    return [*FIRST_KEYS, *varying]


def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs by group key, a tuple of (hparam, value) pairs; groups and runs in sweep order."""
    keys = group_keys(runs)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple((k, run.hparams.get(k)) for k in keys), []).append(run)
    return {key: sorted(group, key=lambda r: r.hparams.get("seed", 0))
            for key, group in groups.items()}


def comparisons(groups: dict[tuple, list[Run]]) -> dict[tuple, dict[str, list[Run]]]:
    """The groups by their key without `norm` (one BN-vs-no-BN comparison each), then by norm."""
    out: dict[tuple, dict[str, list[Run]]] = {}
    for key, runs in groups.items():
        norm = dict(key)["norm"]
        out.setdefault(tuple(kv for kv in key if kv[0] != "norm"), {})[norm] = runs
    return out


def epochs_to_target(history: list[dict], target: float | None) -> float:
    """The first epoch (counted from 1) whose validation accuracy reaches `target`; NaN if none."""
    if target is None:
        return math.nan
    hits = [row["epoch"] + 1 for row in history if _num(row.get("val/acc")) >= target]
    return float(hits[0]) if hits else math.nan


def run_metrics(run: Run, target: float | None) -> dict[str, float]:
    """The numbers the summary averages over seeds, for one run with a history."""
    first, last = run.history[0], run.history[-1]
    return {
        "final_val_acc": _num(last.get("val/acc")),
        "best_val_acc": max(_num(row.get("val/acc")) for row in run.history),
        "final_val_loss": _num(last.get("val/loss")),
        "test_acc": _num(run.test_acc),
        "first_epoch_train_loss": _num(first.get("train/loss")),
        "epochs_to_target": epochs_to_target(run.history, target),
        "wall_time_s": _num(run.wall_time_s),
    }


def _num(value) -> float:
    """A JSON number as float; null (a NaN or inf that JSON cannot hold) as NaN."""
    return math.nan if value is None else float(value)


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
    seeds = (f"{_seeds(len(bn_acc))} each" if len(bn_acc) == len(none_acc)
             else f"{len(bn_acc)} vs {_seeds(len(none_acc))}")
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


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


# --- figures ------------------------------------------------------------------------------


def norm_order(norms) -> list[str]:
    """No BN first, then BN, then any other norm."""
    rank = {"none": 0, "bn": 1}
    return sorted(norms, key=lambda n: (rank.get(n, 2), str(n)))


def norm_label(norm: str) -> str:
    return NORM_LABELS.get(norm, str(norm))


def mean_curve(runs: list[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs (counted from 1), and per epoch the mean and sample std of `metric` over runs."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for row in run.history:
            by_epoch.setdefault(row["epoch"] + 1, []).append(_num(row.get(metric)))
    epochs = sorted(by_epoch)
    moments = np.array([mean_std(by_epoch[e]) for e in epochs]).reshape(-1, 2)
    return np.array(epochs), moments[:, 0], moments[:, 1]


def curves_figure(label: str, by_norm: dict[str, list[Run]]) -> Figure:
    """2 × 2 panels (train/val × loss/accuracy): mean over seeds ± one std band, per norm."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for ax, (metric, title) in zip(axes.flat, CURVE_PANELS, strict=True):
        for norm in norm_order(by_norm):
            runs = [r for r in by_norm[norm] if r.outcome == "ok" and r.history]
            if not runs:
                continue
            epochs, mean, std = mean_curve(runs, metric)
            color = NORM_COLORS.get(norm)
            ax.plot(epochs, mean, marker="o", ms=3, color=color,
                    label=f"{norm_label(norm)} ({_seeds(len(runs))})")
            if len(runs) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend()
    fig.suptitle(f"BatchNorm vs No BatchNorm — Training Curves ({label})\n"
                 "mean over seeds, band ± 1 std across seeds")
    fig.tight_layout()
    return fig


def first_image(runs: list[Run], kind: str) -> tuple[Run, Path] | None:
    """The first seed's `images/<kind>_final.png` among the ok runs; None if none has one."""
    for run in runs:
        path = run.path / "images" / f"{kind}_final.png"
        if run.outcome == "ok" and path.is_file():
            return run, path
    return None


def images_figure(title: str, panels: list[tuple[str, Path]]) -> Figure:
    """The PNGs side by side, each under its title; the figure takes the first one's aspect."""
    images = [plt.imread(path) for _, path in panels]
    height, width = images[0].shape[:2]
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(5.5 * len(panels), 5.5 * height / width + 0.9))
    for ax, (panel_title, _), image in zip(axes[0], panels, images, strict=True):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        ax.set_title(panel_title)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def first_series(runs: list[Run], key: str) -> Run | None:
    """The first seed's ok run that recorded the probe series `key`; None if none did."""
    return next((r for r in runs if r.outcome == "ok" and key in r.probes), None)


def _seed_label(norm: str, run: Run) -> str:
    return f"{norm_label(norm)} (seed {run.hparams.get('seed')})"


def activations_figure(label: str, found: dict[str, Run]) -> Figure:
    """A unit per row, a norm per column: its pre-activation percentiles vs training step."""
    series = {norm: run.probes["activations"] for norm, run in found.items()}
    rows = max(len(data["units"]) for data in series.values())
    fig, axes = plt.subplots(rows, len(series), squeeze=False, sharex=True, sharey="row",
                             figsize=(5.5 * len(series), 2.4 * rows + 1.2))
    for col, (norm, data) in enumerate(series.items()):
        values = np.array(data["values"], dtype=float).reshape(
            len(data["steps"]), len(data["units"]), len(data["percentiles"]))
        median = int(np.argmin([abs(p - 50) for p in data["percentiles"]]))
        for row, unit in enumerate(data["units"]):
            ax = axes[row, col]
            for k, percentile in enumerate(data["percentiles"]):
                ax.plot(data["steps"], values[:, row, k], color=NORM_COLORS.get(norm),
                        lw=1.8 if k == median else 1, ls="-" if k == median else "--",
                        label=f"{percentile:g}th percentile")
            ax.set_title(f"{_seed_label(norm, found[norm])}: unit {unit}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=8)
        axes[-1, col].set_xlabel("training step")
    layer = next(iter(series.values()))
    fig.suptitle(f"Pre-activation percentiles at ReLU `{layer['module']}` ({label})\n"
                 "each unit's values over the training batch, in training mode")
    fig.tight_layout()
    return fig


def gradients_figure(label: str, found: dict[str, Run]) -> Figure:
    """Per-layer gradient norms, and along the gradient the loss and gradient change (the
    band spans the step sizes η) and the β-smoothness, vs training step; norms overlaid."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    styles = ("-", "--", ":", "-.")
    for norm, run in found.items():
        data, color = run.probes["gradients"], NORM_COLORS.get(norm)
        for i, (layer, norms) in enumerate(data["norms"].items()):
            axes[0, 0].plot(data["steps"], norms, color=color,
                            ls=styles[i % len(styles)], label=f"{norm_label(norm)}: {layer}")
        land = data["landscape"]
        for ax, key in ((axes[0, 1], "loss"), (axes[1, 0], "grad_change")):
            values = np.array(land[key], dtype=float).reshape(len(land["steps"]), -1)
            ax.fill_between(land["steps"], values.min(1), values.max(1), color=color, alpha=0.3,
                            lw=0, label=_seed_label(norm, run))
        axes[1, 1].plot(land["steps"], np.array(land["beta_smoothness"], dtype=float),
                        color=color, marker="o", ms=3, label=_seed_label(norm, run))
    etas = next(iter(found.values())).probes["gradients"]["landscape"]["etas"]
    span = f"η from {min(etas):g} to {max(etas):g}"
    titles = ("Gradient norm per layer", f"Loss landscape: L(θ − ηg), {span}",
              f"Gradient predictiveness: ‖∇L(θ − ηg) − ∇L(θ)‖, {span}",
              "β-smoothness: max over η of ‖Δ∇L‖ / ‖ηg‖")
    for ax, title in zip(axes.flat, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("training step")
    fig.suptitle(f"Gradient behaviour along training ({label})")
    fig.tight_layout()
    return fig


PROBE_FIGURES = {"activations": activations_figure, "gradients": gradients_figure}


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


def _values(n: int) -> str:
    return f"{n} value" if n == 1 else f"{n} values"


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
        wider = f" The usable ranges are equally wide ({_values(sizes[order[0]])} each)."
    else:
        names = " and ".join(map(norm_label, widest))
        degree = "wider" if len(order) == 2 else "widest"
        counts = " vs ".join(str(n) for n in sorted(sizes.values(), reverse=True))
        wider = (f" {names} {'has' if len(widest) == 1 else 'have'} the {degree} usable range "
                 f"({counts} values).")
    return (f"**{label}** (best {best:.2%}: {norm_label(where[0])} at {hparam}={where[1]:g}). "
            f"Usable {noun}: {'; '.join(parts)}.{wider}")


def robustness_figure(hparam: str, dataset: str, panels: dict[tuple, dict],
                      within: float = USABLE_WITHIN) -> Figure:
    """A panel per optimizer: final validation accuracy vs `hparam` (log axis), the mean over
    seeds ± one std, a line per norm; a × at 0 for each diverged run; failed and unfinished
    runs counted in the panel's corner; a dotted line where usable values end (`within` below
    the panel's best)."""
    noun, title = SWEEPS[hparam]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True,
                             figsize=(5.5 * len(panels), 4.8))
    epochs = {r.hparams.get("max_epochs") for p in panels.values() for by_value in p.values()
              for runs in by_value.values() for r in runs}
    for ax, (panel, by_norm) in zip(axes[0], panels.items(), strict=True):
        order, notes = norm_order(by_norm), []
        grid = sorted({v for by_value in by_norm.values() for v in by_value}, key=float)
        for i, norm in enumerate(order):
            by_value, color = by_norm[norm], NORM_COLORS.get(norm)
            values = sorted(by_value, key=float)
            moments = np.array([mean_std(per_seed(by_value[v], None)["final_val_acc"])
                                for v in values]).reshape(-1, 2)
            ax.errorbar(values, moments[:, 0], yerr=np.nan_to_num(moments[:, 1]), color=color,
                        marker="o", ms=4, capsize=3, label=norm_label(norm))
            diverged = [float(v) for v in values for r in by_value[v] if r.outcome == "diverged"]
            if diverged:  # side by side when both norms diverge at one value
                shift = 1.06 ** (i - (len(order) - 1) / 2)
                ax.plot(np.array(diverged) * shift, np.zeros(len(diverged)), ls="none",
                        marker="x", ms=9, mew=2, color=color, clip_on=False,
                        label=f"{norm_label(norm)}: diverged ({len(diverged)})")
            left_out = {o: sum(r.outcome == o for runs in by_value.values() for r in runs)
                        for o in ("failed", "unfinished")}
            if any(left_out.values()):
                counts = ", ".join(f"{n} {o}" for o, n in left_out.items() if n)
                notes.append(f"{norm_label(norm)}: {counts} (not drawn)")
        best = usable_values(by_norm, within)[0]
        if not math.isnan(best):
            ax.axhline(best - within, color="grey", ls=":", lw=1,
                       label=f"usable: ≥ best − {100 * within:g} points")
        if notes:
            ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xscale("log", base=2 if hparam == "batch_size" else 10)
        ax.set_xticks([float(v) for v in grid], [f"{v:g}" for v in grid],
                      rotation=45 if len(grid) > 6 else 0)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(-0.04, 1.02)
        ax.set_title(describe(panel) if panel else dataset)
        ax.set_xlabel(noun)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("final validation accuracy")
    after = f" after {epochs.pop()} epoch(s)" if len(epochs) == 1 else ""
    fig.suptitle(f"{title} ({dataset}): final validation accuracy{after} vs {noun}\n"
                 "mean over seeds ± 1 std across seeds; × a diverged run (drawn at 0)")
    fig.tight_layout()
    return fig


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


# --- write --------------------------------------------------------------------------------


def slug(ckey: tuple) -> str:
    """`mnist_sgd`, plus `_<hparam><value>` for each other varying hparam."""
    values = dict(ckey)
    extras = [f"{k}{v}" for k, v in ckey if k not in FIRST_KEYS]
    return "_".join([str(values["dataset"]), str(values["optim"]), *extras])


def describe(ckey: tuple) -> str:
    """`mnist, sgd`, plus `, <hparam>=<value>` for each other varying hparam."""
    return ", ".join([str(v) for k, v in ckey if k in FIRST_KEYS]
                     + [f"{k}={v}" for k, v in ckey if k not in FIRST_KEYS])


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


def csv_value(value):
    """NaN as an empty cell, floats to 6 decimals."""
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return value


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
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
                    sections: list[str], unstarted: list[str]) -> str:
    """The whole report.md."""
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
        f"t-test over seeds (p < {ALPHA}).", "",
        "## Summary", "", markdown_table(rows, keys), "", "Also in `summary.csv`.", "",
        *sections, "## Jobs not in the statistics", "", problems_markdown(runs, unstarted), "",
    ])


def write_figures(figures: dict[str, Figure], markdown: str, out: Path) -> None:
    """Each figure as `<name>.png`; them and the report text as TensorBoard events in `out`
    (an earlier report's figures and events go first, so none is left stale or shown twice)."""
    from torch.utils.tensorboard import SummaryWriter  # here, not at the top: imports torch

    stale = ("events.out.tfevents.*", "curves_*.png",
             *(f"{k}_*.png" for k in (*IMAGE_KINDS, *PROBE_FIGURES, *SWEEPS)))
    for pattern in stale:
        for old in out.glob(pattern):
            old.unlink()
    with SummaryWriter(log_dir=str(out)) as writer:
        for name, fig in figures.items():
            fig.savefig(out / f"{name}.png", dpi=100)
            kind = next((k for k in SWEEPS if name.startswith(f"{k}_")), name.split("_")[0])
            writer.add_figure(f"{kind}/{name[len(kind) + 1:]}", fig, close=True)
        writer.add_text("report", markdown)


def write_report(sweep_dir: Path, targets: dict[str, float]) -> Path:
    """Loads, groups, summarises and writes `sweep_dir/report/`; returns report.md's path."""
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
    sections, figures = [], {}
    for hparam in [h for h in SWEEPS if h in group_keys(runs)]:
        section, figs = robustness_section(hparam, groups)
        sections.append(section)
        figures.update(figs)
    for ckey, by_norm in comparisons(groups).items():
        section, figs = comparison(ckey, by_norm, target(ckey))
        sections.append(section)
        figures.update(figs)
    markdown = report_markdown(sweep_dir, runs, rows, group_keys(runs), sections,
                               never_started(sweep_dir))
    (out / "report.md").write_text(markdown)
    write_figures(figures, markdown, out)
    return out / "report.md"


# --- command line -------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, float]:
    """`0.95` (every dataset) or `mnist=0.95` → (dataset or "*", accuracy in (0, 1])."""
    dataset, _, value = text.rpartition("=")
    try:
        acc = float(value)
    except ValueError:
        acc = math.nan
    if not 0 < acc <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ACC or DATASET=ACC, 0 < ACC <= 1")
    return dataset or "*", acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun's directory (hydra.sweep.dir)")
    parser.add_argument(
        "--target-acc", type=parse_target, action="append", default=[], metavar="[DATASET=]ACC",
        help="validation accuracy for the 'epochs to target' column; repeatable; a bare ACC "
             "replaces the defaults for every dataset not named (default: mnist=0.9 cifar10=0.4)")
    args = parser.parse_args(argv)
    given = dict(args.target_acc)
    targets = given if "*" in given else {**DEFAULT_TARGETS, **given}
    try:
        path = write_report(args.sweep_dir, targets)
    except ReportError as err:
        print(f"bnstudy.report: error: {err}", file=sys.stderr)
        return 2
    print(f"Report written to {path} (figures, summary.csv and TensorBoard events beside it).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
