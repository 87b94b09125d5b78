"""`bnstudy.records`: the run record's schema, and run files written atomically, with the
umask's mode, and one paragraph when the disk refuses."""

from __future__ import annotations

import errno
import os

import pytest
from helpers import fail_fsync

from bnstudy.errors import RunFileError
from bnstudy.records import (
    SEARCH_DIR,
    RunRecord,
    describe_write_error,
    job_dirs,
    job_order,
    plan_clash,
    read_test_correct,
    save_composed,
    study_dir,
    sweep_records,
    varying,
    write_error,
    write_json_atomic,
    write_test_correct,
)


def test_a_record_reads_back_as_written_and_ignores_unknown_keys(tmp_path):
    record = RunRecord(status="ok", run_name="mnist-bn-sgd-seed0", test={"loss": 0.5, "acc": 0.9},
                       history=[{"epoch": 0, "val/acc": 0.8, "train/loss": float("nan")}],
                       wall_time_s=12.0)
    record.write(tmp_path)  # a job directory, or its metrics.json
    back = RunRecord.read(tmp_path / "metrics.json")
    assert back.history[0]["train/loss"] is None  # JSON has no NaN: null
    assert back.final_val_acc == 0.8 and back.test_acc == 0.9 and back.finished
    assert back.line() == "mnist-bn-sgd-seed0: ok, val acc 80.00 %, test acc 90.00 %, 12 s"
    (tmp_path / "metrics.json").write_text('{"status": "failed", "from_the_future": 1}')
    assert RunRecord.read(tmp_path) == RunRecord(status="failed")
    assert RunRecord.read(tmp_path / "absent") is None
    updated = RunRecord.update(tmp_path / "metrics.json", error="boom")
    assert updated == RunRecord.read(tmp_path) == RunRecord(status="failed", error="boom")
    RunRecord().write(tmp_path / "new" / "job" / "metrics.json")  # the folders are made
    assert RunRecord.read(tmp_path / "new" / "job") == RunRecord()
    assert RunRecord().line() == "?: running, val acc -, test acc -, -"  # unfinished: dashes


def test_test_correct_reads_back_as_bools_and_is_none_when_absent_or_broken(tmp_path):
    write_test_correct(tmp_path, [1, 0, 1])
    back = read_test_correct(tmp_path)
    assert back.dtype == bool and back.tolist() == [True, False, True]
    assert read_test_correct(tmp_path / "absent") is None
    (tmp_path / "test_correct.npy").write_bytes(b"not numpy")
    assert read_test_correct(tmp_path) is None


def test_a_failed_write_keeps_the_old_record_and_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    RunRecord(history=[{"epoch": 0}]).write(path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object()})  # not JSON-serialisable: fails mid-write
    fail_fsync(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(RunFileError) as failure:
        RunRecord.update(path, history=[{"epoch": 0}, {"epoch": 1}])
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    message = str(failure.value)
    assert message.startswith(f"Could not write {path}: No space left on device.")
    assert "free space, or point hydra.run.dir / hydra.sweep.dir at another disk" in message
    assert "run the same command with resume=true" in message and "\n" not in message
    with pytest.raises(RunFileError, match=r"^Could not write .*job/metrics.json: "):
        RunRecord().write(tmp_path / "metrics.json" / "job" / "metrics.json")  # a file: no folder


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_run_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    from bnstudy.checkpoints import AtomicCheckpointIO

    old = os.umask(umask)
    try:
        RunRecord().write(tmp_path / "metrics.json")
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == mode


def test_a_write_error_names_the_file_whatever_the_library_gave():
    """A file named in bytes (TensorBoard's); one outside the job directory (data it cannot
    read) is no write error; an error without an errno in its own words."""
    events = b"/runs/job/events.out.tfevents.1.vm.2.0"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), events)
    assert write_error(full, "/runs/job").startswith(
        f"Could not write {os.fsdecode(events)}: No space left on device.")
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), "/data/MNIST/raw/x")
    assert write_error(denied, "/runs/job") is None
    assert write_error(OSError(errno.EACCES, "denied", "/runs/job/hparams.yaml"), "/runs/job")
    assert write_error(ValueError("not an OSError"), "/runs/job") is None
    unnamed = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file named: the job's
    assert write_error(unnamed, "/runs/job").startswith("Could not write /runs/job: No space")
    assert describe_write_error(OSError("the disk said no"), "job/metrics.json") == (
        "Could not write job/metrics.json: the disk said no. A run file is replaced only once "
        "its new version is complete, so the run's previous checkpoint and metrics.json are "
        "still usable. To go on, fix the cause, then run the same command with resume=true.")


def test_two_plans_are_told_apart_by_their_folders_names_then_by_shared_settings():
    """(Through the entry point: test_sweep.) Other shared settings, each side's value or
    `(default)`, in a one-job plan too; jobs that differ by a key one plan adds: the first."""
    there = [{"seed": "0", "norm": n, "dataset.lr": "0.05", "trainer.max_epochs": "4"}
             for n in ("bn", "none")]
    assert plan_clash(there, there) is None
    here = [{"seed": "0", "norm": n, "dataset.lr": "0.1"} for n in ("bn", "none")]
    assert plan_clash(there, here) == "sweep, run with other settings (dataset.lr: 0.05 -> 0.1; " \
        "trainer.max_epochs: 4 -> (default)),"
    assert plan_clash(there[:1], [{**there[0], "dataset.lr": "0.1"}]) == \
        "sweep, run with other settings (dataset.lr: 0.05 -> 0.1),"
    plain = [{"norm": n} for n in ("bn", "none")]
    assert plan_clash(plain, [{**job, "optim": "sgd"} for job in plain]).startswith(
        "sweep, numbered otherwise: its job 0 is norm=bn, this sweep's would be norm=bn "
        "optim=sgd. ")


def test_a_trial_interrupted_names_the_study_folder_to_resume(tmp_path):
    """A cell's trial runs in SWEEP/search/<cell>/, but the user resumes SWEEP (resuming the
    cell's folder would run a plain sweep)."""
    cell = tmp_path / SEARCH_DIR / "mnist-bn-sgd"
    cell.mkdir(parents=True)
    assert study_dir(cell) == cell  # no study plan above it: a folder that is merely named so
    (tmp_path / "multirun.yaml").write_text("{}")
    assert study_dir(cell) == tmp_path
    assert study_dir(tmp_path) == tmp_path
    assert study_dir(cell.parent) == tmp_path  # the searches' folder


def test_a_sweeps_jobs_are_found_by_their_files_and_listed_by_number(tmp_path):
    """A job directory holds `.hydra/config.yaml` or a record (an empty folder or `+mean/` is
    none); jobs and their records come in job order (`10_` after `9_`, not by name)."""
    (tmp_path / "+mean").mkdir()
    (tmp_path / "3_configured" / ".hydra").mkdir(parents=True)
    (tmp_path / "3_configured" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    for name in ("10_late", "9_early"):
        RunRecord(status="ok").write(tmp_path / name / "metrics.json")
    assert [p.name for p in job_dirs(tmp_path)] == ["3_configured", "9_early", "10_late"]
    assert [job.name for job, _ in sweep_records(tmp_path)] == ["9_early", "10_late"]
    assert sorted(["10_lr=0.1", "9_a_b", "notes", "2", "0_a"], key=job_order) == [
        "notes", "0_a", "2", "9_a_b", "10_lr=0.1"]  # a name without a number first
    assert job_order("10_lr=0.1") == (10, "10_lr=0.1")
    assert varying([]) == [] and varying([{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]) == ["a"]


def test_a_config_composed_in_python_is_saved_as_hydra_saves_a_jobs(tmp_path):
    """`.hydra/config.yaml` without Hydra's node, `.hydra/hydra.yaml` with it alone."""
    from helpers import compose_config
    from omegaconf import OmegaConf

    cfg = compose_config("seed=3")
    save_composed(cfg, tmp_path)
    task = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert "hydra" not in task and task.seed == 3 and set(task) == set(cfg) - {"hydra"}
    assert list(OmegaConf.load(tmp_path / ".hydra" / "hydra.yaml")) == ["hydra"]
