"""The trackers (`bnstudy.trackers`, `conf/logger/`), each with its real library, offline: the
study's scalars and settings reach each; TensorBoard's own views only where it is used."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from helpers import (
    FAST,
    REPO,
    compose_config,
    csv_rows,
    fresh_train,
    read_record,
    run_sweep,
    run_train,
    scalar_tags,
)
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from bnstudy import trackers
from bnstudy.config import group_defaults, hparams, overridden_keys
from bnstudy.errors import ConfigError
from bnstudy.trackers import uses_tensorboard

TINY = ("trainer.max_epochs=2", "callbacks.hallucinations.steps=2")


def needs(package: str) -> None:
    """Skips the test where the tracker's package (its extra) is not installed; fails in CI."""
    if importlib.util.find_spec(package) is None:
        message = f"{package} is not installed: pip install -e '.[{package}]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def curve(record: dict, key: str = "val/acc") -> list[tuple[int, float]]:
    """(step, value) of an epoch metric in a run's record."""
    return [(row["step"] - 1, row[key]) for row in record["history"]]  # logged at step - 1


def same_curve(got: list, want: list) -> bool:
    """The same steps, and values equal up to float rounding."""
    return [step for step, _ in got] == [step for step, _ in want] and \
        [value for _, value in got] == pytest.approx([value for _, value in want])


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/metrics.json"))


@pytest.mark.slow
def test_csv(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = run_train(*FAST, *TINY, f"paths.data_dir={tiny_data}", "logger=csv",
                     f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr
    record = read_record(run)
    rows = csv_rows(run / "csv" / "version_0" / "metrics.csv")
    assert same_curve([(int(r["step"]), float(r["val/acc"])) for r in rows if r["val/acc"]],
                      curve(record))
    assert [float(r["train/loss"]) for r in rows if r["train/loss"]] == \
        pytest.approx([row["train/loss"] for row in record["history"]])
    assert [float(r["test/acc"]) for r in rows if r["test/acc"]] == \
        pytest.approx([record["test"]["acc"]])
    hparams = yaml.safe_load((run / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams == record["hparams"]
    assert not list(run.glob("events.out.tfevents.*"))  # no TensorBoard: none of its views
    assert f"Files: {run} (metrics.json, checkpoints/, images/)" in proc.stderr  # nor its link


def test_a_missing_tracker_package_is_one_paragraph(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = compose_config("logger=[tensorboard,mlflow]", "paths.output_dir=/unused")
    with pytest.raises(ConfigError) as refused:
        trackers.make_loggers(cfg.logger, "run")
    assert str(refused.value) == (
        "logger=mlflow needs the mlflow package, which is not installed. Install it with pip "
        "install 'bnstudy[mlflow]' (or pip install mlflow), or choose another tracker "
        "(logger=tensorboard, logger=csv).")


def test_the_tracker_choice_is_bookkeeping_not_a_setting_and_says_whether_tensorboard_logs():
    for choice, board in (("logger=csv", False), ("logger=[tensorboard,mlflow]", True),
                          ("logger=[csv,tensorboard]", True)):
        cfg = compose_config(choice)
        assert uses_tensorboard(cfg.logger) == board
        assert cfg.run_name == "mnist-bn-sgd-seed0"  # not named after the tracker
        settings = hparams(cfg, group_defaults(HydraConfig.get().runtime.choices),
                           overridden_keys([choice]))
        assert not [key for key in settings if key.startswith("logger")], settings
    assert uses_tensorboard(compose_config().logger)
    assert not uses_tensorboard(None) and not uses_tensorboard(OmegaConf.create({"x": None}))


# --- MLflow ---------------------------------------------------------------------------------


def mlflow_runs(store: Path) -> dict:
    """The `bnstudy` experiment's runs by name (each once), val/test acc as [(step, value)]."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("bnstudy").experiment_id])
    by_name = {run.info.run_name: (run, {key: [(m.step, m.value) for m in
                                               client.get_metric_history(run.info.run_id, key)]
                                         for key in ("val/acc", "test/acc")}) for run in runs}
    assert len(by_name) == len(runs), [run.info.run_name for run in runs]
    return by_name


@pytest.mark.slow
def test_mlflow_local_store_holds_each_job_of_a_sweep(tiny_data, tmp_path):
    needs("mlflow")
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, tiny_data, *TINY, "logger=mlflow", "norm=bn,none")
    assert proc.returncode == 0, proc.stderr
    runs = mlflow_runs(sweep / "mlflow.db")  # one store per sweep, beside its jobs
    jobs = job_dirs(sweep)
    assert sorted(runs) == [job.name for job in jobs]  # named as the TensorBoard runs would be
    for job in jobs:
        record = read_record(job)
        run, metrics = runs[job.name]
        assert run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in record["hparams"].items()}
        assert same_curve(metrics["val/acc"], curve(record))
        assert [value for _, value in metrics["test/acc"]] == pytest.approx(
            [record["test"]["acc"]])
    assert not list(sweep.rglob("events.out.tfevents.*"))  # no TensorBoard, not even HParams
    assert "mlflow.store" not in proc.stderr and "Creating initial" not in proc.stderr
    assert "tensorboard --logdir" not in proc.stdout + proc.stderr  # nor a link to it


@pytest.mark.slow
def test_a_resumed_run_goes_on_in_its_mlflow_run_beside_tensorboard(tiny_data, tmp_path):
    """Resumed with an observer's setting changed: one finished MLflow run, its first value."""
    needs("mlflow")
    job = tmp_path / "job"
    common = (*FAST, f"paths.data_dir={tiny_data}", *TINY, "logger=[tensorboard,mlflow]",
              f"hydra.run.dir={job}")
    first = run_train(*common, "callbacks.weight_grid.every_n_epochs=1",
                      "+callbacks.interrupt._target_=tests.faults.InterruptAtEpoch",
                      "+callbacks.interrupt.epoch=1")
    assert first.returncode == 1 and read_record(job)["status"] == "interrupted", first.stderr
    resumed = run_train(*common, "callbacks.weight_grid.every_n_epochs=2", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = read_record(job)
    (run, metrics), = mlflow_runs(tmp_path / "mlflow.db").values()  # beside the job
    assert record["trackers"] == {"MLFlowLogger": run.info.run_id}
    assert run.info.run_name == "job" and run.info.status == "FINISHED"
    assert len(record["history"]) == 2 and same_curve(metrics["val/acc"], curve(record))
    assert run.data.params["callbacks.weight_grid.every_n_epochs"] == "1"
    assert {"val/acc", "test/acc", "compare/mnist-sgd/val_acc"} <= scalar_tags(job)
    assert "compare/mnist-sgd/val_acc" not in run.data.metrics  # TensorBoard's alone


MLFLOW_JOB = """
import sys
from omegaconf import OmegaConf
from bnstudy.trackers import make_loggers
cfg = OmegaConf.create({"mlflow": {"_target_": "lightning.pytorch.loggers.MLFlowLogger",
                                   "experiment_name": "bnstudy", "run_name": None,
                                   "tracking_uri": "sqlite:///" + sys.argv[1]}})
(logger,) = make_loggers(cfg, sys.argv[2])
logger.log_hyperparams({"job": sys.argv[2]})
logger.log_metrics({"val/acc": 0.5}, step=1)
logger.finalize("success")
"""


@pytest.mark.slow
def test_mlflow_jobs_starting_together_share_a_new_store(tmp_path):
    needs("mlflow")
    # A parallel sweep's jobs start together: without the lock MLflow's set-up of the store fails
    store = tmp_path / "sweep" / "mlflow.db"
    procs = [subprocess.Popen([sys.executable, "-c", MLFLOW_JOB, str(store), f"job{i}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert sorted(mlflow_runs(store)) == ["job0", "job1", "job2"]


# --- Weights & Biases -----------------------------------------------------------------------


def wandb_records(path: Path):
    """W&B's protobuf `Record`s in an offline run file: a LevelDB-style log of 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # the rest of the block is padding
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def wandb_run(path: Path) -> dict[str, list]:
    """A run file's records by type; a history or config one as {key: value} (nested keys: a/b)."""
    found: dict[str, list] = {}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        items = {"history": rec.history.item, "config": rec.config.update}.get(kind)
        found.setdefault(kind, []).append(rec if items is None else {
            item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return found


def wandb_curve(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["trainer/global_step"], h["val/acc"]) for h in history if "val/acc" in h]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> None:
    """W&B offline (and no network: W&B's own switch as well), its folders in `tmp_path`."""
    needs("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))


@pytest.mark.slow
@pytest.mark.usefixtures("wandb_offline")
def test_wandb_offline_writes_a_run_per_job_and_a_resumed_job_goes_on_in_it(tiny_data, tmp_path):
    """Issue #34: a sweep interrupted in its first job's second epoch, resumed: the job's two
    attempts' offline runs carry its one run id; loggers built with stored ids keep them."""
    cfg = compose_config("logger=[csv,wandb]", f"paths.output_dir={tmp_path / 'job'}")
    stored = {"CSVLogger": 3, "WandbLogger": "run0123"}
    csv_log, wandb_log = trackers.make_loggers(cfg.logger, "job", stored)
    assert trackers.tracker_runs([csv_log, wandb_log]) == stored
    assert wandb_log._wandb_init["resume"] == "allow"
    cfg = compose_config("logger=[csv,wandb]", f"paths.output_dir={tmp_path / 'fresh'}")
    runs = trackers.tracker_runs(trackers.make_loggers(cfg.logger, "fresh"))
    assert runs["CSVLogger"] == 0 and len(runs["WandbLogger"]) == 8
    sweep = tmp_path / "sweep"
    # Hydra's basic launcher runs the jobs in one process (a fresh one: W&B's state is global),
    # and each must get a W&B run of its own.
    common = ("-m", *FAST, "seed=0", f"paths.data_dir={tiny_data}", *TINY, "norm=bn,none",
              f"hydra.sweep.dir={sweep}", "logger=[csv,wandb]")
    first = fresh_train(*common, "+callbacks.interrupt._target_=tests.faults.InterruptAtEpoch",
                        "+callbacks.interrupt.epoch=1")  # Ctrl-C stops the whole sweep
    assert first.returncode != 0 and [read_record(job)["status"] for job in job_dirs(sweep)] \
        == ["interrupted"], first.stderr[-3000:]
    proc = fresh_train(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wandb:" not in first.stderr + proc.stderr + proc.stdout  # silent on the console
    for job, attempts in zip(job_dirs(sweep), (2, 1), strict=True):
        record = read_record(job)
        assert len(record["history"]) == 2
        run_id = record["trackers"]["WandbLogger"]
        files = sorted((job / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
        assert len(files) == attempts == len(list((job / "wandb").glob("offline-run-*")))
        run = [wandb_run(file) for file in files]
        assert [r.run.display_name for a in run for r in a["run"]] == [job.name] * attempts
        assert len(run[-1].get("exit", [])) == 1  # finished
        assert same_curve(wandb_curve([h for a in run for h in a["history"]]), curve(record))
        config = {k: v for update in run[-1]["config"] for k, v in update.items()}  # (the first
        # attempt's settings have the interrupting callback too)
        assert {k: v for k, v in config.items() if not k.startswith("_")} == record["hparams"]
    assert not list(sweep.rglob("events.out.tfevents.*"))


def test_a_resumed_csv_log_keeps_its_rows_under_its_header(tmp_path):
    """Issue #34: Lightning's CSV writer clears metrics.csv when it starts; a resumed run's
    logger puts the earlier rows back. A run id in the config is kept, a null tracker skipped."""
    cfg = compose_config("logger=csv", f"paths.output_dir={tmp_path}")
    (first,) = trackers.make_loggers(cfg.logger, "job", {"CSVLogger": 0})  # no row saved yet
    metrics = Path(first.log_dir) / "metrics.csv"
    assert not metrics.exists() and first.experiment.metrics_keys == []
    first.log_metrics({"val/acc": 0.5, "epoch": 0}, step=9)
    first.save()
    assert csv_rows(metrics) == [{"val/acc": "0.5", "epoch": "0", "step": "9"}]
    kept = metrics.read_text()
    (resumed,) = trackers.make_loggers(cfg.logger, "job", {"CSVLogger": 0})
    assert resumed.log_dir == first.log_dir and metrics.read_text() == kept
    resumed.log_metrics({"val/acc": 0.75}, step=19)  # fewer keys: the earlier header still holds
    resumed.save()
    rows = [(r["step"], r["val/acc"], r["epoch"]) for r in csv_rows(metrics)]
    assert rows == [("9", "0.5", "0"), ("19", "0.75", "")]
    assert metrics.read_text().partition("\n")[0] == kept.partition("\n")[0]
    # resumed from the checkpoint at step 9: what was logged at it stays, what after it goes
    (again,) = trackers.make_loggers(cfg.logger, "job", {"CSVLogger": 0}, step=9)
    assert [r["step"] for r in csv_rows(metrics)] == ["9"] and again.log_dir == first.log_dir
    (board,) = trackers.make_loggers(compose_config(f"paths.output_dir={tmp_path}").logger, "job",
                                     {}, step=9)
    assert board._kwargs["purge_step"] == 10  # TensorBoard drops the earlier steps 10 and on
    cfg = compose_config("logger=[tensorboard,csv]", "logger.tensorboard=null",  # skipped
                         f"paths.output_dir={tmp_path}", "+logger.csv.version=5")
    (csv_log,) = trackers.make_loggers(cfg.logger, "job", {"CSVLogger": 0})
    assert csv_log.version == 5  # set in the config: not the stored one


def test_a_wandb_run_left_open_by_the_previous_job_is_finished_first(monkeypatch):
    """(Also in the slow `test_wandb_offline_writes_a_run_per_job`; here for the fast tests.)"""
    needs("wandb")
    import wandb

    finished = []
    monkeypatch.setattr(wandb, "finish", lambda: finished.append(wandb.run))
    for open_run in (None, "the previous job's run"):  # none open: none finished
        monkeypatch.setattr(wandb, "run", open_run)
        trackers.finish_open_wandb_run()
        assert finished == ([open_run] if open_run else [])


@pytest.mark.slow
def test_a_local_mlflow_store_is_made_once_and_a_resumed_run_keeps_its_settings(tmp_path):
    """Made before the logger starts, artifacts at an absolute path; MLflow refuses to change a
    setting, new ones are added. Issue #36: a stored run id goes to the logger, no server asked."""
    needs("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "sweep" / "mlflow.db"
    cfg = compose_config("logger=mlflow", f"paths.output_dir={tmp_path / 'sweep' / '0_job'}")
    with mock.patch.object(MlflowClient, "create_experiment", side_effect=KeyboardInterrupt), \
            pytest.raises(KeyboardInterrupt):  # Ctrl-C during the set-up: no half store left
        trackers.prepare_mlflow_store(cfg.logger.mlflow)
    assert [p.name for p in store.parent.iterdir()] == ["mlflow.db.lock"]
    trackers.prepare_mlflow_store(cfg.logger.mlflow)
    trackers.prepare_mlflow_store(cfg.logger.mlflow)  # the next job: found, not made again
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("bnstudy")
    assert experiment.artifact_location == str(tmp_path / "sweep" / "mlartifacts")
    (logger,) = trackers.make_loggers(cfg.logger, "0_job")
    trackers.log_settings([logger], {"seed": 0, "lr": 0.1})
    run_id = trackers.tracker_runs([logger])["MLFlowLogger"]
    (resumed,) = trackers.make_loggers(cfg.logger, "0_job", {"MLFlowLogger": run_id})
    trackers.log_settings([resumed], {"seed": 0, "lr": 0.2, "threads": 1})
    run = client.get_run(run_id)
    assert run.info.run_name == "0_job"
    assert run.data.params == {"seed": "0", "lr": "0.1", "threads": "1"}
    trackers.prepare_mlflow_store(OmegaConf.create({"tracking_uri": f"sqlite:///{store}"}))
    assert client.get_experiment_by_name("lightning_logs")  # none named: Lightning's default
    deep = tmp_path / "a" / "b" / "mlflow.db"  # its folders made; a URI's artifacts as given
    trackers.prepare_mlflow_store(OmegaConf.create({
        "tracking_uri": f"sqlite:///{deep}", "experiment_name": "uri",
        "artifact_location": "file:///srv/mlartifacts"}))
    assert MlflowClient(f"sqlite:///{deep}").get_experiment_by_name(
        "uri").artifact_location == "file:///srv/mlartifacts"
    server = compose_config("logger=[tensorboard,mlflow]", "paths.output_dir=/unused/job",
                            "logger.mlflow.tracking_uri=http://127.0.0.1:9").logger
    _, resumed = trackers.make_loggers(server, "job", {"MLFlowLogger": "0123abcd"})
    _, fresh = trackers.make_loggers(server, "job")
    assert resumed._run_id == "0123abcd" and fresh._run_id is None and fresh._run_name == "job"
