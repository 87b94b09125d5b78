"""Bad input, faults and interruptions, each through the real entry point."""

import json
import os
import shlex
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    FAST,
    run_sweep,
    run_train,
    start_train,
    sweep_jobs,
    wait_for_file,
    write_cifar10,
    write_job,
    write_mnist,
)
from omegaconf import OmegaConf

from bnstudy.callbacks import DivergenceGuard
from bnstudy.data import DataError, MNISTDataModule
from bnstudy.datafiles import load_cifar_batch
from bnstudy.records import read_record, write_json_atomic


def record(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


# Each case below runs the entry point (~0.7 s, most of it Hydra composing the config twice):
# the fast loop keeps a case or two of each kind, the slow suite runs them all.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "override,group,options",
    [
        ("dataset=imagenet", "dataset", ["cifar10", "mnist"]),
        pytest.param("norm=group", "norm", ["bn", "none"], marks=SLOW),
        pytest.param("optim=rmsprop", "optim", ["adam", "sgd"], marks=SLOW),
    ],
)
def test_unknown_option_names_the_group_and_its_options(override, group, options, tmp_path):
    proc = run_train(override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert f"Could not find '{group}/" in proc.stderr
    assert f"Available options in '{group}'" in proc.stderr
    assert all(option in proc.stderr for option in options)


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "dataset.batch_size=0",
            "dataset.batch_size=0 is out of range; it must be an integer >= 1",
        ),
        pytest.param("dataset.lr=-0.1", "dataset.lr=-0.1 is out of range; it must be a number > 0",
                     marks=SLOW),
        pytest.param("optim.optimizer.lr=0",
                     "optim.optimizer.lr=0 is out of range; it must be a number > 0", marks=SLOW),
        pytest.param("trainer.max_epochs=-1", "trainer.max_epochs=-1 is out of range",
                     marks=SLOW),
        pytest.param("model.net.hidden_dim=0", "model.net.hidden_dim=0 is out of range",
                     marks=SLOW),
        pytest.param(  # in the fast loop: test_data.py's test_sizes_larger_than_the_data...
            "dataset.train_size=100000",
            "ask for 100000 training and 60 validation images, but the training files hold 600",
            marks=SLOW,
        ),
        pytest.param("dataset.val_size=1.5", "dataset.val_size=1.5 is out of range; it must be a "
                     "fraction in (0, 1) or a whole count >= 1", marks=SLOW),
        pytest.param("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 is out of range; it must "
                     "be an integer >= 1", marks=SLOW),
        pytest.param("+lr=0.1",
                     "lr: no such setting. Valid keys at the top level: callbacks, dataset,",
                     marks=SLOW),
        ("+dataset.momentum=0.9", "dataset.momentum: no such setting. Valid keys under dataset:"),
        pytest.param("dataset.batch_size=1", "dataset.batch_size=1 with norm=bn: BatchNorm "
                     "normalises over the batch, which one image cannot give", marks=SLOW),
    ],
)
def test_invalid_value_stops_before_training(override, message, tiny_data, tmp_path):
    """Refused before training, and no run folder is left for the report to list."""
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", override,
                     "hydra.run.dir=outputs/runs/now", cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr and "failed before training; nothing was kept" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # the run folder Hydra made is gone, and its parents


def test_missing_data_with_download_disabled(tmp_path):
    proc = run_train(
        *FAST,
        f"paths.data_dir={tmp_path / 'nowhere'}",
        "dataset.datamodule.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert "files not found" in proc.stderr and "nowhere/MNIST/raw/train-images-idx3-ubyte" in (
        proc.stderr
    )
    assert "download is disabled" in proc.stderr and "paths.data_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "nothing was kept" in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow  # the message in the fast loop: test_data.py's test_truncated_idx_file...
def test_truncated_data_file_is_named(tmp_path):
    write_mnist(tmp_path / "data", n_train=50, n_test=20)
    labels = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])
    proc = run_train(
        *FAST,
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert "t10k-labels-idx1-ubyte" in proc.stderr and "corrupt or truncated" in proc.stderr


@pytest.mark.slow
def test_divergence_stops_early_and_exits_zero(tiny_data, tmp_path):
    proc = run_train(
        *FAST,
        f"paths.data_dir={tiny_data}",
        "norm=none",
        "dataset.lr=1e12",
        "trainer.max_epochs=5",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = record(tmp_path)
    assert rec["status"] == "diverged"
    assert rec["diverged_at"]["epoch"] == 0 and rec["diverged_at"]["step"] >= 1
    assert rec["test"] is None and rec["epochs_trained"] <= 1


def test_divergence_guard_stops_at_the_first_bad_step():
    guard = DivergenceGuard()
    trainer = SimpleNamespace(current_epoch=2, global_step=40, should_stop=False)
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 3)
    assert guard.diverged_at is None and not trainer.should_stop
    trainer.global_step = 41
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 4)
    assert guard.diverged_at == {"epoch": 2, "step": 41, "loss": "nan"} and trainer.should_stop


@pytest.mark.slow
def test_one_failing_job_does_not_stop_the_sweep(tiny_data, tmp_path):
    proc = run_train(
        "-m",
        *FAST,
        f"paths.data_dir={tiny_data}",
        "dataset.batch_size=0,32",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 1
    (good,) = sweep_jobs(tmp_path)  # the failing job never trained: it left no directory
    assert record(good)["status"] == "ok" and record(good)["test"]["acc"] is not None
    assert "1 job(s)" in proc.stderr and "batch_size=0: failed before training" in proc.stderr
    assert "dataset.batch_size=0 is out of range" in proc.stderr


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    common = [*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=3", "seed=7"]
    straight = run_train(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-2000:]

    interrupted = run_train(
        *common,
        f"hydra.run.dir={tmp_path / 'b'}",
        "+callbacks.interrupt._target_=tests.faults.InterruptAtEpoch",
        "+callbacks.interrupt.epoch=2",
        "+callbacks.interrupt.seconds=2",  # epochs 0 and 1: 4 s more than the resume's all
    )
    assert interrupted.returncode != 0 and "run the same command with resume=true" in \
        interrupted.stderr
    assert record(tmp_path / "b")["status"] == "interrupted"
    before = record(tmp_path / "b")["history"]
    assert len(before) == 2 and (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()

    resumed = run_train(*common, f"hydra.run.dir={tmp_path / 'b'}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = record(tmp_path / "a"), record(tmp_path / "b")
    assert b["status"] == "ok"
    assert b["history"][:2] == before  # epochs 0 and 1 come from the checkpoint, not redone
    strip = ("time_s",)
    assert [{k: v for k, v in row.items() if k not in strip} for row in a["history"]] == [
        {k: v for k, v in row.items() if k not in strip} for row in b["history"]
    ]
    assert a["test"] == b["test"]
    # its time counts the epochs of both attempts, not the second attempt's alone
    assert b["wall_time_s"] > b["history"][-1]["time_s"] > before[-1]["time_s"] > 4

    again = run_train(*common, f"hydra.run.dir={tmp_path / 'b'}", "resume=true")
    assert again.returncode == 0 and "already finished" in again.stderr
    assert record(tmp_path / "b") == b


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tiny_data, tmp_path):
    common = [*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2", "dataset=cifar10"]
    runs = []
    for name in ("x", "y"):
        assert run_train(*common, f"hydra.run.dir={tmp_path / name}").returncode == 0
        rec = record(tmp_path / name)
        runs.append(
            ([{k: v for k, v in r.items() if k != "time_s"} for r in rec["history"]], rec["test"])
        )
    assert runs[0] == runs[1]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object()})  # not JSON-serialisable, fails mid-write
    assert read_record(path) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_json_atomic(path, {"loss": float("nan")})
    assert read_record(path) == {"loss": None}


@pytest.mark.slow
def test_interrupted_sweep_resumes_skipping_finished_jobs(tiny_data, tmp_path):
    common = ["-m", *FAST, f"paths.data_dir={tiny_data}", "norm=bn,none", "trainer.max_epochs=2",
              f"hydra.sweep.dir={tmp_path}"]
    # Ctrl-C as job 0 starts its second epoch stops the whole sweep: job 1 never starts.
    interrupted = run_train(*common, "+callbacks.interrupt._target_=tests.faults.InterruptAtEpoch",
                            "+callbacks.interrupt.epoch=1")
    assert interrupted.returncode != 0
    (first,) = sweep_jobs(tmp_path)
    assert first.name == "0_mnist-bn-sgd-seed0"  # named by what varies (norm), not max_epochs
    assert record(first)["status"] == "interrupted"
    epoch0 = record(first)["history"]
    assert len(epoch0) == 1

    resumed = run_train(*common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = sweep_jobs(tmp_path)
    assert record(first)["status"] == record(second)["status"] == "ok"
    assert record(first)["history"][:1] == epoch0  # continued from the checkpoint, not redone
    assert [row["epoch"] for row in record(second)["history"]] == [0, 1]
    done = [record(first), record(second)]

    again = run_train(*common, "resume=true")
    assert again.returncode == 0 and again.stderr.count("already finished") == 2
    assert [record(first), record(second)] == done


@pytest.mark.parametrize("override,message", [
    ("seed=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    pytest.param("model.net.depth=two",
                 "Value 'two' of type 'str' could not be converted to Integer", marks=SLOW),
    pytest.param("resume=maybe", "Value 'maybe' is not a valid bool", marks=SLOW),
])
def test_mistyped_values_are_refused_by_the_schema(override, message, tmp_path):
    proc = run_train(override, "paths.data_dir=/nonexistent", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "metrics.json").exists()


def quick_run(tiny_data, job: Path, *overrides: str):
    return run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=1",
                     "trainer.limit_train_batches=2", "~callbacks.hallucinations",
                     f"hydra.run.dir={job}", *overrides)


def snapshot(job: Path) -> dict[str, bytes]:
    """Every file of a job directory but the TensorBoard events and the log (which each
    command appends to), by relative path."""
    return {str(p.relative_to(job)): p.read_bytes() for p in sorted(job.rglob("*"))
            if p.is_file() and "tfevents" not in p.name and p.name != "train.log"}


@pytest.mark.slow
def test_reruns_never_overwrite_a_run_and_resume_keeps_its_config(tiny_data, tmp_path):
    job = tmp_path / "job"
    assert quick_run(tiny_data, job).returncode == 0
    before = snapshot(job)
    rerun = quick_run(tiny_data, job)
    assert rerun.returncode == 1 and "already holds a run (status ok)" in rerun.stderr
    assert "overwrite=true" in rerun.stderr and "Traceback" not in rerun.stderr
    changed = quick_run(tiny_data, job, "resume=true", "trainer.limit_train_batches=3")
    assert changed.returncode == 1 and "run with other settings" in changed.stderr
    assert "trainer.limit_train_batches: 2 -> 3" in changed.stderr
    assert snapshot(job) == before  # .hydra/, metrics.json, checkpoints, images untouched
    same = quick_run(tiny_data, job, "resume=true")
    assert same.returncode == 0 and "already finished" in same.stderr
    assert snapshot(job) == before
    old_events = {p.name for p in job.glob("events.out.tfevents.*")}
    again = quick_run(tiny_data, job, "overwrite=true", "seed=1")
    assert again.returncode == 0 and record(job)["hparams"]["seed"] == 1
    assert not old_events & {p.name for p in job.glob("events.out.tfevents.*")}  # replaced


@pytest.mark.slow
def test_a_swept_setting_is_recorded_named_and_never_pooled(tiny_data, tmp_path):
    proc = run_train("-m", *FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=1",
                     "trainer.limit_train_batches=2", "~callbacks.hallucinations",
                     "optim.optimizer.momentum=0.0,0.9", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sweep_jobs(tmp_path)
    # Named by what the sweep varies; the settings every job shares are in the records only.
    assert [j.name for j in jobs] == ["0_mnist-bn-sgd-seed0-momentum=0.0",
                                      "1_mnist-bn-sgd-seed0-momentum=0.9"]
    assert [record(j)["hparams"]["optim.optimizer.momentum"] for j in jobs] == [0.0, 0.9]
    assert all(record(j)["hparams"]["trainer.limit_train_batches"] == 2 for j in jobs)
    from bnstudy.report.runs import group_keys, groups, load_runs

    runs = load_runs(tmp_path)
    found = groups(runs, group_keys(runs))
    assert len(found) == 2 and all(len(group) == 1 for _, group in found)


def test_a_padded_cifar_batch_is_refused_as_corrupt(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes() + b"\0" * 64)
    with pytest.raises(DataError, match="data_batch_2 is not a valid CIFAR-10 batch .*64 bytes "
                                        "follow the batch.*corrupt"):
        load_cifar_batch(batch)


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    def offline(self):
        (self.data_dir / "MNIST" / "raw").mkdir(parents=True)
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(MNISTDataModule, "fetch", offline)
    target = tmp_path / "nowhere" / "data"
    with pytest.raises(DataError, match="the download failed"):
        MNISTDataModule(target, download=True).prepare_data()
    assert not target.exists() and tmp_path.is_dir()


@pytest.mark.slow
def test_a_full_disk_fails_the_job_with_a_paragraph_and_the_sweep_goes_on(tiny_data, tmp_path):
    proc = run_train("-m", *FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "~callbacks.hallucinations", f"hydra.sweep.dir={tmp_path}",
                     "+callbacks.full._target_=tests.faults.DiskFullAtEpoch",
                     "+callbacks.full.epoch=1,9", "+callbacks.full.name=last.ckpt")  # 9: never
    assert proc.returncode == 1
    first, second = sweep_jobs(tmp_path)
    error = record(first)["error"]
    assert record(first)["status"] == "failed" and "Traceback" not in proc.stderr
    assert "Could not write" in error and "last.ckpt: No space left on device" in error
    assert "resume=true" in error and error in proc.stderr.replace("\n  ", " ")
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0  # the last good checkpoint is still usable
    assert not list((first / "checkpoints").glob(".*.tmp"))
    assert record(second)["status"] == "ok"  # the next job ran


@pytest.mark.slow
def test_a_full_disk_at_the_record_names_it(tiny_data, tmp_path):
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "~callbacks.hallucinations", f"hydra.run.dir={tmp_path}",
                     "+callbacks.full._target_=tests.faults.DiskFullAtEpoch",
                     "+callbacks.full.epoch=1", "+callbacks.full.name=metrics.json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "metrics.json: No space left on device" in proc.stderr
    assert "free space, or point hydra.run.dir / hydra.sweep.dir at another disk" in proc.stderr


@pytest.mark.slow
def test_a_cut_short_checkpoint_resumes_from_the_previous_one(tiny_data, tmp_path):
    common = [*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=3", "seed=3",
              "~callbacks.hallucinations"]
    assert run_train(*common, f"hydra.run.dir={tmp_path / 'a'}").returncode == 0
    job = tmp_path / "b"
    run_train(*common, f"hydra.run.dir={job}", "+callbacks.stop._target_=tests.faults."
              "InterruptAtEpoch", "+callbacks.stop.epoch=2")
    last = job / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100_000])  # as a kill during the save would leave it
    resumed = run_train(*common, f"hydra.run.dir={job}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    note = record(job)["resume_note"]
    assert "last.ckpt" in note and "Resumed from the previous checkpoint" in note
    assert note.split()[0] in resumed.stderr or "did not load" in resumed.stderr
    assert (job / "checkpoints" / "last.ckpt.corrupt").is_file()  # set aside, not deleted
    strip = [{k: v for k, v in row.items() if k != "time_s"} for row in record(job)["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "time_s"}
                     for row in record(tmp_path / "a")["history"]]
    assert record(job)["test"] == record(tmp_path / "a")["test"]


# -- one writer per job directory; the sweep's exit status -----------------------------------
def without_time(record_: dict) -> tuple[list, dict]:
    """A record's history (without the clock) and test metrics: what must match exactly."""
    return [{k: v for k, v in row.items() if k != "time_s"} for row in record_["history"]], \
        record_["test"]


def paused_run(tiny_data, job: Path, go: Path, *overrides: str):
    """A run started in the background that pauses when its epoch 1 starts, until `go` exists."""
    return start_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=3",
                       "trainer.limit_train_batches=2", "~callbacks.hallucinations",
                       f"hydra.run.dir={job}", *overrides,
                       "+callbacks.pause._target_=tests.faults.PauseAtEpoch",
                       "+callbacks.pause.epoch=1", f"+callbacks.pause.until={go}")


@pytest.mark.slow
def test_a_second_process_is_refused_and_the_first_trains_on_alone(tiny_data, tmp_path):
    job, go = tmp_path / "job", tmp_path / "go"
    first = paused_run(tiny_data, job, go)
    try:
        wait_for_file(Path(f"{go}.paused"), first)
        files = {p.name for p in job.glob("events.out.tfevents.*")}
        before = {**snapshot(job), "train.log": (job / "train.log").read_bytes()}
        for how in ("resume=true", "overwrite=true", "seed=0"):  # resume, rewrite, rerun
            second = quick_run(tiny_data, job, how, "trainer.max_epochs=3")
            assert second.returncode == 1, second.stderr[-2000:]
            assert f"{job} is in use: " in second.stderr and "Traceback" not in second.stderr
            assert f" in process {first.pid} on {socket.gethostname()} since " in second.stderr
        assert {**snapshot(job), "train.log": (job / "train.log").read_bytes()} == before
        assert {p.name for p in job.glob("events.out.tfevents.*")} == files
        go.touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-2000:]
    reference = quick_run(tiny_data, tmp_path / "reference", "trainer.max_epochs=3")
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert without_time(record(job)) == without_time(record(tmp_path / "reference"))
    # every events file of the job is the first process's (TensorBoard names them by pid)
    assert {p.name.split(".")[-2] for p in job.glob("events.out.tfevents.*")} == {str(first.pid)}


@pytest.mark.slow
def test_a_killed_run_leaves_no_lock_in_the_way_of_its_resume(tiny_data, tmp_path):
    from bnstudy.jobdir import holder

    job, go = tmp_path / "job", tmp_path / "go"
    killed = paused_run(tiny_data, job, go)
    try:
        wait_for_file(Path(f"{go}.paused"), killed)
    finally:
        killed.send_signal(signal.SIGKILL)  # no handler runs: the record still says running
        killed.communicate(timeout=60)
    assert record(job)["status"] == "running" and len(record(job)["history"]) == 1
    assert holder(job)["pid"] == killed.pid  # the dead holder's name is still in the file
    rerun = quick_run(tiny_data, job, "trainer.max_epochs=3")
    assert rerun.returncode == 1 and "already holds a run (status running)" in rerun.stderr
    resumed = quick_run(tiny_data, job, "trainer.max_epochs=3", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert record(job)["status"] == "ok"
    reference = quick_run(tiny_data, tmp_path / "reference", "trainer.max_epochs=3")
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert without_time(record(job)) == without_time(record(tmp_path / "reference"))


@pytest.fixture
def sweep_summary():
    """The sweep's summary callback as Hydra calls it (start, then end), in this process."""
    from bnstudy.train import REFUSALS_ENV, SweepSummary

    yield SweepSummary()
    os.environ.pop(REFUSALS_ENV, None)


@pytest.mark.parametrize("status,reason", [
    ("ok", None),
    ("diverged", None),  # a divergence is a result
    ("failed", "failed: ValueError: boom"),
    ("interrupted", "interrupted after 2 epoch(s)"),
    ("running", "no result after 2 epoch(s): still running in"),  # or killed
    ("refused", "refused: it was in use"),  # told by the job's process, wherever it ran
])
def test_the_sweep_exits_1_when_a_job_did_not_finish(status, reason, tmp_path, sweep_summary):
    from bnstudy.train import _note_refusal

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweep_summary.on_multirun_start(config)
    done = write_job(tmp_path, [0.5, 0.6])
    job = write_job(tmp_path, [0.4, 0.5], status="ok" if status == "refused" else status,
                    error="ValueError: boom" if status == "failed" else None, seed=1)
    if status == "refused":
        _note_refusal(OmegaConf.create({"paths": {"output_dir": str(job)}}), "it was in use")
    if reason is None:
        sweep_summary.on_multirun_end(config)  # returns: exit status 0
        return
    with pytest.raises(SystemExit) as ended:
        sweep_summary.on_multirun_end(config)
    message = str(ended.value.code)
    assert message.startswith(f"1 job(s) of {tmp_path} did not finish")
    assert f"\n  {job.name}: {reason}" in message and done.name not in message
    assert f"resume=true hydra.sweep.dir={tmp_path}" in message
    assert not (tmp_path / ".refused").exists()  # the refusals' notes are read and removed


@pytest.mark.slow
def test_a_sweep_of_ok_and_diverged_jobs_exits_0(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "norm=none", "dataset.lr=0.01,1e12",
                     "trainer.max_epochs=2", "~callbacks.hallucinations")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(record(job)["status"] for job in tmp_path.glob("*_*")) == ["diverged", "ok"]


def test_a_sweep_whose_config_fails_keeps_nothing_and_names_no_resume(tiny_data, tmp_path):
    """Every job refused before training: no job folder, no sweep folder, and the summary
    names each job and its reason, without a resume hint that could not work."""
    sweep = tmp_path / "outputs" / "multirun" / "now"
    proc = run_train("-m", *FAST, f"paths.data_dir={tiny_data}", "dataset.batch_size=0",
                     "norm=bn,none", "hydra.sweep.dir=outputs/multirun/now", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "2 job(s) failed before training, so nothing was kept" in proc.stderr
    for job in ("0_mnist-bn-sgd-seed0", "1_mnist-none-sgd-seed0"):
        assert f"  {job}: failed before training, nothing kept: dataset.batch_size=0 is out " \
            "of range" in proc.stderr
    assert "Fix the cause, then run the command again." in proc.stderr
    assert "resume=true" not in proc.stderr and "?" not in proc.stderr
    assert not sweep.exists() and list(tmp_path.iterdir()) == []  # nor outputs/multirun/


@pytest.mark.slow
def test_a_sweep_keeps_its_finished_jobs_and_resumes_past_one_that_never_trained(
        tiny_data, tmp_path):
    from bnstudy.report.runs import load_runs, never_started

    proc = run_sweep(tmp_path, tiny_data, "dataset.batch_size=0,32", "trainer.max_epochs=1",
                     "~callbacks.hallucinations")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.glob("*_*")] == ["1_mnist-bn-sgd-seed0-batch_size=32"]
    assert "  0_mnist-bn-sgd-seed0-batch_size=0: failed before training, nothing kept" in \
        proc.stderr
    assert f"resume=true hydra.sweep.dir={tmp_path}" in proc.stderr and "?" not in proc.stderr
    assert list(load_runs(tmp_path)["outcome"]) == ["ok"]
    assert never_started(tmp_path) == ["dataset.batch_size=0"]  # counted as missing


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in: a read-only one, or (as root, who
    writes anywhere) one under /sys, which refuses even root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder if os.geteuid() != 0 else Path("/sys/bnstudy-test")


@pytest.mark.parametrize("mode,key", [("", "hydra.run.dir"), ("-m", "hydra.sweep.dir")])
def test_a_read_only_output_folder_is_one_paragraph(tmp_path, mode, key):
    where = read_only_folder(tmp_path) / "out"
    proc = run_train(*[m for m in [mode] if m], "paths.data_dir=/nonexistent", "seed=0",
                     f"{key}={where}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    what = "run's" if key == "hydra.run.dir" else "sweep's"
    assert f"Could not write the {what} folder, {where}: " in proc.stderr
    assert "Nothing was run." in proc.stderr and f"point {key} at a" in proc.stderr
    assert not where.exists()


@pytest.mark.slow
def test_a_full_disk_at_a_picture_fails_the_run_with_its_resume_command(tiny_data, tmp_path):
    """The disk refuses a PNG: one paragraph, no partial file, the record says failed with
    the command that goes on, and that command finishes the run."""
    job = tmp_path / "job"
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "~callbacks.hallucinations", f"hydra.run.dir={job}",
                     "+callbacks.full._target_=tests.faults.DiskFullAtEpoch",
                     "+callbacks.full.epoch=1", "+callbacks.full.name=.png")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rec = record(job)
    assert rec["status"] == "failed" and "Could not write " in rec["error"]
    assert ".png: No space left on device" in rec["error"]
    command = rec["error"].split("Resume with: ")[1]
    assert command.startswith("python -m bnstudy.train ") and \
        command.endswith(f" resume=true hydra.run.dir={job}")
    assert rec["error"] in proc.stderr
    assert not [p for p in job.rglob("*") if p.name.endswith(".tmp")]  # no partial file
    overrides = [o.replace("name=.png", "name=never") for o in shlex.split(command)[3:]]
    resumed = run_train(*overrides)  # the disk freed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert record(job)["status"] == "ok" and len(record(job)["history"]) == 2


@pytest.mark.slow
def test_a_library_that_cannot_write_its_file_fails_the_run_in_one_paragraph(tiny_data,
                                                                              tmp_path):
    """An OSError from a file a library writes itself (Lightning's hparams.yaml, TensorBoard's
    events): the write paragraph, not a traceback, and the record says failed."""
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "~callbacks.hallucinations", f"hydra.run.dir={tmp_path}",
                     "+callbacks.full._target_=tests.faults.WriteFailsAtEpoch",
                     "+callbacks.full.epoch=1", "+callbacks.full.name=hparams.yaml")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"Could not write {tmp_path / 'hparams.yaml'}: No space left on device" in proc.stderr
    assert record(tmp_path)["status"] == "failed" and "Resume with: " in record(tmp_path)["error"]


def test_a_write_error_names_the_file_whatever_the_library_gave():
    """TensorBoard's event writer names its file in bytes; a data file that cannot be read
    (outside the job directory, no permission) is not a write error."""
    import errno

    from bnstudy.records import write_error

    events = b"/runs/job/events.out.tfevents.1.vm.2.0"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), events)
    assert write_error(full, "/runs/job").startswith(
        f"Could not write {os.fsdecode(events)}: No space left on device.")
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), "/data/MNIST/raw/x")
    assert write_error(denied, "/runs/job") is None
    assert write_error(OSError(errno.EACCES, "denied", "/runs/job/hparams.yaml"), "/runs/job")
    assert write_error(ValueError("not an OSError"), "/runs/job") is None
