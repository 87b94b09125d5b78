"""The trackers a run logs to: Lightning's loggers (TensorBoard, CSV, MLflow, Weights &
Biases), one config file each in `conf/logger/`, several at once with
`'logger=[tensorboard,mlflow]'`. Hydra builds them; the study adds only:

- a local MLflow SQLite store created once, under a lock: the jobs of a parallel sweep start
  together, and MLflow's first use of a new store is not safe to race;
- a W&B run left open by the previous job of the same process finished first (Lightning's
  logger would otherwise log this job into it);
- the run's settings (`bnstudy.config.hparams`) as every tracker's hyperparameters, except
  TensorBoard's, which gets the study's own HParams session (`bnstudy.dashboard`).

TensorBoard's own views (comparison tags, Custom Scalars, the HParams experiment, pictures)
are written only when TensorBoard is among the trackers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

from bnstudy.errors import ConfigError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

# The package each tracker needs, and the extra that installs it
NEEDS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}


def _kind(node: DictConfig) -> str:
    """The logger class's name, e.g. `MLFlowLogger`."""
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


def uses_tensorboard(logger_cfg: DictConfig | None) -> bool:
    """Whether the `logger` group holds a TensorBoard logger."""
    return any(_kind(node) == "TensorBoardLogger" for node in (logger_cfg or {}).values()
               if node is not None)


NAME_KEYS = {"MLFlowLogger": "run_name", "WandbLogger": "name"}  # a run's name in the tracker


def make_loggers(logger_cfg: DictConfig | None, run: str, resumed: dict | None = None
                 ) -> list[Logger]:
    """The loggers of the `logger` group, one per entry (`tensorboard`, `mlflow`, ...); a
    tracker's run without a name of its own is named `run` (the job directory's name, which
    is also its TensorBoard run's). `resumed`: the tracker runs a resumed run logged to
    (`tracker_runs`), which it goes on logging to (MLflow)."""
    loggers, resumed = [], resumed or {}
    for name, node in (logger_cfg or {}).items():
        if node is None:
            continue
        kind = _kind(node)
        if kind in NEEDS and importlib.util.find_spec(NEEDS[kind][0]) is None:
            package, extra = NEEDS[kind]
            raise ConfigError(
                f"logger={name} needs the {package} package, which is not installed. Install "
                f"it with pip install 'bnstudy[{extra}]' (or pip install {package}), or choose "
                "another tracker (logger=tensorboard, logger=csv).")
        if kind == "MLFlowLogger":
            prepare_mlflow_store(node)
        if kind == "WandbLogger":
            finish_open_wandb_run()
        named = {NAME_KEYS[kind]: run} if kind in NAME_KEYS and not node.get(NAME_KEYS[kind]) \
            else {}
        if kind == "MLFlowLogger" and resumed.get(kind) and not node.get("run_id"):
            named["run_id"] = resumed[kind]
        loggers.append(instantiate(node, **named))
    return loggers


def tracker_runs(loggers: list[Logger]) -> dict[str, str]:
    """The tracker runs a resume goes on logging to, by logger class: MLflow's run id. (A
    resumed CSV log is a new version beside the first, a W&B run a new run.)"""
    from lightning.pytorch.loggers import MLFlowLogger

    return {type(lg).__name__: lg.run_id for lg in loggers if isinstance(lg, MLFlowLogger)}


def log_settings(loggers: list[Logger], settings: dict) -> None:
    """The run's settings as the hyperparameters of every tracker but TensorBoard; an MLflow
    run that a resume goes on with keeps the values it has (MLflow refuses to change one)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            kept = logger.experiment.get_run(logger.run_id).data.params
            logger.log_hyperparams({k: v for k, v in settings.items() if k not in kept})
        elif not isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(settings)


def prepare_mlflow_store(node: DictConfig) -> None:
    """Creates a local SQLite store and its experiment, if not there yet, holding a lock
    beside the store, so that jobs starting together do not race MLflow's set-up (which fails
    then). Other stores (a server, a database) are left to MLflow."""
    uri = str(node.get("tracking_uri") or "")
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables"
    with _locked(database.with_name(database.name + ".lock")):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{database}")  # creates the tables
        name = node.get("experiment_name") or "lightning_logs"
        if client.get_experiment_by_name(name) is None:
            location = node.get("artifact_location")
            if location and "://" not in str(location):  # a plain path
                location = str(Path(location).resolve())
            client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (a file kept beside the store) while the block runs; no
    lock where the system has no `fcntl`."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finish_open_wandb_run() -> None:
    """Finishes a W&B run still open in this process (the previous job of a sweep that runs
    its jobs in one process), so that this job gets a run of its own."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
