"""`metrics.json`, the per-run record (`RunRecord`), and every run file written atomically
(a temporary file, fsync, rename), with the umask's mode, one paragraph if refused."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnstudy.errors import RunFileError
from bnstudy.jobdir import DIR_SETTINGS

if TYPE_CHECKING:
    import numpy as np

RECORD_NAME = "metrics.json"
TUNING_FILE = "tuning.json"  # a tuned sweep's searches (bnstudy.tune), in its sweep directory
SEARCH_DIR = "search"  # SWEEP/search/<cell>/: a tuned sweep cell's trials, a sweep of its own
RECIPE_FILE = "recipe.json"  # images/: the recipe `python -m bnstudy.draw` drew them with
TEST_CORRECT_FILE = "test_correct.npy"  # per test image, in order: classified correctly
SHOWN = ("dataset", "norm", "optim", "seed")  # in every run name already
# override keys (prefixes) of how a job runs and is kept, not of which job it is (an added
# callback is; an added optimizer argument, `+optim.optimizer.weight_decay=...`, is not)
HOW_IT_RUNS = ("paths.", "resume", "overwrite", "threads", "trainer.enable_progress_bar",
               "trainer.enable_checkpointing", "logger", "+callbacks.", "~")  # logger=csv too

_OTHER_DIR = f"point {DIR_SETTINGS} at"
_WRITABLE = f"make that directory writable, or {_OTHER_DIR} a directory you can write to"
REMEDIES = {errno.ENOSPC: f"free space, or {_OTHER_DIR} another disk",
            errno.EDQUOT: f"free space or raise your disk quota, or {_OTHER_DIR} another disk",
            errno.EACCES: _WRITABLE, errno.EPERM: _WRITABLE,
            errno.EROFS: f"{_OTHER_DIR} a writable disk"}


def describe_write_error(err: OSError, path: str | os.PathLike) -> str:
    """One paragraph for a run file that could not be written: which, why, and what to do."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    return (f"Could not write {path}: {reason}. A run file is replaced only once its new version "
            "is complete, so the run's previous checkpoint and metrics.json are still usable. "
            f"To go on, {REMEDIES.get(err.errno, 'fix the cause')}, then run the same command "
            "with resume=true.")


def write_error(err: BaseException, job_dir: str | os.PathLike) -> str | None:
    """`describe_write_error`'s paragraph for a library's OSError writing its own run file: a
    full or read-only disk, or no permission under `job_dir`; None for anything else."""
    if not isinstance(err, OSError) or isinstance(err, RunFileError):
        return None
    path = None if err.filename is None else os.fsdecode(err.filename)  # TensorBoard's: bytes
    inside = path is not None and \
        Path(os.path.abspath(path)).is_relative_to(Path(job_dir).absolute())
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or \
            (inside and err.errno in (errno.EACCES, errno.EPERM)):
        return describe_write_error(err, path or job_dir)
    return None


def job_order(job: str | os.PathLike) -> tuple[int, str]:
    """A job directory's place in its sweep: by number (`10_…` after `9_…`), then by name."""
    head = Path(job).name.split("_", 1)[0]
    return (int(head) if head.isdigit() else -1, Path(job).name)


def is_job_dir(path: Path) -> bool:
    """Whether `path` is a run's directory: it holds `.hydra/config.yaml` or a record."""
    return (path / ".hydra" / "config.yaml").is_file() or (path / RECORD_NAME).is_file()


def job_dirs(folder: str | os.PathLike) -> list[Path]:
    """The run directories (`is_job_dir`) in a sweep's `folder`, in job order."""
    return sorted(filter(is_job_dir, Path(folder).iterdir()), key=job_order)


def folder_of_sweeps(folder: str | os.PathLike) -> str | None:
    """What to pass instead of a folder that holds sweeps one or two levels down (`outputs`,
    `outputs/multirun`: folders with a `multirun.yaml` and jobs), or None."""
    folder = Path(folder)
    sweeps = sorted((plan.parent for plan in [*folder.glob("*/multirun.yaml"),
                                              *folder.glob("*/*/multirun.yaml")]
                     if job_dirs(plan.parent)), key=lambda sweep: sweep.name)
    if not sweeps:
        return None
    names = ("…, " if len(sweeps) > 3 else "") + ", ".join(
        str(sweep.relative_to(folder)) for sweep in sweeps[-3:])
    return (f"{folder} holds sweeps, not runs ({len(sweeps)}: {names}). Pass one of them, e.g. "
            f"{sweeps[-1]}.")


def study_dir(sweep_dir: str | Path) -> Path:
    """The folder a user resumes: the tuned study's (SWEEP) for its searches' folder
    (SWEEP/search) or a cell's (SWEEP/search/<cell>), else `sweep_dir` itself."""
    sweep_dir = Path(sweep_dir)
    for search in (sweep_dir, sweep_dir.parent):
        if search.name == SEARCH_DIR and (search.parent / "multirun.yaml").is_file():
            return search.parent
    return sweep_dir


def plan_overrides(hydra: Any) -> list:
    """A multirun's overrides (`multirun.yaml`'s `hydra`), parsed in Hydra's basic sweeper's
    order: `sweeper.params`, then the command line's as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = [f"{k}={v}" for k, v in (OmegaConf.select(hydra, "sweeper.params") or {}).items()]
    task = OmegaConf.to_container(hydra.overrides.task, resolve=False)  # run_name=${...} as typed
    return OverridesParser.create().parse_overrides([*params, *task])


def planned_jobs(hydra: Any) -> list[dict[str, str]] | None:
    """The jobs a multirun's Hydra node plans, numbered as Hydra's basic sweeper does, each
    `{key: value}` as typed, without `HOW_IT_RUNS` keys; None for a range or interval."""
    parsed = {o.get_key_element(): o for o in plan_overrides(hydra)}
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed.values()):
        return None
    choices = [[(key, value) for value in o.sweep_string_iterator()] if o.is_sweep_override()
               else [(key, o.get_value_element_as_str())]
               for key, o in parsed.items() if not key.startswith(HOW_IT_RUNS)]
    return [dict(job) for job in itertools.product(*choices)]


def varying(plan: list[dict[str, str]]) -> list[str]:
    """The keys whose value differs between a plan's jobs (`planned_jobs`)."""
    return [key for key in plan[0] if len({job.get(key) for job in plan}) > 1] if plan else []


def plan_clash(there: list[dict] | None, here: list[dict]) -> str | None:
    """How the folder's planned jobs (`there`; None: no grid) and this sweep's differ, as
    `sweep.check_plan` says it; None where they agree. Jobs are compared by the keys naming
    their folders, on each number both have; then by the settings they share."""
    if there is None:
        return "kind of sweep, not a grid of values (a tuned study's searches?): in one " \
            "folder the report would read the two as one study,"
    varies = {*varying(there), *varying(here)}
    theirs, ours = ([{k: v for k, v in job.items() if k in varies or k in SHOWN} for job in plan]
                    for plan in (there, here))
    differ = [i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b]
    if not differ:
        changed = [f"{k}: {there[0].get(k, '(default)')} -> {here[0].get(k, '(default)')}"
                   for k in dict.fromkeys([*there[0], *here[0]])
                   if there[0].get(k) != here[0].get(k)]
        return f"sweep, run with other settings ({'; '.join(changed)})," if changed else None
    clash = next((i for i in differ if any(theirs[i][k] != ours[i][k]
                                           for k in theirs[i].keys() & ours[i].keys())),
                 differ[0])  # a value both plans give, if any, over a key one of them adds
    a, b = theirs[clash], ours[clash]
    keys = varies | {k for k, _ in a.items() ^ b.items()}
    there_job, here_job = (" ".join(f"{k}={v}" for k, v in job.items() if k in keys)
                           for job in (a, b))
    elsewhere = f" (job {theirs.index(b)} there)" if b in theirs else ""
    return (f"sweep, numbered otherwise: its job {clash} is {there_job}, this sweep's would be "
            f"{here_job}{elsewhere}. In one folder the two would train a setting twice, or two "
            "settings under one number,")


def save_composed(cfg: Any, job_dir: Path) -> None:
    """A config composed in Python saved as Hydra saves a job's (`.hydra/config.yaml`,
    `hydra.yaml`): draw, eval and a resume read it."""
    from omegaconf import OmegaConf

    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    for name, node in (("config.yaml", task), ("hydra.yaml", {"hydra": cfg.hydra})):
        replace_file(job_dir / ".hydra" / name, OmegaConf.to_yaml(node).encode())


def sweep_records(sweep_dir: str | os.PathLike) -> list[tuple[Path, RunRecord]]:
    """The sweep's jobs that have a record, each with its record, in job order."""
    jobs = sorted((p.parent for p in Path(sweep_dir).glob(f"*/{RECORD_NAME}")), key=job_order)
    return [(job, record) for job in jobs if (record := RunRecord.read(job)) is not None]


def read_tuning(sweep_dir: str | os.PathLike) -> dict | None:
    """A tuned sweep's `tuning.json` (`bnstudy.tune`); None for any other sweep."""
    path = Path(sweep_dir) / TUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def final_jobs(tuning: dict) -> list[str]:
    """The job folders of a tuned sweep's kept re-runs, cell by cell (none while it searches)."""
    return [job for cell in tuning.get("cells", []) for job in cell.get("final_jobs", [])]


def replace_file(path: str | Path, data: bytes | memoryview, previous: Path | None = None) -> None:
    """Puts `data` at `path` atomically (a reader or a kill finds the old file or the new one);
    with `previous`, the old file is kept there. An OSError is raised as a RunFileError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # (no folder to remove it from: a file stands there)
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RunFileError(describe_write_error(err, path)) from err
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Writes JSON atomically (`replace_file`); NaN and infinities become null."""
    finite = json.loads(json.dumps(data), parse_constant=lambda _: None)
    replace_file(path, json.dumps(finite, indent=2).encode())


def write_test_correct(job_dir: str | Path, correct) -> None:
    """The job's `test_correct.npy`: a numpy bool per test image, written atomically."""
    import numpy as np  # here: numpy is no cost to what reads a config or a record

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(correct, dtype=bool), allow_pickle=False)
    replace_file(Path(job_dir) / TEST_CORRECT_FILE, buffer.getbuffer())


def read_test_correct(job_dir: str | Path) -> np.ndarray | None:
    """The job's `test_correct.npy` (None if absent or unreadable)."""
    import numpy as np

    path = Path(job_dir) / TEST_CORRECT_FILE
    try:
        return np.load(path, allow_pickle=False) if path.is_file() else None
    except (OSError, ValueError):
        return None


@dataclass
class RunRecord:
    """A run's `metrics.json` (its schema). `status`: running | ok | diverged | failed |
    interrupted; `history`: a row per epoch (`epoch`, `step`, the curves, `time_s` trained so
    far); `job`: the launcher's job a requeue keeps; `trackers`: the runs a resume goes on with."""

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

    @staticmethod
    def _file(path: str | Path) -> Path:
        return Path(path) / RECORD_NAME if Path(path).is_dir() else Path(path)

    @classmethod
    def read(cls, path: str | Path) -> RunRecord | None:
        """The record at `path` (a metrics.json or its folder) or None; not JSON: ValueError."""
        if not (file := cls._file(path)).is_file():
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(file.read_text()).items() if k in known})

    def write(self, path: str | Path) -> None:
        """Writes the record atomically to `path` (a metrics.json or its job directory)."""
        write_json_atomic(self._file(path), asdict(self))

    @classmethod
    def update(cls, path: str | Path, **changes: Any) -> RunRecord:
        """The record at `path` (a new one if none) with `changes`, written back atomically."""
        record = replace(cls.read(path) or cls(), **changes)
        record.write(path)
        return record

    @property
    def finished(self) -> bool:
        """Whether the record is a result (ok or diverged)."""
        return self.status in ("ok", "diverged")

    @property
    def final_val_acc(self) -> float | None:
        return self.history[-1].get("val/acc") if self.history else None

    @property
    def test_acc(self) -> float | None:
        return (self.test or {}).get("acc")

    def line(self) -> str:
        """One line of the outcome: name, status, final val and test accuracy, time."""
        pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        time_s = "-" if self.wall_time_s is None else f"{self.wall_time_s:.0f} s"
        return (f"{self.run_name or '?'}: {self.status}, val acc {pct(self.final_val_acc)}, "
                f"test acc {pct(self.test_acc)}, {time_s}")
