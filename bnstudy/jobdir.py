"""Who may write a job directory: one process at a time (`JobDirLock`, an `fcntl.flock` on
`<job>/job.lock` naming its holder, dropped by the kernel however its process ends), and
whether this start is its launcher's requeue (`launcher_job`, `is_requeue`)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import socket
from datetime import datetime
from pathlib import Path

from bnstudy.errors import ConfigError

log = logging.getLogger("bnstudy")

LOCK_NAME = "job.lock"
DIR_SETTINGS = "hydra.run.dir / hydra.sweep.dir"  # a message's name of what sets a job's folder


class RunExistsError(ConfigError):
    """The job directory holds a run this command must not touch (its record stays as is)."""


class JobDirBusyError(RunExistsError):
    """Another process holds the job directory's lock."""


class JobDirLock:
    """The lock on one job directory: `JobDirBusyError` while another holds it; without `flock`
    on the filesystem, a warning and no lock."""

    def __init__(self, job_dir: str | Path, name: str = LOCK_NAME) -> None:
        self.path = Path(job_dir) / name
        self._fd: int | None = None

    def acquire(self, run_name: str) -> None:
        """Takes the lock and writes the holder's description into the lock file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            job = self.path.parent
            raise JobDirBusyError(
                f"{job} is in use: {describe_holder(holder(job, self.path.name))} holds its lock "
                f"({self.path}). One process at a time trains or rewrites a job directory, so "
                "nothing was changed. Wait until it ends (or stop it), then run this command "
                "again, with resume=true to continue it; to train beside it, choose another "
                f"{DIR_SETTINGS}.") from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP, ...: no locks on this filesystem
            os.close(fd)
            log.warning("Could not lock %s (%s): this filesystem has no flock, so nothing stops "
                        "a second process from writing %s at the same time.", self.path,
                        os.strerror(err.errno) if err.errno else err, self.path.parent)
            return
        me = {"run": run_name, "host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file (kept: another process may be opening it) and drops the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> JobDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(job_dir: str | Path) -> bool:
    """Whether a process holds the lock of `job_dir` now (a shared lock tried and dropped)."""
    try:
        with open(Path(job_dir) / LOCK_NAME, "rb") as lock:  # closed: the lock is dropped
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:  # held (BlockingIOError); no lock file, or no flock on this filesystem
        return isinstance(err, BlockingIOError)
    return False


def config_subdir(output_dir: str, overwrite: bool) -> str | None:
    """Hydra's `output_subdir`: `.hydra`, unless the job directory holds one already (kept by a
    resume or a refused rerun; `overwrite=true` replaces it, unless another process holds it)."""
    exists = (Path(output_dir) / ".hydra" / "config.yaml").is_file()
    return None if exists and (not overwrite or is_locked(output_dir)) else ".hydra"


def holder(job_dir: str | Path, name: str = LOCK_NAME) -> dict:
    """The holder the lock file of `job_dir` names ({} if none; maybe one killed holding it)."""
    try:
        return json.loads((Path(job_dir) / name).read_bytes())
    except (OSError, ValueError):  # none, empty, or being written
        return {}


def describe_holder(holder: dict) -> str:
    """`cifar10-bn-sgd-seed0 in process 4711 on node12 since 2026-...`, or a shorter phrase."""
    if not holder:
        return "another process (it has not written its name into the lock file yet)"
    return (f"{holder.get('run', '?')} in process {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} since {holder.get('since', '?')}")


def is_primary() -> bool:
    """Whether this process writes the run's files: rank 0 of a multi-process (DDP) run."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def launcher_job() -> dict | None:
    """The launcher's job this process runs in, which a requeue keeps: `{"id": "slurm:123_4",
    "restarts": 0}` under SLURM, `{"id": "submitit-local:<host>:<pid>:<start>"}` (its
    controller process) under submitit's local executor, None elsewhere."""
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        array = env.get("SLURM_ARRAY_JOB_ID")
        job = f"{array}_{env.get('SLURM_ARRAY_TASK_ID', '')}" if array else env["SLURM_JOB_ID"]
        return {"id": f"slurm:{job}", "restarts": int(env.get("SLURM_RESTART_COUNT") or 0)}
    if env.get("SUBMITIT_EXECUTOR") == "local" and env.get("SUBMITIT_LOCAL_JOB_ID"):
        pid = env["SUBMITIT_LOCAL_JOB_ID"]
        return {"id": f"submitit-local:{socket.gethostname()}:{pid}:{_started(pid)}"}
    return None


def _started(pid: str) -> str:
    """When process `pid` started, in ticks since boot ('?' if unknown): a reused pid differs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def same_job(recorded: dict | None, current: dict | None) -> bool:
    """Whether `current` (`launcher_job()`) is the launcher job a record names."""
    return bool(recorded and current and recorded.get("id") == current["id"])


def is_requeue(recorded: dict | None, current: dict | None) -> bool:
    """Whether this start is a requeue of the job that wrote the record: the same job, started
    again (SLURM counts restarts: a second `srun` in one allocation is not one)."""
    return same_job(recorded, current) and current.get("restarts", 1) > recorded.get("restarts", 0)


def in_callers_words(message: str) -> str:
    """`message` naming `paths.output_dir` as what sets the job's folder where the overrides set
    it (a config composed in Python), not Hydra's `DIR_SETTINGS`."""
    from hydra.core.hydra_config import HydraConfig

    task = HydraConfig.get().overrides.task if HydraConfig.initialized() else ()
    if any(o.startswith("paths.output_dir=") for o in task):
        return message.replace(DIR_SETTINGS, "paths.output_dir")
    return message


def dir_override(key: str, folder: str | Path) -> str:
    """`key=folder` as typed in a shell and read back by Hydra: quoted for Hydra where the name
    has characters of its grammar (a run named by its overrides has `=`), then for the shell."""
    text = str(folder)
    hydra = re.search(r"""[=,\s()\[\]{}'"\\]""", text)
    return shlex.quote(f'{key}="{text}"' if hydra else f"{key}={text}")
