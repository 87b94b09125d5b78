"""`bnstudy.run.train(cfg)` in this process: record, resume, requeue, checks, failures."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    ARRAY_TASK,
    FAST,
    checkpoint_hits,
    compose_config,
    csv_rows,
    launcher_env,
    run_train,
    scalars,
    train_run,
)

from bnstudy.callbacks import DivergenceGuard
from bnstudy.errors import arguments_refused
from bnstudy.jobdir import RunExistsError
from bnstudy.records import RunRecord
from bnstudy.run import RunEnded, build, check_job_dir, discard_untrained, train

CURVES = ("train/loss", "train/acc", "val/loss", "val/acc")
INTERRUPT = ("+callbacks.stop._target_=tests.faults.InterruptAtEpoch", "+callbacks.stop.epoch=2")


def without_time(record: RunRecord) -> tuple[list, dict]:
    """A record's history (without the clock) and test metrics: what must match exactly."""
    return [{k: v for k, v in row.items() if k != "time_s"} for row in record.history], record.test


def test_a_run_records_each_splits_values_its_settings_and_each_test_images_hit(
        tiny_data, tmp_path, caplog, capsys):
    """Run from Python, its `.hydra/` is a job's: eval rebuilds it, a changed resume is refused."""
    import json
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    from bnstudy import eval as evaluate
    from bnstudy.report.runs import load_runs

    job = tmp_path / "0_tested"
    with caplog.at_level(logging.INFO):
        record = train_run(tiny_data, job, "dataset.lr=0.002", "seed=2")
    assert capsys.readouterr().out == ""  # not Lightning's table of test metrics
    assert record.run_name == "mnist-bn-sgd-seed2-lr=0.002-max_epochs=1"
    assert f"{record.run_name}: training 1 epoch into {job}" in caplog.messages
    assert "Seed set to" not in caplog.text  # Lightning's line, not the study's
    assert record == RunRecord.read(job) and record.status == "ok"
    assert record.test["loss"] > 0 and record.test["acc"] == record.test_acc
    (row,) = record.history
    for key in CURVES:
        assert [v for _, v in scalars(job, key)] == [pytest.approx(row[key])], key
    assert row["train/acc"] != row["val/acc"]
    assert record.epochs_trained == 1 and record.wall_time_s > 0 and record.torch_threads == 1
    content = EventAccumulator(str(job)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    hparams = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]).hparams
    numbers = ("seed", "max_epochs", "lr", "batch_size", "hidden_dim", "depth")
    assert {k: hparams[k].WhichOneof("kind") for k in numbers} == \
        dict.fromkeys(numbers, "number_value")  # TensorBoard sorts and filters them by value
    assert (hparams["seed"].number_value, hparams["max_epochs"].number_value) == (2, 1)
    assert {hparams[k].WhichOneof("kind") for k in ("dataset", "norm", "optim")} == \
        {"string_value"}
    assert metadata.EXPERIMENT_TAG in content  # a single run writes its experiment itself
    assert yaml.safe_load((job / "hparams.yaml").read_text()) == record.hparams  # Lightning's
    correct = np.load(job / "test_correct.npy")
    assert correct.dtype == bool and correct.shape == (200,)  # tiny MNIST's test images
    assert 0.2 < correct.mean() < 0.8  # hits and misses both: their order is checked below
    assert correct.mean() == pytest.approx(record.test_acc, abs=1e-6)
    assert np.array_equal(correct, checkpoint_hits(job, tiny_data))
    assert evaluate.main([str(job)]) == 0, capsys.readouterr().err
    assert json.loads((job / "eval.json").read_text())["test"]["acc"] == \
        pytest.approx(record.test_acc, abs=1e-7)
    with pytest.raises(RunExistsError, match="was run with other settings: dataset.lr: "):
        train_run(tiny_data, job, "resume=true", "dataset.lr=0.5", "seed=2")
    stored = (job / ".hydra" / "config.yaml").read_bytes()
    with caplog.at_level(logging.INFO):  # finished: skipped, its config kept as first composed
        assert train_run(tiny_data, job, "resume=true", "dataset.lr=0.002", "seed=2") == record
    assert f"{record.run_name} already finished: skipped" in caplog.messages
    assert (job / ".hydra" / "config.yaml").read_bytes() == stored
    RunRecord(status="ok").write(tmp_path / "1_untested" / "metrics.json")
    tested, untested = load_runs(tmp_path)["test_correct"]
    assert np.array_equal(tested, correct) and untested is None


def test_an_interrupted_run_says_how_to_go_on_and_resumes_to_the_uninterrupted_result(
        tiny_data, tmp_path):
    """Through the entry point, even from the checkpoint before a cut-short `last.ckpt`."""
    common = ("trainer.max_epochs=3", "trainer.limit_train_batches=2", "seed=7",
              "logger=[tensorboard,csv]")
    straight = train_run(tiny_data, tmp_path / "a", *common)
    job = tmp_path / "b"
    entry = (*FAST, *common, "~callbacks.hallucinations", f"paths.data_dir={tiny_data}",
             f"hydra.run.dir={job}")
    stopped = run_train(*entry, *INTERRUPT, "+callbacks.slow._target_=tests.faults.SlowEpochs",
                        "+callbacks.slow.seconds=0.5")  # each epoch 0.5 s longer
    go_on = f"To go on, run the same command with resume=true hydra.run.dir={job}."
    assert stopped.returncode == 1 and "keeps what it trained so far. " + go_on in stopped.stderr
    before = RunRecord.read(job)
    assert before.status == "interrupted" and len(before.history) == 2
    refused = run_train(*entry)
    assert refused.returncode == 1 and "already holds a run (status interrupted)" in \
        refused.stderr and "Traceback" not in refused.stderr
    assert "or choose another hydra.run.dir / hydra.sweep.dir." in refused.stderr  # as typed
    early = run_train(*entry, "resume=true", "+callbacks.stop._target_=tests.faults."
                      "InterruptWhenBuilt")  # Ctrl-C before Lightning's own handling
    assert early.returncode == 1 and "Traceback" not in early.stderr and go_on in early.stderr
    assert "before anything was trained" not in early.stderr  # (a sweep's process's words)
    assert f"training 3 epochs (resuming after epoch 2) into {job}" in early.stderr
    RunRecord.update(job / "metrics.json", error="boom", traceback="...")
    last = job / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100_000])  # as a kill during the save would leave it
    proc = run_train(*entry, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    console, log = proc.stdout + proc.stderr, (job / "train.log").read_text()
    for routine in ("GPU available", "`Trainer.fit` stopped"):
        assert routine not in console and routine in log  # kept, in the log file
    assert f"training 3 epochs (resuming after epoch 1) into {job}" in console  # .prev's
    assert ": ok, val acc " in console and f"Files: {job} (" in console
    assert "already holds a run" not in proc.stderr and refused.stderr not in log
    resumed = RunRecord.read(job)
    assert resumed.status == "ok" and resumed.error is None and resumed.traceback is None
    assert "last.ckpt" in resumed.resume_note and "Resumed from the previous" in resumed.resume_note
    assert (job / "checkpoints" / "last.ckpt.corrupt").is_file()  # set aside, not deleted
    assert resumed.history[:1] == before.history[:1]  # from the checkpoint, not trained again
    assert without_time(resumed) == without_time(straight)
    assert resumed.trackers == {"CSVLogger": 0}
    assert resumed.hparams["trainer.limit_train_batches"] == 2  # beyond the study's settings
    assert [p.name for p in (job / "csv").iterdir()] == ["version_0"]
    # each tracker's curves as the straight run's: the epoch after the checkpoint not repeated
    for tag in ("val/acc", "train/loss"):
        assert scalars(job, tag) == scalars(tmp_path / "a", tag), tag
    rows = [csv_rows(run / "csv" / "version_0" / "metrics.csv") for run in (job, tmp_path / "a")]
    assert [[(r["step"], r["val/acc"]) for r in logged if r["val/acc"]] for logged in rows] == \
        [[(r["step"], r["val/acc"]) for r in rows[1] if r["val/acc"]]] * 2
    # its time counts the epochs of both attempts, not the second attempt's alone
    assert resumed.wall_time_s > resumed.history[-1]["time_s"] > before.history[0]["time_s"] > 0.5
    again = run_train(*entry, "resume=true")  # finished: skipped
    assert again.returncode == 0 and "already finished: skipped" in again.stderr
    assert RunRecord.read(job) == resumed
    RunRecord.update(job / "metrics.json", status="interrupted")  # cut after its last epoch:
    finals = sorted(p.name for p in (job / "images").glob("*_final.*"))  # in its final drawing
    assert "weights_final.png" in finals and "weights_final.pt" in finals
    for name in finals:
        (job / "images" / name).unlink()
    tested = run_train(*entry, "resume=true")
    assert f"training 3 epochs (all 3 trained: resuming at its test) into {job}" in tested.stderr
    assert without_time(RunRecord.read(job)) == without_time(straight)
    assert sorted(p.name for p in (job / "images").glob("*_final.*")) == finals  # drawn again


def test_the_seed_sets_the_initial_weights(tiny_data, tmp_path):
    def initial(name: str, seed: int):
        train_run(tiny_data, tmp_path / name, f"seed={seed}", "dataset.lr=1e-12",
                  "trainer.limit_train_batches=1")
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt",
                          weights_only=True)["state_dict"]["net.fc1.weight"]

    a, b, c = initial("a", 0), initial("b", 0), initial("c", 1)
    assert a.allclose(b) and not a.allclose(c)  # (lr 1e-12 moves them by ~1e-13)


@pytest.mark.parametrize("fault, name, written", [
    ("DiskFullAtEpoch", "last.ckpt", "checkpoints/last.ckpt"),  # the study's own atomic write
    ("WriteFailsAtEpoch", "hparams.yaml", "hparams.yaml"),  # a library writing its own file
])
def test_a_full_disk_fails_the_run_in_one_paragraph_and_its_command_resumes(
        tiny_data, tmp_path, fault, name, written):
    common = ("trainer.max_epochs=2", "trainer.limit_train_batches=2")
    with pytest.raises(RunEnded) as ended:
        train_run(tiny_data, tmp_path, *common, f"+callbacks.full._target_=tests.faults.{fault}",
                  "+callbacks.full.epoch=1", f"+callbacks.full.name={name}")
    record = RunRecord.read(tmp_path)
    assert ended.value.status == record.status == "failed" and ended.value.trace is None
    assert record.error == str(ended.value) and record.traceback is None
    assert record.error.startswith(f"Could not write {tmp_path / written}: No space left on "
                                   "device.") and "\n" not in record.error
    assert "free space, or point paths.output_dir at another disk" in record.error  # as typed
    command = record.error.split("Resume with: ")[1]
    assert command.startswith("python -m bnstudy.train ") and \
        command.endswith(f" resume=true hydra.run.dir={tmp_path}")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not list(tmp_path.rglob("*.tmp"))  # no partial file
    resumed = train_run(tiny_data, tmp_path, *common, "resume=true")  # the disk freed
    assert resumed.status == "ok" and len(resumed.history) == 2


def test_divergence_stops_early_and_is_a_result(tiny_data, tmp_path, caplog):
    record = train_run(tiny_data, tmp_path, "norm=none", "dataset.lr=1e12",
                       "trainer.max_epochs=3")
    assert record.status == "diverged" and record.finished and record.test is None
    assert f"{record.run_name} diverged at {record.diverged_at}: stopped early" in caplog.messages
    assert not (tmp_path / "test_correct.npy").exists()  # no test, no per-image hits
    assert record.diverged_at["epoch"] == 0 and record.diverged_at["step"] >= 1
    guard = DivergenceGuard()  # stops at the first bad step
    trainer = SimpleNamespace(current_epoch=2, global_step=40, should_stop=False)
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 3)
    assert guard.diverged_at is None and not trainer.should_stop
    trainer.global_step = 41
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 4)
    assert guard.diverged_at == {"epoch": 2, "step": 41, "loss": "nan"} and trainer.should_stop


# -- check_job_dir: what a job directory that already holds a run allows ---------------------
def job_cfg(job: Path, *overrides: str):
    return compose_config(f"paths.output_dir={job}", *overrides)


@pytest.fixture
def stored_job(tmp_path):
    """A job directory holding an interrupted run of the default config and its files."""
    from omegaconf import OmegaConf

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(job_cfg(tmp_path), tmp_path / ".hydra" / "config.yaml")
    RunRecord(status="interrupted", history=[{"epoch": 0}]).write(tmp_path / "metrics.json")
    for name in ("checkpoints/last.ckpt", "images/weights_final.png", "events.out.tfevents.1",
                 "test_correct.npy", "hparams.yaml", "csv/version_0/metrics.csv", "eval.json",
                 "eval-last.ckpt.prev.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_rerun_is_refused_a_resume_may_change_observers_and_overwrite_clears_the_run(stored_job):
    """The two refusals word for word; a resume without a stored config is not compared."""
    with pytest.raises(RunExistsError) as refused:
        check_job_dir(job_cfg(stored_job), stored_job)
    assert str(refused.value) == (
        f"{stored_job} already holds a run (status interrupted); nothing was changed. Add "
        "resume=true to continue an unfinished run and skip finished ones, overwrite=true to "
        "train it again from scratch (its results are replaced), or choose another "
        "hydra.run.dir / hydra.sweep.dir.")
    assert check_job_dir(job_cfg(stored_job, "resume=true", "threads=1", "logger=csv",
                                 "~callbacks.hallucinations", "trainer.enable_progress_bar=false"),
                         stored_job) is True  # other bookkeeping and observers: goes on
    with pytest.raises(RunExistsError) as refused:
        check_job_dir(job_cfg(stored_job, "resume=true", "seed=1"), stored_job)
    assert str(refused.value) == (
        f"resume=true, but {stored_job} was run with other settings: dataset.datamodule.seed: "
        "0 -> 1; seed: 0 -> 1. Resume with the original command (plus resume=true), or start a "
        "new run in another directory (hydra.run.dir / hydra.sweep.dir).")
    (stored_job / ".hydra" / "config.yaml").unlink()
    assert check_job_dir(job_cfg(stored_job, "resume=true", "seed=1"), stored_job) is True
    assert check_job_dir(job_cfg(stored_job, "overwrite=true"), stored_job) is False
    assert sorted(p.name for p in stored_job.iterdir()) == [".hydra"]
    RunRecord(status="ok").write(stored_job / "metrics.json")  # no folder to clear: no error
    assert check_job_dir(job_cfg(stored_job, "overwrite=true"), stored_job) is False
    RunRecord(status="ok").write(stored_job / "metrics.json")
    with pytest.raises(RunExistsError, match=r"choose another paths\.output_dir\.$"):
        train(job_cfg(stored_job))  # composed in Python: named by the setting its caller typed


# One setting of each group that trains, changed on resume: refused, naming it with both values.
@pytest.mark.parametrize("override,named", [
    ("dataset.batch_size=32", "dataset.batch_size: 64 -> 32"),
    ("norm=none", "model.net.norm: bn -> none"),
    ("optim.optimizer.momentum=0.9", "optim.optimizer.momentum: 0.0 -> 0.9"),
    ("trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val: None -> 1.0"),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("model.net.hidden_dim=128", "model.net.hidden_dim: 256 -> 128"),
        ("dataset=cifar10", "dataset.name: mnist -> cifar10"),
        ("model=cnn", "model.net._target_: bnstudy.nets.MLP -> bnstudy.nets.CNN"),
        ("optim=adam", "optim.name: sgd -> adam"),
        ("dataset.lr=0.1", "optim.optimizer.lr: 0.001 -> 0.1")]),
])
def test_resume_with_another_training_setting_is_refused(override, named, stored_job):
    with pytest.raises(RunExistsError, match="was run with other settings: ") as refused:
        check_job_dir(job_cfg(stored_job, "resume=true", override), stored_job)
    listed = str(refused.value).split("other settings: ")[1].split(". Resume with")[0]
    assert named in listed.split("; ")


def test_a_run_without_trackers_logs_nowhere_not_in_lightnings_default(tiny_data, tmp_path):
    record = train_run(tiny_data, tmp_path, "logger.tensorboard=null")
    assert record.status == "ok" and record.test_acc > 0 and record.trackers is None
    assert not list(tmp_path.rglob("*tfevents*")) and not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("off", ["trainer.enable_checkpointing=false", "~callbacks.checkpoint"])
def test_checkpoints_turned_off_either_way_write_none(tiny_data, tmp_path, off):
    """Without the study's checkpoint, Lightning's own (`epoch=0-step=N.ckpt`) is not added."""
    assert train_run(tiny_data, tmp_path, off).status == "ok"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("overrides", "said"), [
    (["trainer.strategy=dpp"], "trainer: ValueError: You selected an invalid strategy name"),
    (["optim.optimizer._target_=torch.optim.SDG"],  # made by the model; its message's colon
     "model: ImportError: Error loading 'torch.optim.SDG', so nothing was run."),  # dropped
    (["callbacks.checkpoint.every_n_epochs=-1"],
     "callbacks.checkpoint: MisconfigurationException: "),
    (["model=cnn", "model.net.channels=[4,4,4,4,4]"],  # the net's error, inside the model's
     "model: ValueError: channels=[4, 4, 4, 4, 4]: each entry is a conv's width")])
def test_a_value_its_class_refuses_is_one_paragraph_and_leaves_nothing(tiny_data, tmp_path,
                                                                       overrides, said):
    with pytest.raises(RunEnded) as ended:  # not a traceback and a failed run to "resume"
        train_run(tiny_data, tmp_path / "run", *overrides)
    assert ended.value.status == "discarded" and not (tmp_path / "run").exists()
    assert str(ended.value).startswith(said)
    key = said.split(":")[0]
    assert str(ended.value).endswith(f", so nothing was run. Fix the {key}.* override it names "
                                     f"(python -m bnstudy.train --cfg job --package {key} shows "
                                     "each setting).")


def test_a_training_run_is_recorded_running_with_its_name_and_settings(tiny_data, tmp_path,
                                                                       two_torch_threads):
    """What a kill during training leaves in `metrics.json` (a resume goes on from it); the
    run trains on the threads it is given (`threads=1`), not the process's two."""
    import time

    seen, started = tmp_path / "seen.json", time.perf_counter()
    record = train_run(tiny_data, tmp_path / "run", "trainer.limit_train_batches=2",
                       "trainer.precision=32-true",  # typed at its default: recorded
                       "+callbacks.copy._target_=tests.faults.RecordCopiedAtEpoch",
                       "+callbacks.copy.epoch=0", f"+callbacks.copy.to={seen}")
    assert 0 < record.wall_time_s < time.perf_counter() - started
    during = RunRecord.read(seen)
    assert record.status == "ok" and during.status == "running" and during.test is None
    assert (during.run_name, during.hparams) == (record.run_name, record.hparams)
    assert record.run_name.startswith("mnist-bn-sgd-seed0-") and record.hparams["norm"] == "bn"
    assert record.torch_threads == 1 and record.hparams["trainer.precision"] == "32-true"


@pytest.mark.parametrize(("overrides", "said"), [  # CIFAR-10's class: its own __init__ over
    (["dataset=cifar10", "dataset.datamodule.download=maybe"],  # the base's
     "dataset.datamodule.download='maybe': it takes true or false or null."),
    (["+dataset.datamodule.foo=1"], "dataset.datamodule.foo: MNISTDataModule takes no such "
     "argument. It takes batch_size, val_size, train_size, eval_batch_size, split_seed, seed, "
     "download."),
    (["+dataset.datamodule.val_sise=0.2"], "dataset.datamodule.val_sise: MNISTDataModule takes "
     "no such argument. Did you mean dataset.datamodule.val_size? It takes batch_size, val_size, "
     "train_size, eval_batch_size, split_seed, seed, download."),
    (["dataset.datamodule._target_=bnstudy.data.MNISTDataModul"], "dataset.datamodule._target_="
     "bnstudy.data.MNISTDataModul: no such class. Did you mean bnstudy.data.MNISTDataModule? "
     "Give a class's full dotted path.")])
def test_a_datamodule_value_its_class_does_not_take_is_named_with_what_it_takes(
        tiny_data, tmp_path, overrides, said):
    """Hydra passes `dataset.datamodule.*` untyped: `download=maybe` would be taken as true."""
    with pytest.raises(RunEnded) as ended:
        train_run(tiny_data, tmp_path / "run", *overrides)
    assert ended.value.status == "discarded" and not (tmp_path / "run").exists()
    assert str(ended.value) == said


def test_a_class_taking_any_keyword_is_given_any():
    node = {"_target_": "fractions.Fraction", "_convert_": "all", "foo": 1}
    assert arguments_refused(node, "x") == ("x.foo: Fraction takes no such argument. It takes "
                                            "numerator, denominator.")
    assert arguments_refused({"_target_": "argparse.Namespace", "foo": 1}, "x") is None
    for target in ("Namespace", "nowhere.Namespace"):
        assert arguments_refused({"_target_": target}, "x") == (
            f"x._target_={target}: no such class, nor its module. Give a class's full dotted path.")
    assert arguments_refused({"_target_": "argparse.SUPPRESS"}, "x") == (  # there: no class
        "x._target_=argparse.SUPPRESS: no such class. Give a class's full dotted path.")


@pytest.mark.parametrize("shown", [True, False])
def test_the_progress_bar_is_the_configured_one_when_shown(tiny_data, tmp_path, shown):
    """Off, its callback is left out (else refused by Lightning)."""
    cfg = compose_config(f"paths.data_dir={tiny_data}", f"paths.output_dir={tmp_path}",
                         f"trainer.enable_progress_bar={shown}",
                         "callbacks.progress_bar.refresh_rate=7")
    bar = build(cfg)[2].progress_bar_callback
    assert (bar.refresh_rate == 7) if shown else bar is None


def fake_hydra(launcher: dict | None) -> SimpleNamespace:
    """`HydraConfig` of a job run by a launcher of these settings (None: no Hydra job)."""
    fake = SimpleNamespace(launcher=launcher, initialized=lambda: launcher is not None)
    fake.get = lambda: fake
    return fake


def test_auto_threads_share_the_cores_the_launcher_gives(monkeypatch):
    import os

    from bnstudy import run

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cases = [({"n_jobs": 3}, 2), ({"n_jobs": 1}, 8), ({"n_jobs": 16}, 1), ({"n_jobs": -1}, 1),
             ({"cpus_per_task": 4}, 4), ({}, None), (None, None),  # None: no Hydra job
             ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher."
                           "LocalLauncher"}, 1),
             ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, None)]
    for launcher, threads in cases:
        monkeypatch.setattr(run, "HydraConfig", fake_hydra(launcher))
        assert run.torch_threads("auto") == threads, launcher
        assert run.torch_threads(3) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one core
    monkeypatch.setattr(run, "HydraConfig", fake_hydra({"n_jobs": 1}))
    assert run.torch_threads("auto") == 1


def test_ddp_that_restarts_the_script_is_refused_in_a_sweep_sharding_twice_anywhere(monkeypatch):
    from bnstudy import run
    from bnstudy.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        run.check_devices(compose_config("trainer.use_distributed_sampler=true"))
    assert str(refused.value) == (
        "trainer.use_distributed_sampler=true would shard batches a second time: the datamodule "
        "already gives each process its own share. Leave it false.")
    monkeypatch.setattr(run, "is_multirun", lambda: True)
    with pytest.raises(ConfigError) as refused:
        run.check_devices(compose_config("trainer.devices=2", "trainer.strategy=ddp"))
    assert str(refused.value) == (
        "trainer.devices=2 with trainer.strategy=ddp in a sweep (-m): Lightning's ddp restarts "
        "the script, which would start the sweep again in every process. In a sweep use "
        "trainer.strategy=ddp_spawn; for a single run either works.")
    for fine in (("trainer.devices=2", "trainer.strategy=ddp_spawn"),
                 ("trainer.devices=1", "trainer.strategy=ddp"),
                 ("trainer.devices='1'", "trainer.strategy=ddp")):
        run.check_devices(compose_config(*fine))


def test_the_resume_command_keeps_the_overrides_but_resume_and_names_the_folder(
        tmp_path, monkeypatch, caplog):
    """A run folder named by its overrides has `=`: quoted for the shell and for Hydra."""
    import logging
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnstudy import run
    from bnstudy.run import resume_command
    from bnstudy.train import _say_interrupted

    named = tmp_path / "2026-12-05_21-28-26_mnist-bn-sgd-seed0-max_epochs=1,lr=[0.1]"
    cfg = compose_config(f"paths.output_dir='{named}'")
    with caplog.at_level(logging.ERROR, logger="bnstudy"):
        _say_interrupted(cfg)
    said = caplog.messages[-1].split("run the same command with ", 1)[1].rstrip(".")
    for typed in (said, resume_command(cfg).removeprefix("python -m bnstudy.train ")):
        (*_, last) = OverridesParser.create().parse_overrides(shlex.split(typed))
        assert (last.key_or_group, last.value()) == ("hydra.run.dir", str(named))
    cfg = compose_config(f"paths.output_dir={tmp_path}", "seed=3", "resume=false", "norm=none")
    assert resume_command(cfg) == (f"python -m bnstudy.train paths.output_dir={tmp_path} seed=3 "
                                   f"norm=none resume=true hydra.run.dir={tmp_path}")
    monkeypatch.setattr(run, "HydraConfig", fake_hydra(None))  # train(cfg) outside a Hydra job
    assert resume_command(cfg) == f"python -m bnstudy.train resume=true hydra.run.dir={tmp_path}"


def test_how_a_run_ended_is_recorded_a_bug_kept_to_debug_quietly_by_rank_0_only(tmp_path,
                                                                                  monkeypatch):
    """A bug's record (even one not written yet) names the run; a job given up on is interrupted;
    a record that cannot be read or written raises nothing more; another rank writes none."""
    from submitit.core.utils import UncompletedJobError

    from bnstudy.errors import RunFileError
    from bnstudy.run import _ended, _record_quietly

    try:
        raise RuntimeError("a bug")
    except RuntimeError as err:
        ended = _ended(job_cfg(tmp_path), tmp_path, err)
    record = RunRecord.read(tmp_path)
    assert ended.status == record.status == "failed" and record.run_name == "mnist-bn-sgd-seed0"
    assert record.error.startswith("RuntimeError: a bug Resume with: python -m bnstudy.train ")
    assert record.traceback == ended.trace and "Traceback" in record.traceback
    assert "raise RuntimeError" in record.traceback
    RunRecord(status="running").write(tmp_path / "metrics.json")
    ended = _ended(job_cfg(tmp_path), tmp_path,
                   UncompletedJobError("Job 12 timed out too often on node gpuX."))
    assert (ended.status, str(ended), ended.trace) == \
        ("interrupted", "Job 12 timed out too often on node gpuX", None)
    record = RunRecord.read(tmp_path)
    assert (record.status, record.error) == ("interrupted", "its launcher will not requeue it "
                                             "(Job 12 timed out too often on node gpuX)")
    (tmp_path / "metrics.json").write_text("{")
    _record_quietly(tmp_path, status="failed")
    monkeypatch.setenv("RANK", "1")
    _record_quietly(tmp_path / "rank1", status="failed")
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setenv("RANK", "0")
    _record_quietly(tmp_path / "rank0", status="failed")
    assert RunRecord.read(tmp_path / "rank0").status == "failed"
    disk_full = RunFileError("Could not write metrics.json: No space left on device.")
    monkeypatch.setattr(RunRecord, "update", mock.Mock(side_effect=disk_full))
    _record_quietly(tmp_path / "rank0", status="interrupted")


def test_what_discard_untrained_keeps(tmp_path, monkeypatch):
    """Kept, nothing raised: a run with anything to keep (issue #36) or stuck; links unlinked."""
    import os

    from bnstudy.run import remove_empty_folder

    assert not discard_untrained(tmp_path / "absent")
    job = tmp_path / "work" / "runs" / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "metrics.json").write_text("{")
    assert not discard_untrained(job)
    RunRecord(status="failed", history=[{"epoch": 0}]).write(job / "metrics.json")
    assert not discard_untrained(job) and (job / "metrics.json").is_file()
    RunRecord(status="failed").write(job / "metrics.json")
    for kept in ("checkpoints/last.ckpt", "notes.txt"):  # a checkpoint; not a run's file
        (job / kept).write_bytes(b"kept")
        assert not discard_untrained(job) and (job / kept).read_bytes() == b"kept"
        (job / kept).unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "kept.png").write_bytes(b"png")
    (job / "images").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (job / "checkpoints" / "stuck.png").write_bytes(b"png")
    (tmp_path / "work" / "runs" / "other").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    listed, real_unlink = Path.iterdir, os.unlink
    monkeypatch.setattr(Path, "iterdir", lambda self: [*listed(self), self / "train.log"])

    def unlink(path, *args, **kwargs):
        if str(path).endswith("stuck.png"):
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert not discard_untrained(job) and (job / "checkpoints" / "stuck.png").is_file()
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert discard_untrained(job) and not job.exists()  # train.log: listed, already gone
    assert (tmp_path / "elsewhere" / "kept.png").is_file()
    assert (tmp_path / "work" / "runs" / "other").is_dir()  # not empty: stays, and those above
    (tmp_path / "out" / "a" / "b").mkdir(parents=True)  # outside the working directory
    assert remove_empty_folder(tmp_path / "out" / "a" / "b") and (tmp_path / "out" / "a").is_dir()
    assert not remove_empty_folder(tmp_path / "work")  # not empty


def test_another_rank_skips_a_finished_run_as_rank_0_decides(stored_job, monkeypatch):
    """A DDP rank but 0 takes no lock and writes nothing, with resume=true or requeued."""
    from bnstudy.run import train

    RunRecord.update(stored_job / "metrics.json", status="ok",
                     job={"id": "slurm:1000_3", "restarts": 0})
    before = {p: p.read_bytes() for p in stored_job.rglob("*") if p.is_file()}
    launcher_env(monkeypatch, **ARRAY_TASK, SLURM_RESTART_COUNT=1)
    monkeypatch.setenv("SLURM_PROCID", "1")
    unusable = (f"paths.data_dir={stored_job / 'no-data'}", "dataset.datamodule.download=false")
    assert train(job_cfg(stored_job, *unusable)).status == "ok"  # its job, requeued
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # another job
    assert train(job_cfg(stored_job, *unusable, "resume=true")).status == "ok"
    assert {p: p.read_bytes() for p in stored_job.rglob("*") if p.is_file()} == before


def test_a_requeued_run_counts_it_and_clears_the_last_attempts_error(tiny_data, tmp_path,
                                                                    monkeypatch, caplog):
    """Issue #36: started again in its SLURM job (a second srun) it is refused; requeued not."""
    import logging

    from omegaconf import OmegaConf

    from bnstudy.console import StudyLines

    cfg = compose_config(f"paths.data_dir={tiny_data}", f"paths.output_dir={tmp_path}",
                         "trainer.max_epochs=1", "~callbacks.hallucinations", *FAST)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    RunRecord(status="interrupted", job={"id": "slurm:1000_3", "restarts": 0}, requeues=1,
              error="boom", traceback="Traceback ...", diverged_at={"epoch": 0}
              ).write(tmp_path / "metrics.json")
    (tmp_path / "train.log").write_text("[2026-12-05 04:00:00,000][x][WARNING] - seen before\n")
    (tmp_path / "csv").mkdir()  # an earlier attempt's log: what overwrite=true would clear
    (tmp_path / "csv" / "metrics.csv").write_bytes(b"x")
    monkeypatch.setattr(StudyLines, "earlier", set())
    launcher_env(monkeypatch, **ARRAY_TASK)
    with pytest.raises(RunExistsError, match="already holds a run"):  # the same start again
        train_run(tiny_data, tmp_path)
    launcher_env(monkeypatch, **ARRAY_TASK, SLURM_RESTART_COUNT=1)
    with caplog.at_level(logging.INFO, logger="bnstudy"):
        record = train_run(tiny_data, tmp_path)
    assert f"{record.run_name}: requeued by its launcher (job slurm:1000_3, status " \
        "interrupted): resuming" in caplog.messages
    assert (tmp_path / "csv" / "metrics.csv").read_bytes() == b"x"  # its folder not cleared
    assert record.status == "ok" and record.requeues == 2
    assert record.job == {"id": "slurm:1000_3", "restarts": 1}
    assert (record.error, record.traceback, record.diverged_at) == (None, None, None)
    assert StudyLines.earlier == {"seen before"}


def test_a_run_names_itself_in_its_lock_and_needs_a_job_directory(tmp_path, monkeypatch):
    """`compose` outside a Hydra job leaves `paths.output_dir` a placeholder."""
    from bnstudy import run
    from bnstudy.errors import ConfigError
    from bnstudy.jobdir import holder
    from bnstudy.overrides import compose

    monkeypatch.setattr(run, "_train", lambda cfg, out: holder(out))  # what another process sees
    assert run.train(job_cfg(tmp_path / "job"))["run"] == "mnist-bn-sgd-seed0"
    assert holder(tmp_path / "job") == {}  # released when it ends
    monkeypatch.chdir(tmp_path / "job")
    with pytest.raises(ConfigError) as refused:
        run.train(compose(["norm=none"]))
    assert str(refused.value) == (  # the call to type, as the caller wrote theirs
        "paths.output_dir is not set: a config composed outside a Hydra job has no job "
        'directory, so nothing was run. Name one, e.g. compose(["norm=none", '
        '"paths.output_dir=outputs/runs/mine"]).')
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["job.lock"]
