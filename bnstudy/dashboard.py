"""What TensorBoard shows beyond Lightning's logging (no Lightning or torch import at the top:
a sweep's main process and the report use it): the comparison curves `compare/<pair>/*` and
their Custom Scalars layout, a category per dataset-optim pair; the sweep's `+mean/<norm>` runs
(mean ± std over seeds, opened by `BROWSE_URL`); HParams sessions and the sweep's experiment."""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from bnstudy.norms import NORMS
from bnstudy.records import SHOWN, RunRecord, final_jobs, read_tuning, sweep_records

if TYPE_CHECKING:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

COMPARED = ("train/loss", "val/loss", "val/acc")
# The sweep's first page: Custom Scalars, smoothing off (10-point epoch curves), the run list
# filtered to the `+mean` runs (regex `^\+mean/`, so they are selected at any number of runs)
BROWSE_URL = "http://localhost:6006/#custom_scalars&_smoothingWeight=0&regexInput=%5E%5C%2Bmean%2F"
# Time Series with smoothing off and runs coloured by norm (the jobs' and the `+mean` runs')
TIMESERIES_URL = ("http://localhost:6006/?smoothing=0&runColorGroup=regex:[-/]"
                  f"({'|'.join(NORMS)})(?:-|$)#timeseries")
METRICS = ("val/acc", "val/loss", "test/acc", "test/loss")


def pair_name(dataset: str, optim: str) -> str:
    return f"{dataset}-{optim}"


def compare_tag(pair: str, metric: str) -> str:
    """`compare/<pair>/<metric with _ for />`, e.g. compare/mnist-sgd/val_acc."""
    return f"compare/{pair}/{metric.replace('/', '_')}"


def custom_layout(pairs: Iterable[str], title, kind: str, tags) -> dict:
    """A Custom Scalars layout: a category per pair (`title(pair)`), a `kind` chart per compared
    metric of `tags(pair, metric)`."""
    return {title(pair): {f"{pair.replace('-', ' · ')} · {metric}": [kind, tags(pair, metric)]
                          for metric in COMPARED} for pair in pairs}


def comparison_layout(pairs: Iterable[str]) -> dict:
    """The runs' layout: a multiline chart per compared metric of exactly the pair's runs."""
    return custom_layout(pairs, lambda pair: pair.replace("-", " · "), "Multiline",
                         lambda pair, metric: [f"^{compare_tag(pair, metric)}$"])


def comparison_summary(pairs: Iterable[str], closed: bool = False) -> Summary:
    """`comparison_layout` as a Custom Scalars summary; `closed` (a sweep's jobs): its
    categories closed, since `BROWSE_URL`'s `+mean/` filter leaves them no run (empty charts
    under the means) — a click opens one."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from torch.utils.tensorboard.summary import custom_scalars

    summary = custom_scalars(comparison_layout(pairs))  # (its dict form has no `closed`)
    tensor = summary.value[0].tensor
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    for category in layout.category:
        category.closed = closed
    tensor.string_val[0] = layout.SerializeToString()
    return summary


def tb_value(value):
    """An hparam value: numbers as floats, booleans and strings as they are, else as text."""
    if isinstance(value, bool | str):
        return value
    return float(value) if isinstance(value, int | float) else str(value)


def write_session(writer: SummaryWriter, settings: dict) -> None:
    """The run's HParams session: its settings, its directory's name as the trial ID."""
    writer.file_writer.add_summary(hp.hparams_pb({k: tb_value(v) for k, v in settings.items()},
                                                 trial_id=Path(writer.get_logdir()).name))


def _ordered(values: set) -> list:
    """A domain's values in order: numbers (and integers as text) by value, else as text."""
    if len({type(v) for v in values}) > 1:  # (a domain holds one type)
        values = {str(v) for v in values}
    if all(isinstance(v, str) and v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def experiment_summary(runs_settings: list[dict]) -> Summary:
    """The HParams experiment: the settings that vary (or some runs lack), marked `differs`,
    then the fixed study choices (dataset, norm, optim, seed), discrete; the metrics."""
    keys = dict.fromkeys(key for settings in runs_settings for key in settings)  # in order
    values = {k: {tb_value(s[k]) for s in runs_settings if k in s} for k in keys}
    differs = {k for k, v in values.items()
               if len(v) > 1 or not all(k in s for s in runs_settings)}
    shown = [k for k in values if k in differs] + [k for k in SHOWN if k in values.keys() - differs]
    summary = hp.hparams_config_pb([hp.HParam(k, hp.Discrete(_ordered(values[k]))) for k in shown],
                                   [hp.Metric(tag, display_name=tag) for tag in METRICS])
    # `hp.HParam` cannot set `differs`, and sorts integers written as text as text: set both
    plugin_data = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in differs
        del info.domain_discrete.values[:]
        info.domain_discrete.extend(_ordered(values[info.name]))
    plugin_data.content = data.SerializeToString()
    return summary


def write_sweep_experiment(job_dir: Path, runs_settings: list[dict]) -> None:
    """The sweep's HParams experiment, in a job's directory (at the root: an empty run ".")."""
    writer = EventFileWriter(str(job_dir))
    writer.add_event(event_pb2.Event(wall_time=time.time(),
                                     summary=experiment_summary(runs_settings)))
    writer.close()


# -- the sweep's view over seeds: each finished job rewrites `SWEEP/+mean/<group>` (a run per
# norm and other swept setting; `+` sorts first). A refresh writes a new events file (versions
# counting up, under `+mean/.lock`, renamed into place) opening with a SessionLog START, so
# TensorBoard replaces the earlier points (older files are kept: the Python loader stops at a
# file deleted under it).
MEAN_DIR = "+mean"


def mean_tag(pair: str, metric: str, part: str) -> str:
    """`seeds/<pair>/<metric with _ for />/<part>`, part: mean, lower or upper."""
    return f"seeds/{pair}/{metric.replace('/', '_')}/{part}"


def mean_group(record: RunRecord) -> str:
    """A run's line within its pair: its norm and other swept settings (`bn`, `bn-lr=0.1`)."""
    s = record.hparams  # (not `hp`: the module's TensorBoard hparams API)
    prefix = f"{s['dataset']}-{s['norm']}-{s['optim']}-seed{s['seed']}"
    swept = record.run_name[len(prefix):] if record.run_name.startswith(prefix) else ""
    return f"{s['norm']}{swept}".replace("/", "_")


def mean_curves(records: list[RunRecord], group=mean_group
                ) -> dict[str, dict[str, dict[str, list[tuple]]]]:
    """`curves[group][pair][metric]` = [(step, mean, sample std, n)] per epoch over the ok runs."""
    import pandas as pd  # here: the callbacks import this module at every run's start

    rows = [(group(r), pair_name(r.hparams["dataset"], r.hparams["optim"]), metric, epoch,
             row["step"] - 1, value) for r in records if r.status == "ok" and r.hparams
            for epoch, row in enumerate(r.history) for metric in COMPARED
            if (value := row.get(metric)) is not None and math.isfinite(value)]
    table = pd.DataFrame(rows, columns=["group", "pair", "metric", "epoch", "step", "value"])
    stats = table.astype({"value": float}).groupby(["group", "pair", "metric", "epoch"]).agg(
        step=("step", "min"), mean=("value", "mean"), std=("value", "std"), n=("value", "size"))
    curves: dict = {}
    for (group, pair, metric, _), row in stats.fillna({"std": 0.0}).iterrows():
        curves.setdefault(group, {}).setdefault(pair, {}).setdefault(metric, []).append(
            (int(row["step"]), row["mean"], row["std"], int(row["n"])))
    return curves


def mean_layout(pairs: Iterable[str], curves: dict | None = None) -> dict:
    """The `+mean` runs' layout: a category per pair titled with its seeds so far, a margin
    chart per compared metric."""
    def seeds(pair: str) -> str:
        counts = {group: by_pair[pair]["val/acc"][0][3] for group, by_pair in (curves or {}).items()
                  if by_pair.get(pair, {}).get("val/acc")}
        if not counts:
            return "seeds"
        if len(set(counts.values())) == 1:
            return f"{next(iter(counts.values()))} seed(s) each"
        return "seeds (" + ", ".join(f"{group} {n}" for group, n in counts.items()) + ")"

    return custom_layout(
        pairs, lambda pair: f"{pair.replace('-', ' · ')} · mean ± std over {seeds(pair)}",
        "Margin", lambda pair, metric: [mean_tag(pair, metric, part)
                                        for part in ("mean", "lower", "upper")])


def mean_events(curves: dict[str, dict[str, list[tuple]]], layout: dict,
                now: float | None = None) -> bytes:
    """One `+mean` run's events file, all at wall time `now` (default: the clock's)."""
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import custom_scalars, scalar

    now, buffer = time.time() if now is None else now, io.BytesIO()
    records = RecordWriter(buffer)
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    events = [{"file_version": "brain.Event:2"}, {"step": 0, "session_log": start},
              {"step": 0, "summary": custom_scalars(layout)}]
    events += [{"step": step, "summary": scalar(mean_tag(pair, metric, part), value)}
               for pair, by_metric in curves.items() for metric, curve in by_metric.items()
               for step, mean, std, _ in curve
               for part, value in (("mean", mean), ("lower", mean - std), ("upper", mean + std))]
    for event in events:
        records.write(event_pb2.Event(wall_time=now, **event).SerializeToString())
    return buffer.getvalue()


def refresh_mean_runs(sweep_dir: str | Path, timeout: float = 60,
                      root: Path | None = None) -> list[str]:
    """Rewrites the sweep's `+mean` runs (in `root`, default `SWEEP/+mean`) from its jobs'
    records; returns their names (`+mean/bn`, ...). Waits up to `timeout` s for another refresh."""
    from filelock import FileLock

    sweep_dir = Path(sweep_dir)
    root = root or sweep_dir / MEAN_DIR
    root.mkdir(exist_ok=True)
    with FileLock(root / ".lock", timeout=timeout):  # a tuned sweep: each norm's kept
        # setting's re-runs (`final_jobs`; none while it searches), grouped by norm alone
        tuning = read_tuning(sweep_dir)
        kept = None if tuning is None else set(final_jobs(tuning))
        found = [r for job, r in sweep_records(sweep_dir)
                 if r.hparams and (kept is None or job.name in kept)]
        pairs = dict.fromkeys(pair_name(r.hparams["dataset"], r.hparams["optim"])
                              for r in found)  # in the sweep's order
        curves = mean_curves(found, mean_group if kept is None else lambda r: r.hparams["norm"])
        layout = mean_layout(pairs, curves)
        versions = [int(p.name.split(".")[3]) for p in root.glob("*/events.out.tfevents.*.mean")]
        version = max(versions, default=0) + 1
        # dated at the sweep's start: listed first, with the palette's first colours
        plan = sweep_dir / "multirun.yaml"
        started = plan.stat().st_mtime if plan.is_file() else None
        for group, by_pair in curves.items():
            run = root / group
            run.mkdir(exist_ok=True)
            partial = run / f".{version}.partial"  # not an events file until renamed
            partial.write_bytes(mean_events(by_pair, layout, started))
            os.replace(partial, run / f"events.out.tfevents.{version:010d}.mean")
    return [f"{MEAN_DIR}/{group}" for group in curves]


def refresh_sweep_view(sweep_dir: str | Path) -> None:
    """`refresh_mean_runs` after a job; a failure (full disk, lock timeout) is a warning."""
    from filelock import Timeout

    try:
        refresh_mean_runs(sweep_dir)
    except (OSError, Timeout) as err:
        logging.getLogger("bnstudy").warning(
            "The sweep's mean-over-seeds view in %s/%s was not updated (%s); the next job "
            "that ends updates it.", sweep_dir, MEAN_DIR, err)
