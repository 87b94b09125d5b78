"""A finished run rebuilt from its directory for `bnstudy.draw` and `bnstudy.eval`: its stored
config, datamodule (the same splits from the same files, never downloaded) and model."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnstudy.errors import DataError, first_line, one_line
from bnstudy.jobdir import JobDirBusyError, JobDirLock, describe_holder, holder
from bnstudy.records import RECORD_NAME, RunRecord, folder_of_sweeps, is_job_dir, job_dirs

CHECKPOINT = Path("checkpoints") / "last.ckpt"
# what a config that no longer builds raises: e.g. a class renamed since the run (Hydra's), or
# a setting it no longer takes
NOT_BUILT = (OmegaConfBaseException, HydraException)


class RunError(Exception):
    """A path or a run the command cannot use; the message is one paragraph saying what to do."""


class UsageError(Exception):
    """The command line is wrong; the message is one paragraph."""


@contextlib.contextmanager
def writing(run_path: Path, command: str, done: str):
    """Holds the run's lock while `command` writes into it (one writer per job directory: its
    training, a draw, an eval); `done` ("drawn", "evaluated") words the refusal."""
    with JobDirLock(run_path) as lock:
        try:
            lock.acquire(f"python -m bnstudy.{command}")
        except JobDirBusyError:
            raise RunError(f"{run_path.name}: not {done}, it is in use: "
                           f"{describe_holder(holder(run_path))}. Run this command again when "
                           "that process has ended.") from None
        except OSError as err:
            raise RunError(f"{run_path.name}: not {done}, its folder cannot be written "
                           f"({err.strerror or err}).") from None
        yield


def parse_setting(item: str, how: str) -> tuple[str, object]:
    """A KEY=VALUE setting parsed as a Hydra override; `how` ends the refusal."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(item)
    except HydraException as err:
        raise UsageError(f"{item!r} is not a setting ({err}){how}") from err
    if override.is_sweep_override():  # `steps=400,800`: Hydra's ChoiceSweep(...)
        first = next(override.sweep_string_iterator(), None) if \
            override.is_discrete_sweep() else None
        raise UsageError(f"{item}: one value a setting (several are a sweep of `python -m "
                         "bnstudy.train -m`); run this command once a value"
                         + (f", e.g. {override.key_or_group}={first}." if first else "."))
    return override.key_or_group, override.value()


def set_once(given: dict, key: str, value, name: str) -> None:
    """`given[key] = value`, refusing another value given before (`steps=10 steps=400`)."""
    if given.setdefault(key, value) != value:
        raise UsageError(f"{name} is given twice ({given[key]} and {value}), and only one can be "
                         f"used, so nothing was done. Give it once, e.g. {name}={value}.")


def run_dirs(path: Path) -> list[Path]:
    """The runs `path` names: a run's directory, or a sweep's jobs (by job number)."""
    if not path.exists():
        raise RunError(f"{path} does not exist. Pass a run's directory (outputs/runs/<time>_"
                       "<name>), a sweep's directory (outputs/multirun/<date>_<time>) or, for "
                       "eval, a checkpoint (<run>/checkpoints/last.ckpt).")
    if not path.is_dir():
        raise RunError(f"{path} is a file, not a run's or a sweep's directory. Pass the "
                       "directory a run or sweep of `python -m bnstudy.train` wrote.")
    if is_job_dir(path):
        return [path]
    if not (jobs := job_dirs(path)):
        raise RunError(folder_of_sweeps(path) or runs_below(path) or (
            f"{path} holds no runs: neither it nor any folder in it has a .hydra/config.yaml or "
            f"a {RECORD_NAME}. Pass the directory a run or sweep of `python -m bnstudy.train` "
            "wrote (hydra.run.dir or hydra.sweep.dir)."))
    return jobs


def runs_below(folder: Path) -> str | None:
    """What to pass instead of a folder whose runs lie a level further down (`outputs`, whose
    `runs/` holds the single runs), or None."""
    runs = sorted(run for run in folder.glob("*/*") if run.is_dir() and is_job_dir(run))
    if not runs:
        return None
    held = ", ".join(f"{where.name}/ holds {n}"
                     for where, n in sorted(Counter(run.parent for run in runs).items()))
    return (f"{folder} holds no runs itself ({held}). Pass such a folder for all its runs, e.g. "
            f"{runs[-1].parent}, or one run, e.g. {runs[-1]}.")


@dataclass
class SavedRun:
    """A run's directory, its record and its stored config."""

    path: Path
    record: RunRecord | None
    cfg: DictConfig
    launched_in: Path | None = None  # where the run was started (relative paths start there)

    def __post_init__(self) -> None:
        self.name, self.checkpoint = self.path.name, self.path / CHECKPOINT
        self.status = self.record.status if self.record else f"no {RECORD_NAME}"

    @classmethod
    def open(cls, path: Path) -> SavedRun:
        stored = path / ".hydra" / "config.yaml"
        if not stored.is_file():
            raise RunError(f"{path.name}: no .hydra/config.yaml, so its dataset and model "
                           "cannot be rebuilt. Only directories written by `python -m "
                           "bnstudy.train` can be used.")
        hydra_file = path / ".hydra" / "hydra.yaml"
        try:
            cfg = OmegaConf.load(stored)
            record = RunRecord.read(path)
            cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") \
                if hydra_file.is_file() else None
        except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as err:
            raise RunError(f"{path.name}: its .hydra/ files or {RECORD_NAME} do not read "
                           f"({type(err).__name__}: {one_line(err)}).") from err
        return cls(path, record, cfg, Path(cwd) if cwd else None)

    def data_dir(self, override: str | None = None) -> Path:
        """Where the run's data is: `override`, else the run's own setting (relative to where
        the run was launched)."""
        if override:
            return Path(override).expanduser().resolve()
        try:
            value = OmegaConf.select(self.cfg, "paths.data_dir", throw_on_resolution_failure=True)
        except OmegaConfBaseException as err:
            raise RunError(f"{self.name}: its paths.data_dir does not resolve ({err}); give "
                           "the data's folder with paths.data_dir=DIR.") from err
        path = Path(str(value)).expanduser()
        if not path.is_absolute():
            path = (self.launched_in if self.launched_in and self.launched_in.is_dir()
                    else Path.cwd()) / path
        return path.resolve()


@dataclass
class DataCache:
    """Datamodules set up once per distinct dataset and split."""

    data_dir: str | None = None  # paths.data_dir=... from the command line
    _built: dict = field(default_factory=dict)
    _said: set = field(default_factory=set)  # each distinct data error, said once

    def get(self, run: SavedRun, stage: str):
        """The run's datamodule (its config, download off), set up for `stage`."""
        from hydra.utils import instantiate

        node = run.cfg.dataset.datamodule
        where = run.data_dir(self.data_dir)
        try:
            plain = OmegaConf.to_container(node, resolve=False)
            plain = {k: v for k, v in plain.items() if k not in ("data_dir", "seed", "batch_size")}
            drawn_by = run.cfg.get("seed") if plain.get("split_seed") is None else None
            key = json.dumps([plain, str(where), OmegaConf.select(run.cfg, "dataset.val_size"),
                              OmegaConf.select(run.cfg, "dataset.train_size"), stage, drawn_by],
                             sort_keys=True, default=str)
            if key not in self._built:
                data = instantiate(node, data_dir=str(where), download=None)  # never downloads
                data.prepare_data()
                data.setup(stage)
                self._built[key] = data
        except NOT_BUILT as err:
            raise RunError(f"{run.name}: its dataset config does not build "
                           f"({one_line(err)}).") from err
        except DataError as err:
            self._built[key] = None  # said once: the runs of the same data after it, shortly
            if str(err) not in self._said:  # (another split of the same missing files: shortly)
                self._said.add(str(err))
                raise
        if self._built[key] is None:
            raise DataError(f"{run.name}: its data is not there either (see above).")
        return self._built[key]


def restore(run: SavedRun, data: DataCache, stage: str, path: Path | None = None):
    """The run's checkpoint (`path`, default `checkpoints/last.ckpt`), its datamodule set up
    for `stage`, and its LightningModule with the checkpoint's weights, in eval mode."""
    from bnstudy.checkpoints import read_checkpoint
    from bnstudy.run import build_model

    path = path or run.checkpoint
    if not path.is_file():
        raise RunError(
            f"{run.name}: no checkpoint ({path} is missing), so its network cannot "
            f"be loaded. A run keeps checkpoints/last.ckpt unless it was trained without one "
            "(trainer.enable_checkpointing=false or ~callbacks.checkpoint) or the file was "
            "removed; train it again to get one (the same command with overwrite=true, without "
            "those).")
    try:
        checkpoint = read_checkpoint(path)
    except Exception as err:  # whatever torch.load raises, the file is unusable
        raise RunError(f"{run.name}: {path} does not load ({first_line(err)}); "
                       "the file is damaged. Its previous version, if any, is "
                       "checkpoints/last.ckpt.prev.") from err
    datamodule = data.get(run, stage)
    try:
        model = build_model(run.cfg, datamodule.input_shape, datamodule.num_classes)
    except NOT_BUILT as err:
        raise RunError(f"{run.name}: its model config does not build "
                       f"({one_line(err)}).") from err
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise RunError(f"{run.name}: {path} does not fit the network of its "
                       f".hydra/config.yaml ({first_line(err)}).") from err
    return checkpoint, datamodule, model.eval()
