"""What TensorBoard shows beyond Lightning's own logging: the study's comparison at a glance.

Tag scheme. Every run logs its curves as `train/loss`, `train/acc`, `val/loss`, `val/acc`,
`test/*` (Lightning), and `ComparisonCurves` copies three of them per epoch under its
dataset × optimizer pair, `compare/<dataset>-<optim>/{train_loss,val_loss,val_acc}`. Only the
runs of one pair (every norm, all seeds) carry that pair's tags, so a chart of them compares
exactly those runs: the Custom Scalars layout each run writes has a category per pair
("mnist · sgd") with those three charts, and in Time Series the `compare` section comes first.

A sweep's view over seeds: as its jobs end, `+mean/<norm>` runs hold each pair's mean ± std
over the seeds finished so far, as margin charts that lead the Custom Scalars page;
`BROWSE_URL` opens that page on them at any number of runs (see "the sweep's view over
seeds" below).

HParams: each run writes its session (its settings, `bnstudy.config.hparams`); the experiment
(the settings that vary, marked `differs` so TensorBoard lists them first, and the study's
dataset, norm, optim and seed, with their discrete values; the metrics `val/acc`, `val/loss`,
`test/acc`, `test/loss`) is written once per sweep, at its root, when it ends, or into the
run's own directory for a single run.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from bnstudy.norms import NORMS
from bnstudy.records import RECORD_NAME, RunRecord, job_order

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


def comparison_layout(pairs: Iterable[str]) -> dict:
    """A Custom Scalars layout (torch's `add_custom_scalars` format): a category per pair,
    titled `dataset · optim`, holding a multiline chart of each compared metric."""
    return {pair.replace("-", " · "): {
        f"{pair.replace('-', ' · ')} · {metric}": ["Multiline", [f"^{compare_tag(pair, metric)}$"]]
        for metric in COMPARED} for pair in pairs}


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's TensorBoard logger, if it has one."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ComparisonCurves(Callback):
    """Writes the run's pair layout when fitting starts and the compared curves under the
    pair's tags (see the module docstring), on rank 0: the training curve after each training
    epoch, the validation curves after each validation (so `check_val_every_n_epoch` > 1 or
    `val_check_interval` < 1 give the same points as Lightning's `val/*`, no stale copies)."""

    def __init__(self, dataset: str, optim: str) -> None:
        self.pair = pair_name(dataset, optim)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and trainer.is_global_zero:
            writer.add_custom_scalars(comparison_layout([self.pair]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, [m for m in COMPARED if m.startswith("train/")])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, [m for m in COMPARED if m.startswith("val/")])

    def _write(self, trainer: L.Trainer, compared: list[str]) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        for metric in compared:
            if metric in metrics:  # at the step Lightning logs them (that of the last batch)
                writer.add_scalar(compare_tag(self.pair, metric), float(metrics[metric]),
                                  trainer.global_step - 1)


def tb_value(value):
    """An hparam value as TensorBoard's HParams keeps it: numbers as numbers (integers too, as
    floats: one type per domain, so the table sorts and filters them by value), booleans and
    strings as they are, anything else (lists, None) as text."""
    if isinstance(value, bool | str):
        return value
    return float(value) if isinstance(value, int | float) else str(value)


def write_session(writer: SummaryWriter, settings: dict) -> None:
    """The run's HParams session: its settings (see `tb_value`), under the name of its
    directory (the TensorBoard run, e.g. `0_mnist-bn-sgd-seed0`) as the table's trial ID,
    rather than a hash of the settings."""
    writer.file_writer.add_summary(hp.hparams_pb({k: tb_value(v) for k, v in settings.items()},
                                                 trial_id=Path(writer.get_logdir()).name))


def _ordered(values: set) -> list:
    """A domain's values in order: numbers (and integers as text) by value, else as text."""
    if len({type(v) for v in values}) > 1:  # (a domain holds one type)
        values = {str(v) for v in values}
    if all(isinstance(v, str) and v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def write_experiment(writer: SummaryWriter, runs_settings: list[dict]) -> None:
    """The HParams experiment of runs' settings: the settings that vary across them (a value
    that differs, or a setting some runs lack), marked `differs`, then the study's four
    choices (dataset, norm, optim and seed) that are fixed, with their discrete values, so
    that the table's first (shown) columns are what tells the runs apart; the study's
    metrics. (Every setting of a run is in its session and its metrics.json.)"""
    values: dict[str, set] = {}
    for settings in runs_settings:
        for key, value in settings.items():
            values.setdefault(key, set()).add(tb_value(value))
    differs = {k for k, v in values.items()
               if len(v) > 1 or sum(k in s for s in runs_settings) < len(runs_settings)}
    shown = [k for k in values if k in differs] + \
        [k for k in ("dataset", "norm", "optim", "seed") if k in values and k not in differs]
    hparams = [hp.HParam(key, hp.Discrete(_ordered(values[key]))) for key in shown]
    metrics = [hp.Metric(tag, display_name=tag) for tag in METRICS]
    summary = hp.hparams_config_pb(hparams, metrics)
    # TensorBoard lists the hparams marked `differs` first and shows the first five as
    # columns; `hp.HParam` cannot set the mark, and a domain of mixed types, written as text,
    # sorts integers as text (128 before 64), so both are set in the written proto.
    plugin_data = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in differs
        del info.domain_discrete.values[:]
        info.domain_discrete.extend(_ordered(values[info.name]))
    plugin_data.content = data.SerializeToString()
    writer.file_writer.add_summary(summary)


def write_sweep_experiment(job_dir: Path, runs_settings: list[dict]) -> None:
    """Writes the sweep's HParams experiment into an events file of one of its jobs (the
    plugin reads it from any run; at the sweep's root it would show as an empty run ".")."""
    with SummaryWriter(str(job_dir)) as writer:
        write_experiment(writer, runs_settings)


def write_margin_charts(writer: SummaryWriter, curves: dict[str, dict[str, dict]]) -> None:
    """The report's Custom Scalars: per compared pair (`curves[pair][norm][metric]` =
    (epochs, mean, std) over seeds), a category `<dataset> · <optim> · mean ± std over
    seeds` with a margin chart per compared metric, a band per norm; the scalars under
    `mean/<pair>/<metric>/<norm>/{value,lower,upper}` at the epoch (from 1)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import layout_pb2

    categories = []
    for pair, by_norm in curves.items():
        charts = []
        for metric in COMPARED:
            series = []
            for norm, by_metric in by_norm.items():
                base = f"mean/{pair}/{metric.replace('/', '_')}/{norm}"
                epochs, mean, std = by_metric[metric]
                for epoch, m, s in zip(epochs, mean, std, strict=True):
                    s = 0.0 if s != s else s  # one seed: no spread
                    for part, value in (("value", m), ("lower", m - s), ("upper", m + s)):
                        writer.add_scalar(f"{base}/{part}", value, int(epoch))
                series.append(layout_pb2.MarginChartContent.Series(
                    value=f"{base}/value", lower=f"{base}/lower", upper=f"{base}/upper"))
            charts.append(layout_pb2.Chart(
                title=f"{pair.replace('-', ' · ')} · {metric} (mean ± std)",
                margin=layout_pb2.MarginChartContent(series=series)))
        categories.append(layout_pb2.Category(
            title=f"{pair.replace('-', ' · ')} · mean ± std over seeds", chart=charts))
    # The layout summary as torch's `add_custom_scalars` writes it (which takes one series a
    # margin chart): the plugin's config tag holding the serialised layout.
    layout = layout_pb2.Layout(category=categories).SerializeToString()
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout], tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    writer.file_writer.add_summary(Summary(value=[Summary.Value(
        tag="custom_scalars__config__", tensor=tensor, metadata=metadata)]))


# -- the sweep's view over seeds -------------------------------------------------------------
# While a sweep runs, each finished job refreshes `SWEEP/+mean/`: one TensorBoard run per norm
# (and per other setting the sweep varies), e.g. `+mean/bn` and `+mean/none`, holding for each
# dataset × optimizer pair the mean over the seeds finished so far and a band of ± one sample
# standard deviation, under `seeds/<pair>/<metric>/{mean,lower,upper}`, at the step each
# epoch ends (that of the per-run curves). Its Custom Scalars layout has a category per pair
# with a margin chart per compared metric: one line and band per run, so BN against no BN in
# two colours, whatever the number of seeds. `+` sorts before the job directories' digits, so
# these categories come first on the page and the runs first in the list; `browse_url` filters
# the list to them, so they are what is selected when the page opens.
#
# A refresh writes a whole new events file per run (`events.out.tfevents.<version>.mean`, the
# versions counting up), starting with a SessionLog START at step 0: TensorBoard replaces the
# run's earlier points with the new ones (the Python loader purges on START; RustBoard, the
# default loader, drops earlier points of a series when a step repeats). Older files are kept:
# the Python loader stops at a file deleted under it. Jobs finish concurrently, so a refresh
# holds a lock on `+mean/.lock`; each file is written beside its final name and renamed.

MEAN_DIR = "+mean"


def mean_tag(pair: str, metric: str, part: str) -> str:
    """`seeds/<pair>/<metric with _ for />/<part>`, part: mean, lower or upper."""
    return f"seeds/{pair}/{metric.replace('/', '_')}/{part}"


def mean_group(record: RunRecord) -> str:
    """The line a finished run joins within its pair: its norm, then every other setting the
    sweep varies, as in its run name (`bn`, `bn-lr=0.1`; the seed left out)."""
    hp = record.hparams
    prefix = f"{hp['dataset']}-{hp['norm']}-{hp['optim']}-seed{hp['seed']}"
    swept = record.run_name[len(prefix):] if record.run_name.startswith(prefix) else ""
    return f"{hp['norm']}{swept}".replace("/", "_")


def mean_curves(records: list[RunRecord]) -> dict[str, dict[str, dict[str, list[tuple]]]]:
    """`curves[group][pair][metric]` = [(step, mean, std, n)] over the finished (`ok`) runs'
    per-epoch history: at each epoch the runs that reached it, the step the per-run curves
    use (the epoch's last step), the sample std (0 for one run)."""
    import pandas as pd  # here: the callbacks import this module at every run's start

    rows = [(mean_group(r), pair_name(r.hparams["dataset"], r.hparams["optim"]), metric, epoch,
             row["step"] - 1, row.get(metric)) for r in records if r.status == "ok" and r.hparams
            for epoch, row in enumerate(r.history) for metric in COMPARED]
    table = pd.DataFrame(rows, columns=["group", "pair", "metric", "epoch", "step", "value"])
    table = table[table["value"].map(lambda v: v is not None and math.isfinite(v))]
    stats = table.astype({"value": float}).groupby(["group", "pair", "metric", "epoch"]).agg(
        step=("step", "min"), mean=("value", "mean"), std=("value", "std"), n=("value", "size"))
    curves: dict = {}
    for (group, pair, metric, _), row in stats.fillna({"std": 0.0}).iterrows():
        curves.setdefault(group, {}).setdefault(pair, {}).setdefault(metric, []).append(
            (int(row["step"]), row["mean"], row["std"], int(row["n"])))
    return curves


def mean_layout(pairs: Iterable[str], curves: dict | None = None) -> dict:
    """The Custom Scalars layout of the `+mean` runs (torch's `add_custom_scalars` format): a
    category per pair, in the order given, titled with the seeds each line holds so far
    (`mean_curves`' runs at the first epoch), and a margin chart per compared metric."""
    def seeds(pair: str) -> str:
        counts = {group: by_pair[pair]["val/acc"][0][3] for group, by_pair in (curves or {}).items()
                  if by_pair.get(pair, {}).get("val/acc")}
        if not counts:
            return "seeds"
        if len(set(counts.values())) == 1:
            return f"{next(iter(counts.values()))} seed(s) each"
        return "seeds (" + ", ".join(f"{group} {n}" for group, n in counts.items()) + ")"

    return {f"{pair.replace('-', ' · ')} · mean ± std over {seeds(pair)}": {
        f"{pair.replace('-', ' · ')} · {metric}":
            ["Margin", [mean_tag(pair, metric, part) for part in ("mean", "lower", "upper")]]
        for metric in COMPARED} for pair in pairs}


def mean_events(curves: dict[str, dict[str, list[tuple]]], layout: dict,
                now: float | None = None) -> bytes:
    """One `+mean` run's events file: version, SessionLog START, layout, then the curves of
    its pairs (`mean_curves(...)[group]`), all at the wall time `now` (default: the clock's)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import custom_scalars, scalar

    now, buffer = time.time() if now is None else now, io.BytesIO()
    records = RecordWriter(buffer)
    for event in (Event(wall_time=now, file_version="brain.Event:2"),
                  Event(wall_time=now, step=0, session_log=SessionLog(status=SessionLog.START)),
                  Event(wall_time=now, step=0, summary=custom_scalars(layout))):
        records.write(event.SerializeToString())
    for pair, by_metric in curves.items():
        for metric, curve in by_metric.items():
            for step, mean, std, _ in curve:
                for part, value in (("mean", mean), ("lower", mean - std), ("upper", mean + std)):
                    records.write(Event(wall_time=now, step=step, summary=scalar(
                        mean_tag(pair, metric, part), value)).SerializeToString())
    return buffer.getvalue()


def refresh_mean_runs(sweep_dir: str | Path, timeout: float = 60) -> list[str]:
    """Rewrites the sweep's `+mean` runs from its jobs' records (see above); returns their
    names (`+mean/bn`, ...). Waits up to `timeout` seconds for a concurrent refresh."""
    from filelock import FileLock

    sweep_dir = Path(sweep_dir)
    root = sweep_dir / MEAN_DIR
    root.mkdir(exist_ok=True)
    with FileLock(root / ".lock", timeout=timeout):  # the records as they are now, read
        jobs = sorted((p.parent for p in sweep_dir.glob(f"*/{RECORD_NAME}")), key=job_order)
        found = [r for r in map(RunRecord.read, jobs) if r is not None and r.hparams]
        pairs = dict.fromkeys(pair_name(r.hparams["dataset"], r.hparams["optim"])
                              for r in found)  # in the sweep's order
        curves = mean_curves(found)
        layout = mean_layout(pairs, curves)
        versions = [int(p.name.split(".")[3]) for p in root.glob("*/events.out.tfevents.*.mean")]
        version = max(versions, default=0) + 1
        # dated when the sweep started (Hydra's multirun.yaml): TensorBoard lists runs by their
        # first event's time, so these come first, and take the first colours of its palette
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
    """`refresh_mean_runs` for a job that just ended; a failure (a full disk, a lock held too
    long) is a warning: the view is derived from the records, and the next job redoes it."""
    from filelock import Timeout

    try:
        refresh_mean_runs(sweep_dir)
    except (OSError, Timeout) as err:
        logging.getLogger("bnstudy").warning(
            "The sweep's mean-over-seeds view in %s/%s was not updated (%s); the next job "
            "that ends updates it.", sweep_dir, MEAN_DIR, err)
