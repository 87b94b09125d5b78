"""The trackers a run logs to: Lightning's loggers of `conf/logger/` (several at once:
`'logger=[tensorboard,mlflow]'`), built by Hydra, plus a local MLflow store made once under a
lock, a W&B run left open by the process's previous job finished first, a resumed run continued
in its tracker runs, and the run's settings as every tracker's hyperparameters."""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

from bnstudy.errors import ConfigError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

NEEDS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}  # the package (and extra) it needs
NAME_KEYS = {"MLFlowLogger": "run_name", "WandbLogger": "name"}  # a run's name in the tracker
RUN_KEYS = {"MLFlowLogger": "run_id", "CSVLogger": "version", "WandbLogger": "id"}  # its run


def _nodes(logger_cfg: DictConfig | None) -> Iterator[tuple[str, DictConfig, str]]:
    """The `logger` group's loggers (its nulls left out): name, node, class name (`CSVLogger`)."""
    return ((name, node, str(node.get("_target_", "")).rsplit(".", 1)[-1])
            for name, node in (logger_cfg or {}).items() if node is not None)


def uses_tensorboard(logger_cfg: DictConfig | None) -> bool:
    """Whether the `logger` group holds a TensorBoard logger."""
    return any(kind == "TensorBoardLogger" for _, _, kind in _nodes(logger_cfg))


def make_loggers(logger_cfg: DictConfig | None, run: str, resumed: dict | None = None,
                 step: int | None = None) -> list[Logger]:
    """The loggers of the `logger` group, a run without a name of its own named `run`.
    `resumed`: the tracker runs (`tracker_runs`) a resumed run goes on in after its checkpoint's
    global `step`; what was logged after that step goes (TensorBoard's purge, the CSV rows)."""
    loggers, resumed = [], resumed or {}
    for name, node, kind in _nodes(logger_cfg):
        if kind in NEEDS and importlib.util.find_spec(package := NEEDS[kind]) is None:
            raise ConfigError(
                f"logger={name} needs the {package} package, which is not installed. Install "
                f"it with pip install 'bnstudy[{package}]' (or pip install {package}), or choose "
                "another tracker (logger=tensorboard, logger=csv).")
        if kind == "MLFlowLogger":
            prepare_mlflow_store(node)
        if kind == "WandbLogger":
            finish_open_wandb_run()
        named = {NAME_KEYS[kind]: run} if kind in NAME_KEYS and not node.get(NAME_KEYS[kind]) \
            else {}
        if kind == "TensorBoardLogger" and step is not None:
            named["purge_step"] = step + 1  # SummaryWriter's: earlier files' events from it go
        if kind in RUN_KEYS and node.get(RUN_KEYS[kind]) is None:
            if resumed.get(kind) is not None:
                named[RUN_KEYS[kind]] = resumed[kind]
            if kind == "WandbLogger":  # its id known before it starts, for a resume to reuse
                named.update(id=resumed.get(kind) or secrets.token_hex(4), resume="allow")
        loggers.append(instantiate(node, **named))
        if kind == "WandbLogger":  # Lightning's `anonymous=None` makes wandb.init warn, each run
            loggers[-1]._wandb_init.pop("anonymous", None)
        if kind == "CSVLogger" and resumed.get(kind) is not None:
            continue_csv(loggers[-1], step)
    return loggers


def tracker_runs(loggers: list[Logger]) -> dict[str, str | int]:
    """The tracker runs a resume goes on logging to, by logger class."""
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger

    return {type(lg).__name__: lg.run_id if isinstance(lg, MLFlowLogger) else lg.version
            for lg in loggers if isinstance(lg, MLFlowLogger | CSVLogger | WandbLogger)}


def continue_csv(logger, step: int | None = None) -> None:
    """Keeps the rows up to `step` of a resumed run's `metrics.csv`, which Lightning's CSV
    writer clears when it starts, for the run to append to under the same header."""
    metrics = Path(logger.log_dir) / "metrics.csv"
    kept = metrics.read_text() if metrics.is_file() else ""
    writer = logger.experiment  # clears the file
    if kept and hasattr(writer, "metrics_keys"):  # rank 0's writer
        header, *rows = kept.splitlines(keepends=True)
        keys = next(csv.reader([header]))
        at = keys.index("step") if "step" in keys else None
        metrics.write_text(header + "".join(
            row for row in rows if step is None or at is None
            or int(float(next(csv.reader([row]))[at] or 0)) <= step))
        writer.metrics_keys = keys


def log_settings(loggers: list[Logger], settings: dict) -> None:
    """The run's settings as every tracker's hyperparameters (TensorBoard: `hparams.yaml`
    alone); a resumed MLflow run keeps the values it has (MLflow refuses to change one)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            kept = logger.experiment.get_run(logger.run_id).data.params
            logger.log_hyperparams({k: v for k, v in settings.items() if k not in kept})
        elif isinstance(logger, TensorBoardLogger):
            logger.hparams.update(settings)  # what its hparams.yaml holds
        else:
            logger.log_hyperparams(settings)


def prepare_mlflow_store(node: DictConfig) -> None:
    """Creates a local SQLite store and its experiment if not there yet, under a lock (jobs
    starting together race MLflow's set-up), whole or not at all: made aside, then renamed (a
    Ctrl-C during the set-up left half its tables). Other stores are MLflow's."""
    uri = str(node.get("tracking_uri") or "")
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables"
    from filelock import FileLock

    with FileLock(database.with_name(database.name + ".lock")):
        if database.exists():
            _experiment(database, node)
            return
        partial = database.with_name(f".{database.name}.{secrets.token_hex(4)}.new")
        try:
            _experiment(partial, node)
            os.replace(partial, database)
        finally:
            partial.unlink(missing_ok=True)


def _experiment(database: Path, node: DictConfig) -> None:
    """The store's experiment `node.experiment_name`, made if not there (with its tables)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{database}")  # creates the tables
    name = node.get("experiment_name") or "lightning_logs"
    if client.get_experiment_by_name(name) is None:
        location = node.get("artifact_location")
        if location and "://" not in str(location):  # a plain path
            location = str(Path(location).resolve())
        client.create_experiment(name, artifact_location=location)


def finish_open_wandb_run() -> None:
    """Finishes a W&B run still open in this process (a sweep's previous job's)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
