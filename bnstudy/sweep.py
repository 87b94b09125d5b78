"""A sweep's edges: the output folder checked before anything runs (`OutputFolder`), the
summary when a multirun ends (`SweepSummary`), submitit jobs collected one by one."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnstudy.errors import RunFileError
from bnstudy.jobdir import DIR_SETTINGS, describe_holder, dir_override, holder, is_locked
from bnstudy.records import (
    RECORD_NAME,
    REMEDIES,
    TUNING_FILE,
    RunRecord,
    job_dirs,
    job_order,
    plan_clash,
    planned_jobs,
    replace_file,
    study_dir,
    sweep_records,
)
from bnstudy.run import discard_folder
from bnstudy.trackers import uses_tensorboard

log = logging.getLogger("bnstudy")

REFUSALS_ENV = "BNSTUDY_SWEEP_REFUSALS"  # where a sweep's refused jobs leave their message
PLUGIN = "hydra_plugins.bnstudy_launchers"  # the submitit launchers collecting job by job


class OutputFolder(Callback):
    """Makes the run's or sweep's folder before Hydra does (whose attempt ends in a traceback),
    writing a file in it: a read-only or full disk is one paragraph before anything runs."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the run's name resolves Hydra's overrides
        _make_output_folder(config, "run")

    def on_multirun_start(self, config, **kwargs) -> None:
        _make_output_folder(config, "sweep")


def _make_output_folder(config: DictConfig, kind: str) -> None:
    folder, key = Path(config.hydra[kind].dir), f"hydra.{kind}.dir"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        remedy = REMEDIES.get(err.errno, f"point {key} at a folder you can write to")
        sys.exit(f"Could not write the {kind}'s folder, {folder}: {reason}. Nothing was run. To "
                 f"go on, {remedy.replace(DIR_SETTINGS, key)} (e.g. "
                 f"{key}=$HOME/bnstudy/{kind}1), or launch from a folder you can write to "
                 "(outputs/ is made where you launch).")


def announce(config: DictConfig) -> None:
    """Where to browse as jobs finish, said by the sweepers once the jobs compose."""
    if uses_tensorboard(config.get("logger")):
        from bnstudy.dashboard import BROWSE_URL

        log.info("Browse as jobs finish: tensorboard --logdir %s, then open %s",
                 shlex.quote(str(config.hydra.sweep.dir)), BROWSE_URL)


def check_plan(config: DictConfig) -> None:
    """Refuses a sweep into a folder whose jobs another sweep numbered otherwise (Hydra numbers
    every sweep's jobs from 0) or planned as no grid (a tuned study). The same sweep again,
    resumed, or with more seeds goes on: the plans agree on every number both have."""
    sweep_dir = Path(config.hydra.sweep.dir)
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file() or not job_dirs(sweep_dir):
        return
    held = OmegaConf.load(saved).hydra
    if (clash := plan_clash(planned_jobs(held), planned_jobs(config.hydra) or [])) is None:
        return
    typed = OmegaConf.to_container(held.overrides, resolve=False)  # its launcher's too
    command = shlex.join(["python", "-m", "bnstudy.train", "-m", *(
        o for o in [*typed["hydra"], *typed["task"]]
        if not o.startswith(("resume=", "overwrite=", "hydra.mode=", "hydra.sweep.dir=")))])
    sys.exit(
        f"{sweep_dir} holds the jobs of another {clash} so nothing was run. To go on with that "
        f"sweep, run its command with resume=true: {command} resume=true "
        f"{dir_override('hydra.sweep.dir', sweep_dir)}; to run this one, give it a folder of "
        "its own (hydra.sweep.dir=<another folder>). More seeds (seed=0,1,2,3,4 after "
        "seed=0,1,2, with resume=true) keep the numbers and may share the folder.")


class SweepSummary(Callback):
    """At the end of a multirun: a line per job, the HParams experiment, the answer and the
    report command; then every job that did not finish (its record or refusal note says why)
    with the resume command, and exit 1. Jobs a second launch finished meanwhile are results."""

    started = 0.0  # when this sweep began (the clock of the records' files)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()
        # In the environment every launcher hands its jobs (a process of its own or not).
        os.environ[REFUSALS_ENV] = str(Path(config.hydra.sweep.dir).absolute() / ".refused" /
                                       f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}")

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        refused = job_return.status == JobStatus.COMPLETED and \
            getattr(job_return.return_value, "status", None) == "refused"  # nothing new
        sweep_dir = Path(config.hydra.sweep.dir)  # in a tuned cell's search: no mean runs
        if config.hydra.mode == RunMode.MULTIRUN and uses_tensorboard(config.get("logger")) \
                and not refused and study_dir(sweep_dir) == sweep_dir:
            from bnstudy.dashboard import refresh_sweep_view

            refresh_sweep_view(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir, board = Path(config.hydra.sweep.dir), uses_tensorboard(config.get("logger"))
        shell = shlex.quote(str(sweep_dir))  # as the commands it names are typed
        if (sweep_dir / TUNING_FILE).is_file() and board:
            from bnstudy.dashboard import refresh_sweep_view  # its kept settings chosen at last

            refresh_sweep_view(sweep_dir)
        found, unfinished = sweep_records(sweep_dir), _collect_refusals()
        fresh = {job.name for job, _ in found  # written by this launch, or another meanwhile
                 if (job / RECORD_NAME).stat().st_mtime >= self.started}
        if records := [r for _, r in found]:
            from bnstudy.dashboard import BROWSE_URL, write_sweep_experiment
            from bnstudy.report.answer import console_answer
            from bnstudy.report.runs import ReportError

            if board and fresh - set(unfinished):  # a job of this launch trained (not refused)
                write_sweep_experiment(found[0][0], [r.hparams for r in records if r.hparams])
            lines = "\n".join(f"  {r.line()}" for r in records)
            try:
                answer = console_answer(sweep_dir)
            except ReportError as err:  # the folder's results cannot be compared
                answer = str(err)
            browse = f"Browse: tensorboard --logdir {shell}, then open {BROWSE_URL}\n" \
                if board else ""
            log.info("Sweep %s: %d job(s)\n%s\n%s%sReport (per second of compute, tuning, "
                     "pictures, every claim): python -m bnstudy.report %s", sweep_dir,
                     len(records), lines, f"{answer}\n" if answer else "", browse, shell)
        elsewhere, held = [], []
        for job, record in found:
            if record.finished and job.name in unfinished:  # refused here, yet a result
                (elsewhere if job.name in fresh else held).append(job.name)
                del unfinished[job.name]
            elif not record.finished and job.name not in unfinished:
                unfinished[job.name] = unfinished_reason(job, record)
        if elsewhere:
            log.info("%d job(s) were in use here and finished by another launch of this sweep "
                     "meanwhile: %s", len(elsewhere), ", ".join(elsewhere))
        kept = f"{len(held)} job(s) already held a finished run and were left as they are " \
            f"({', '.join(held)}); overwrite=true trains them again." if held else ""
        resume = f"resume=true {dir_override('hydra.sweep.dir', sweep_dir)}"
        busy = sorted((n for n in unfinished if is_locked(sweep_dir / n)), key=job_order)
        unfinished = {n: why for n, why in unfinished.items() if n not in busy}  # theirs to fix
        running = f"{len(busy)} job(s) are being trained by another launch of this sweep " \
            f"({', '.join(busy)}): its summary lists them when it ends; should it stop, {resume} " \
            "runs them here." if busy else ""
        notes = "\n".join(note for note in (kept, running) if note)
        if not unfinished:
            if busy:  # not all of them finished: not a success
                sys.exit(notes)
            if held:  # this launch trained none of them: not a success
                sys.exit(f"{kept} Their results stand: python -m bnstudy.report {shell}")
            return
        alike: dict[str, list[str]] = {}  # jobs that ended alike (missing data): one line
        for name in sorted(unfinished, key=job_order):
            alike.setdefault(unfinished[name], []).append(name)
        lines = "\n".join(f"  {names[0]}: {reason}" if len(names) == 1 else
                          f"  {len(names)} jobs ({', '.join(names[:2])}{', …' * (len(names) > 2)}"
                          f"): {reason}" for reason, names in alike.items())
        if discard_empty_sweep(sweep_dir):  # every job failed before training
            sys.exit(f"{len(unfinished)} job(s) failed before training, so nothing was kept "
                     f"({sweep_dir} removed):\n{lines}\nFix the cause, then run the command "
                     "again.")
        sys.exit(f"{len(unfinished)} job(s) of {sweep_dir} did not finish; the others kept their "
                 f"results:\n{lines}\nFix the cause, then re-run the same command with "
                 f"{resume} to run only what is unfinished." + (f"\n{notes}" if notes else ""))


def discard_empty_sweep(sweep_dir: Path) -> bool:
    """Removes a sweep directory no job left a folder in (its own files too: multirun.yaml,
    `+mean/`) and the empty folders above it; whether it is gone."""
    return discard_folder(sweep_dir, ("multirun.yaml", "+*", ".*"))


def note_refusal(job_dir: str | Path, message: str, why: str = "refused") -> None:
    """Leaves a refused or discarded job's message for the sweep's summary (another process)."""
    if folder := os.environ.get(REFUSALS_ENV):
        with contextlib.suppress(RunFileError):  # the job's log has it anyway
            replace_file(Path(folder) / f"{Path(job_dir).name}.txt", f"{why}: {message}".encode())


def _collect_refusals() -> dict[str, str]:
    """The ending sweep's notes (`note_refusal`) by job name; their folder is removed."""
    folder = os.environ.pop(REFUSALS_ENV, None)
    if not folder or not Path(folder).is_dir():
        return {}
    refused = {note.stem: note.read_text() for note in Path(folder).glob("*.txt")}
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(folder).parent.rmdir()  # .refused/, when no other sweep is writing there
    return refused


def stop_sweep() -> Path | None:
    """The sweep this process runs (None outside one), stopped by a Ctrl-C: its notes removed."""
    folder = os.environ.get(REFUSALS_ENV)
    _collect_refusals()
    return Path(folder).parent.parent if folder else None


def unfinished_reason(job: Path, record: RunRecord) -> str:
    """Why a job's record is not a result: failed (its error), interrupted, still running."""
    epochs = len(record.history)
    if record.status == "failed":
        return f"failed: {record.error or '?'}"
    if record.status == "interrupted":
        why = record.error or \
            "Ctrl-C, a kill, or a time limit or preemption its launcher did not requeue"
        return f"interrupted after {epochs} epoch(s) ({why})"
    if record.status == "running":
        return (f"no result after {epochs} epoch(s): still running in "
                f"{describe_holder(holder(job))}, or killed")
    return f"status {record.status}"


def register_launchers() -> None:
    """Stores bnstudy's launchers (`hydra_plugins.bnstudy_launchers`) over the submitit
    plugin's `submitit_local` and `submitit_slurm` configs, once Hydra's plugin scan stored them."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    Plugins.instance()  # the scan, once per process: it imports the plugin's config module
    for name, node in (("submitit_local", LocalQueueConf(_target_=f"{PLUGIN}.LocalLauncher")),
                       ("submitit_slurm", SlurmQueueConf(_target_=f"{PLUGIN}.SlurmLauncher"))):
        ConfigStore.instance().store(group="hydra/launcher", name=name, node=node,
                                     provider="bnstudy")
