"""What TensorBoard shows beyond Lightning's own logging: the study's comparison at a glance.

Tag scheme. Every run logs its curves as `train/loss`, `train/acc`, `val/loss`, `val/acc`,
`test/*` (Lightning), and `ComparisonCurves` copies three of them per epoch under its
dataset × optimizer pair, `compare/<dataset>-<optim>/{train_loss,val_loss,val_acc}`. Only the
BN and no-BN runs (all seeds) of one pair carry that pair's tags, so a chart of them compares
exactly those runs: the Custom Scalars layout each run writes has a category per pair
("mnist · sgd") with those three charts, and in Time Series the `compare` section comes first.

HParams: each run writes its session (its settings, `bnstudy.config.hparams`); the experiment
(every setting with its discrete values, those that vary first; the metrics `val/acc`,
`val/loss`, `test/acc`, `test/loss`) is written once per sweep, at its root, when it ends, or
into the run's own directory for a single run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

COMPARED = ("train/loss", "val/loss", "val/acc")
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
    """Writes the run's pair layout when fitting starts and, after each training epoch, the
    compared curves under the pair's tags (see the module docstring), on rank 0."""

    def __init__(self, dataset: str, optim: str) -> None:
        self.pair = pair_name(dataset, optim)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and trainer.is_global_zero:
            writer.add_custom_scalars(comparison_layout([self.pair]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        for metric in COMPARED:
            if metric in metrics:  # at the step Lightning logs epoch values (the last taken)
                writer.add_scalar(compare_tag(self.pair, metric), float(metrics[metric]),
                                  trainer.global_step - 1)


def tb_value(value):
    """An hparam value as TensorBoard's HParams shows it: floats and strings as they are,
    integers as text (`64`, not `64.000`), anything else (lists, None, bools) as text."""
    return value if isinstance(value, float | str) and not isinstance(value, bool) else str(value)


def write_session(writer: SummaryWriter, settings: dict) -> None:
    """The run's HParams session: its settings (see `tb_value`)."""
    writer.file_writer.add_summary(hp.hparams_pb({k: tb_value(v) for k, v in settings.items()}))


def write_experiment(writer: SummaryWriter, runs_settings: list[dict]) -> None:
    """The HParams experiment of runs' settings: the settings that vary across them (and the
    study's four choices, dataset, norm, optim and seed, even when fixed) with their discrete
    values, so that the table's columns are what tells the runs apart; the study's metrics.
    (Every setting of a run is in its session and its metrics.json.)"""
    values: dict[str, set] = {}
    for settings in runs_settings:
        for key, value in settings.items():
            values.setdefault(key, set()).add(tb_value(value))
    shown = [k for k in values if len(values[k]) > 1 or k in ("dataset", "norm", "optim", "seed")]
    hparams = [hp.HParam(key, hp.Discrete(sorted(values[key]) if len({type(v) for v in values[key]})
                                          == 1 else sorted(map(str, values[key]))))
               for key in shown]  # (a domain holds one type)
    metrics = [hp.Metric(tag, display_name=tag) for tag in METRICS]
    writer.file_writer.add_summary(hp.hparams_config_pb(hparams, metrics))


def write_sweep_experiment(sweep_dir: Path, runs_settings: list[dict]) -> None:
    """Writes the sweep's HParams experiment into an events file at `sweep_dir`'s root."""
    with SummaryWriter(str(sweep_dir)) as writer:
        write_experiment(writer, runs_settings)
