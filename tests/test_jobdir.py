"""One writer per job directory (the lock), and a requeue told apart from a rerun."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest
from helpers import launcher_env

from bnstudy.jobdir import (
    LOCK_NAME,
    JobDirBusyError,
    JobDirLock,
    describe_holder,
    dir_override,
    holder,
    is_locked,
    is_primary,
    is_requeue,
    launcher_job,
    same_job,
)


def test_a_second_holder_is_refused_naming_the_first_in_full(tmp_path):
    """The refusal word for word; the lock file (made with its folders, not executable) names
    its holder; released, it stays, empty (a process may be opening it), and the lock is free."""
    import re
    import stat

    job = tmp_path / "sweep" / "0_mnist"  # not there yet
    with JobDirLock(job) as first:
        first.acquire("mnist-bn-sgd-seed0")
        owner = json.loads((job / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["run"] == "mnist-bn-sgd-seed0"
        with pytest.raises(JobDirBusyError) as refused:  # another open file: another writer
            JobDirLock(job).acquire("other")
        assert holder(job) == owner and is_locked(job)
    assert str(refused.value) == (
        f"{job} is in use: mnist-bn-sgd-seed0 in process {os.getpid()} on "
        f"{socket.gethostname()} since {owner['since']} holds its lock ({job / LOCK_NAME}). "
        "One process at a time trains or rewrites a job directory, so nothing was changed. Wait "
        "until it ends (or stop it), then run this command again, with resume=true to "
        "continue it; to train beside it, choose another hydra.run.dir / hydra.sweep.dir.")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", owner["since"])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((job / LOCK_NAME).stat().st_mode) == 0o666 & ~umask
    assert (job / LOCK_NAME).read_bytes() == b"" and holder(job) == {}
    assert not is_locked(job) and not is_locked(tmp_path / "absent")
    with JobDirLock(job) as again:
        again.acquire("mnist-bn-sgd-seed0")
    assert describe_holder({}) == \
        "another process (it has not written its name into the lock file yet)"
    assert describe_holder({"pid": 7}) == "? in process 7 on ? since ?"
    assert describe_holder({"run": "r"}) == "r in process ? on ? since ?"


def test_a_slurm_requeue_keeps_the_job_id_and_counts_a_restart(monkeypatch):
    launcher_env(monkeypatch)
    assert launcher_job() is None  # no launcher: never a requeue
    monkeypatch.setenv("SLURM_JOB_ID", "1001")
    assert launcher_job() == {"id": "slurm:1001", "restarts": 0}  # not an array job
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1000")  # an array job without its task's id
    assert launcher_job()["id"] == "slurm:1000_"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    first = launcher_job()
    assert first == {"id": "slurm:1000_3", "restarts": 0}
    assert not is_requeue(first, launcher_job())  # a second srun in the same allocation
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # scontrol requeue: the same job again
    requeued = launcher_job()
    assert is_requeue(first, requeued) and same_job(first, requeued)
    assert not is_requeue(requeued, launcher_job())  # a second srun after the requeue
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert is_requeue(requeued, launcher_job())  # requeued again
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # another task of the array
    assert not is_requeue(first, launcher_job()) and not same_job(first, launcher_job())
    assert not is_requeue(None, launcher_job())
    assert not same_job(requeued, None) and not same_job(None, requeued)


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOLCK, os.strerror(errno.ENOLCK)), "No locks available"),  # Lustre, no flock
    (OSError("locks are off here"), "locks are off here"),  # no errno: its own words
])
def test_without_flock_the_run_warns_and_goes_on_unlocked(tmp_path, monkeypatch, caplog, error,
                                                          reason):
    import fcntl

    def no_locks(fd, operation):
        raise error

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with JobDirLock(tmp_path) as lock:
        lock.acquire("mnist-bn-sgd-seed0")
    assert caplog.messages == [
        f"Could not lock {tmp_path / LOCK_NAME} ({reason}): this filesystem has no "
        f"flock, so nothing stops a second process from writing {tmp_path} at the same time."]
    assert holder(tmp_path) == {} and not is_locked(tmp_path)  # the file is there, untried


def test_a_resume_or_a_refused_rerun_leaves_the_stored_config_as_it_was(tmp_path):
    """`.hydra` is written unless it exists; `overwrite=true` replaces it unless another
    process holds the lock (that command will be refused)."""
    from bnstudy.jobdir import config_subdir

    assert config_subdir(str(tmp_path), False) == ".hydra"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    assert config_subdir(str(tmp_path), False) is None
    assert config_subdir(str(tmp_path), True) == ".hydra"
    with JobDirLock(tmp_path) as lock:
        lock.acquire("mnist-bn-sgd-seed0")
        assert config_subdir(str(tmp_path), True) is None


def test_a_submitit_job_is_named_by_its_controllers_start(monkeypatch, tmp_path):
    """By its controller's start in ticks since boot (a later process given its pid is another
    job); a pid that is not running: '?'."""
    import shutil
    import subprocess

    from bnstudy.jobdir import _started

    launcher_env(monkeypatch)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", str(os.getpid()))  # a live process: its start
    job = launcher_job()
    assert job["id"] == f"submitit-local:{socket.gethostname()}:{os.getpid()}:" \
        f"{_started(str(os.getpid()))}" and not job["id"].endswith(":?")
    assert is_requeue(job, launcher_job())
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", str(os.getppid()))  # another job's controller
    assert not is_requeue(job, launcher_job())
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "999999999")
    assert launcher_job()["id"] == f"submitit-local:{socket.gethostname()}:999999999:?"
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # not its local executor: no launcher job
    assert launcher_job() is None
    odd = tmp_path / "x) y"  # a program name holding ") ": /proc's stat shows it as it is
    odd.symlink_to(shutil.which("sleep"))
    children = [subprocess.Popen([str(odd), "30"]), subprocess.Popen(["sleep", "30"])]
    try:  # (a small process: its memory size, the next field, is less than this one's)
        named, plain = (int(_started(str(child.pid))) for child in children)
        assert int(_started(str(os.getpid()))) <= plain and abs(named - plain) < 200
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_rank_0_alone_is_primary(monkeypatch):
    """Of DDP (RANK, LOCAL_RANK) or SLURM's tasks (SLURM_PROCID); the console side: test_train."""
    ranks = ("RANK", "LOCAL_RANK", "SLURM_PROCID")
    for name in ranks:
        monkeypatch.delenv(name, raising=False)
    assert is_primary()
    for name in ranks:
        monkeypatch.setenv(name, "1")
        assert not is_primary(), name
        monkeypatch.setenv(name, "0")
    assert is_primary()


@pytest.mark.parametrize("folder", ["outputs/runs/plain", "out/mnist-seed0-max_epochs=1,lr=[0.1]",
                                    "my runs/it's"])
def test_a_folder_override_pastes_through_the_shell_and_hydra(folder):
    """Quoted for Hydra's grammar (`=`, `,`, brackets, a space), then the shell; plain: as is."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = dir_override("hydra.run.dir", folder)
    (parsed,) = OverridesParser.create().parse_overrides(shlex.split(typed))
    assert (parsed.key_or_group, parsed.value()) == ("hydra.run.dir", folder)
    assert (typed == f"hydra.run.dir={folder}") == (folder == "outputs/runs/plain")
