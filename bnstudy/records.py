"""`metrics.json`, the per-run record, and how every run file is written: atomically (a
temporary file beside it, fsync, rename), with the mode the umask gives, and with one clear
paragraph when the disk refuses."""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from bnstudy.errors import RunFileError

RECORD_NAME = "metrics.json"
TUNING_FILE = "tuning.json"  # a tuned sweep's searches (bnstudy.tune), in its sweep directory

_REMEDIES = {
    errno.ENOSPC: "free space, or point hydra.run.dir / hydra.sweep.dir at another disk",
    errno.EDQUOT: "free space or raise your disk quota, or point hydra.run.dir / "
    "hydra.sweep.dir at another disk",
    errno.EACCES: "make that directory writable, or point hydra.run.dir / hydra.sweep.dir "
    "at a directory you can write to",
    errno.EPERM: "make that directory writable, or point hydra.run.dir / hydra.sweep.dir "
    "at a directory you can write to",
    errno.EROFS: "point hydra.run.dir / hydra.sweep.dir at a writable disk",
}


def describe_write_error(err: OSError, path: str | os.PathLike) -> str:
    """One paragraph for a run file that could not be written: which, why, and what to do."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    remedy = _REMEDIES.get(err.errno, "fix the cause")
    return (
        f"Could not write {path}: {reason}. A run file is replaced only once its new version "
        f"is complete, so the run's previous checkpoint and metrics.json are still usable. "
        f"To go on, {remedy}, then run the same command with resume=true."
    )


class OutputFolder(Callback):
    """Makes the run's folder (`hydra.run.dir`) or the sweep's (`hydra.sweep.dir`) before Hydra
    does, and checks that a file can be written in it: a read-only or full disk ends the
    command in one paragraph, before anything runs (Hydra's own attempt ends in a traceback)."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the run's name resolves Hydra's overrides
        _make_output_folder(Path(config.hydra.run.dir), "the run's folder", "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        _make_output_folder(Path(config.hydra.sweep.dir), "the sweep's folder", "hydra.sweep.dir")


def _make_output_folder(folder: Path, what: str, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        remedy = _REMEDIES.get(err.errno, f"point {key} at a folder you can write to")
        sys.exit(f"Could not write {what}, {folder}: {reason}. Nothing was run. To go on, "
                 f"{remedy.replace('hydra.run.dir / hydra.sweep.dir', key)} (e.g. "
                 f"{key}=$HOME/bnstudy/{'run' if key == 'hydra.run.dir' else 'sweep'}1), or "
                 "launch from a folder you can write to (outputs/ is made where you launch).")


def write_error(err: BaseException, job_dir: str | os.PathLike) -> str | None:
    """`describe_write_error`'s paragraph for an OSError raised while a library wrote a run
    file itself (Lightning's hparams.yaml, TensorBoard's events): a full or read-only disk
    wherever the file was, or no permission under `job_dir`; None for anything else (a data
    file that cannot be read is not a write error)."""
    if not isinstance(err, OSError) or isinstance(err, RunFileError):
        return None
    path = None if err.filename is None else os.fsdecode(err.filename)  # TensorBoard's: bytes
    inside = path is not None and \
        Path(os.path.abspath(path)).is_relative_to(Path(job_dir).absolute())
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or \
            (inside and err.errno in (errno.EACCES, errno.EPERM)):
        return describe_write_error(err, path or job_dir)
    return None


RUN_FILES = (".hydra", "train.log", "job.lock", RECORD_NAME, "hparams.yaml",
             "events.out.tfevents.*", "checkpoints", "images")  # what a run writes at its start


def discard_untrained(job_dir: str | os.PathLike) -> bool:
    """Removes a job directory in which nothing was trained (no epoch in its record, no
    checkpoint) and which holds only what a run writes (`RUN_FILES`): a mistake found before
    training (a value out of range, missing data, a refused write) leaves no folder for the
    report to list, nor the empty folders above it inside the working directory. Whether the
    directory is gone; one holding anything else stays as it is."""
    job_dir = Path(job_dir)
    try:
        record = read_record(job_dir)
        entries = list(job_dir.iterdir())
    except (OSError, ValueError):
        return False
    if record.get("history") or any((job_dir / "checkpoints").glob("last.ckpt*")) or \
            not all(any(entry.match(pattern) for pattern in RUN_FILES) for entry in entries):
        return False
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return remove_empty_folder(job_dir)


def remove_empty_folder(folder: Path) -> bool:
    """Removes `folder` if it is empty, then each folder above it that this leaves empty,
    inside the working directory (`outputs/runs/`, made for it). Whether `folder` is gone."""
    cwd = Path.cwd().resolve()  # before the removal: the job may run in its own folder
    try:
        folder.rmdir()
    except OSError:
        return False
    for parent in folder.resolve().parents:
        if cwd not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break
    return True


def job_order(job: str | os.PathLike) -> tuple[int, str]:
    """A job directory's place in its sweep (a path or a name): by its number (`10_…` after
    `9_…`), then by name."""
    name = Path(job).name
    head = name.split("_", 1)[0]
    return (int(head) if head.isdigit() else -1, name)


def replace_file(
    path: str | Path, data: bytes | memoryview, previous: Path | None = None
) -> None:
    """Puts `data` at `path` so that a reader, or a kill at any moment, finds the old file or
    the new one, never half of one.

    The temporary file beside `path` is created with mode 0o666 and the umask applied, as
    any other file. With `previous`, the old `path` is kept there. An OSError is raised as
    a RunFileError whose message is `describe_write_error`'s paragraph.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RunFileError(describe_write_error(err, path)) from err
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Writes JSON so that a reader sees the old file or the new one, never half of one."""
    replace_file(path, json.dumps(_finite_or_none(data), indent=2).encode())


@dataclass
class RunRecord:
    """A run's `metrics.json`: this class is its schema, written and read here only.

    `status`: running | ok | diverged | failed | interrupted. `history`: a row per trained
    epoch (`epoch`, `step`, `train/loss`, `train/acc`, `val/loss`, `val/acc`, `time_s`, the
    seconds trained so far). `test`: `{"loss", "acc"}` of the finished run. `job`: the
    launcher's job (`jobdir.launcher_job`), which a requeue keeps; `trackers`: the tracker runs
    a resume goes on logging to; `activations`, `gradients`: the probes' series."""

    status: str = "running"
    run_name: str = ""
    hparams: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    test: dict | None = None
    wall_time_s: float | None = None
    epochs_trained: int | None = None
    torch_threads: int | None = None
    job: dict | None = None
    requeues: int = 0
    trackers: dict | None = None
    error: str | None = None
    traceback: str | None = None
    diverged_at: dict | None = None
    resume_note: str | None = None
    activations: dict | None = None
    gradients: dict | None = None

    @classmethod
    def read(cls, path: str | Path) -> RunRecord | None:
        """The record at `path` (a metrics.json or its job directory); None if there is none.
        Keys this schema does not know are ignored; a file that is not JSON raises ValueError."""
        data = read_record(path)
        if not data:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: str | Path) -> None:
        """Writes the record atomically (`write_json_atomic`) to `path` or its job directory."""
        path = Path(path)
        write_json_atomic(path / RECORD_NAME if path.is_dir() else path, asdict(self))

    @property
    def final_val_acc(self) -> float | None:
        return self.history[-1].get("val/acc") if self.history else None

    @property
    def test_acc(self) -> float | None:
        return (self.test or {}).get("acc")


def read_record(path: str | Path) -> dict:
    """The record at `path` (a metrics.json or the job directory holding one); {} if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def update_record(path: str | Path, drop: tuple[str, ...] = (), **fields: Any) -> dict:
    """Merges `fields` into the record at `path`, without the keys in `drop`, and writes it
    back atomically."""
    record = {k: v for k, v in read_record(path).items() if k not in drop}
    record.update(fields)
    write_json_atomic(path, record)
    return record


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value
