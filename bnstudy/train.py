"""Entry point: `python -m bnstudy.train [overrides]`, or `-m` to sweep (Hydra main).

One run seeds everything, builds datamodule, model and trainer from the config,
fits, tests, and leaves in its job directory the TensorBoard events,
`checkpoints/last.ckpt` and `metrics.json` (history, test metrics, wall time, status).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from bnstudy.config import (
    CONFIG_DIR,
    changed_settings,
    group_defaults,
    hparams,
    local_requeue_limit,
    overridden_keys,
    register,
    single_run_of_a_sweep,
    unknown_override,
    validate,
)
from bnstudy.errors import ConfigError, DataError, RunFileError
from bnstudy.jobdir import (
    JobDirLock,
    RunExistsError,
    describe_holder,
    holder,
    is_requeue,
    launcher_job,
    same_job,
)
from bnstudy.records import (
    RECORD_NAME,
    discard_untrained,
    job_order,
    read_record,
    remove_empty_folder,
    replace_file,
    update_record,
    write_error,
)

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("bnstudy")

FINISHED = ("ok", "diverged")
register()  # the schemas and resolvers `conf/` names, before Hydra composes it


def check_job_dir(cfg: DictConfig, out: Path) -> bool:
    """Whether the run in `out` resumes: with `resume=true`, or when its launcher requeued the
    job that started it (a time limit, a preemption), which resumes untold. A resume must use
    the stored config; otherwise a job directory that already holds a run is left alone
    unless `overwrite=true` (which clears it for a fresh run)."""
    record, stored = read_record(out), out / ".hydra" / "config.yaml"
    requeue = is_requeue(record.get("job"), launcher_job())
    if cfg.resume or requeue:
        changed = changed_settings(OmegaConf.load(stored), cfg) if stored.is_file() else []
        if changed:
            raise RunExistsError(
                f"resume=true, but {out} was run with other settings: {'; '.join(changed)}. "
                "Resume with the original command (plus resume=true), or start a new run in "
                "another directory (hydra.run.dir=... or hydra.sweep.dir=...)."
            )
        if requeue:
            log.info("%s: requeued by its launcher (job %s, status %s): resuming", cfg.run_name,
                     record["job"]["id"], record.get("status", "?"))
        return True
    if record and not cfg.overwrite:
        raise RunExistsError(
            f"{out} already holds a run (status {record.get('status', '?')}); nothing was "
            "changed. Add resume=true to continue an unfinished run and skip finished ones, "
            "overwrite=true to train it again from scratch (its results are replaced), or "
            "choose another hydra.run.dir / hydra.sweep.dir."
        )
    if record:
        for old in [out / RECORD_NAME, *out.glob("events.out.tfevents.*")]:
            old.unlink()
        for folder in ("checkpoints", "images"):
            shutil.rmtree(out / folder, ignore_errors=True)
    return False


_DEFAULTS: dict[tuple, DictConfig] = {}


def default_config() -> DictConfig | None:
    """The config this job's group choices give without any other override (None outside a
    Hydra job): `hparams` records the settings that differ from it. Composed once per process
    for each set of choices (~0.2 s a job: a sweep's jobs mostly share them); read only."""
    if not HydraConfig.initialized():
        return None
    choices = HydraConfig.get().runtime.choices
    key = tuple(sorted((group, str(choice)) for group, choice in choices.items()))
    if key not in _DEFAULTS:
        _DEFAULTS[key] = group_defaults(choices)
    return _DEFAULTS[key]


class _NoAdverts(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def quiet_console() -> None:
    """Each message once: Lightning's lines go through Hydra's handlers only (Lightning adds
    a console handler of its own), without its advertisement; known harmless warnings of
    the libraries are not shown."""
    adverts = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if any(isinstance(f, _NoAdverts) for f in adverts.filters):
        return  # once per process: each filterwarnings call resets the "once" registry
    adverts.addFilter(_NoAdverts())
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
    for message in (".*does not have many workers.*", ".*LeafSpec.*is deprecated.*",
                    ".*all_gather is deprecated.*"):
        warnings.filterwarnings("ignore", message)
    logging.captureWarnings(True)  # the others go to train.log too (the console: console.py)
    threading.excepthook = _thread_exception


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    """An OSError in a writer's thread (TensorBoard's events on a full disk) goes to train.log
    only: the writer raises it again in the run, which then ends in one paragraph. Any other
    thread's exception is printed as Python prints it."""
    if isinstance(args.exc_value, OSError):
        logging.getLogger("py.threads").info("%s in thread %s (the run reports it)",
                                             args.exc_value, getattr(args.thread, "name", "?"))
    else:
        threading.__excepthook__(args)


def is_primary() -> bool:
    """Whether this is the process that writes the run's files: rank 0 of a multi-process
    (DDP) run, whose other ranks Lightning starts with these variables set."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def check_devices(cfg: DictConfig) -> None:
    """Refuses multi-process settings that cannot work, before anything starts."""
    if cfg.trainer.use_distributed_sampler:
        raise ConfigError(
            "trainer.use_distributed_sampler=true would shard batches a second time: the "
            "datamodule already gives each process its own share. Leave it false.")
    if cfg.trainer.devices not in (1, "1") and _is_multirun() and \
            cfg.trainer.strategy != "ddp_spawn":
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} with trainer.strategy="
            f"{cfg.trainer.strategy} in a sweep (-m): Lightning's ddp restarts the script, "
            "which would start the sweep again in every process. In a sweep use "
            "trainer.strategy=ddp_spawn; for a single run either works.")


def torch_threads(setting: int | str | None) -> int | None:
    """Threads for this job: an explicit count, or with `auto` the cores its launcher gives it:
    cores / n_jobs (joblib), `cpus_per_task` (submitit), one under submitit's local launcher
    (it starts every job of the sweep at once), else torch's default (all cores)."""
    if setting != "auto":
        return setting
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    if n_jobs := launcher.get("n_jobs"):
        return max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 0 else 1
    if cpus := launcher.get("cpus_per_task"):
        return cpus
    if launcher.get("_target_", "").endswith("submitit_launcher.LocalLauncher"):
        return 1
    return None


def build_model(cfg: DictConfig, input_shape, num_classes: int) -> L.LightningModule:
    """The LightningModule of `cfg.model`, around the network `cfg.model.net` built for the
    dataset's input shape and classes, with the optimizer factory of `cfg.optim`."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    net = {**model.pop("net"), "input_shape": list(input_shape), "num_classes": num_classes}
    return instantiate(model, net=net, num_classes=num_classes,  # the module builds the net
                       optimizer=instantiate(cfg.optim.optimizer), _recursive_=False)


def build(cfg: DictConfig, trackers: dict | None = None
          ) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """The datamodule, model (with its optimizer) and trainer (logger, callbacks) of a config;
    `trackers`: the tracker runs a resumed run goes on logging to."""
    datamodule = instantiate(cfg.dataset.datamodule, data_dir=to_absolute_path(cfg.paths.data_dir))
    model = build_model(cfg, datamodule.input_shape, datamodule.num_classes)
    from lightning.pytorch.callbacks import ProgressBar

    from bnstudy.checkpoints import AtomicCheckpointIO

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar's callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]

    from bnstudy.trackers import make_loggers

    loggers = make_loggers(cfg.logger, Path(cfg.paths.output_dir).name, trackers)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                          plugins=[AtomicCheckpointIO()])
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict:
    """Fits and tests one configuration in `paths.output_dir`; returns its record."""
    out = Path(cfg.paths.output_dir)
    record_path = out / RECORD_NAME
    checkpoint = out / "checkpoints" / "last.ckpt"
    primary = is_primary()
    validate(cfg)
    check_devices(cfg)
    if HydraConfig.initialized() and not _is_multirun() and \
            (note := single_run_of_a_sweep(HydraConfig.get())):
        log.warning(note)
    job = launcher_job()
    if primary:
        resume = check_job_dir(cfg, out)
    else:  # as rank 0 decides: a requeued job's other ranks resume with it
        resume = cfg.resume or same_job(read_record(record_path).get("job"), job)
    previous = read_record(record_path)
    if resume and previous.get("status") in FINISHED:
        log.info("%s already finished: skipped", cfg.run_name)
        return previous
    overridden = overridden_keys(HydraConfig.get().overrides.task) \
        if HydraConfig.initialized() else ()
    settings = hparams(cfg, default_config(), overridden)

    # Imported here, not at the top: Lightning takes seconds to import, and a config error,
    # `--help` or `--cfg` should not wait for it.
    import lightning as L
    import torch

    quiet_console()
    from bnstudy.callbacks import DivergenceGuard, MetricsHistory
    from bnstudy.checkpoints import resume_checkpoint
    from bnstudy.dashboard import tensorboard_writer, write_experiment, write_session
    from bnstudy.trackers import log_settings, tracker_runs

    started = time.perf_counter()
    if primary:
        log.info("%s: training %s epochs into %s", cfg.run_name, cfg.trainer.max_epochs, out)
        launched = {"job": job} if job else {}  # the launcher's job, which a requeue keeps
        if is_requeue(previous.get("job"), job):
            launched["requeues"] = previous.get("requeues", 0) + 1
        update_record(record_path, drop=("error", "traceback", "diverged_at", "job"),
                      status="running", run_name=cfg.run_name, hparams=settings, **launched)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if (threads := torch_threads(cfg.threads)) is not None:
        torch.set_num_threads(threads)

    datamodule, model, trainer = build(cfg, previous.get("trackers") if resume else None)
    resume_from, note = resume_checkpoint(checkpoint) if resume else (None, None)
    if note and primary:
        update_record(record_path, resume_note=note)
    if primary and (runs := tracker_runs(trainer.loggers)):
        update_record(record_path, trackers=runs)

    if (writer := tensorboard_writer(trainer)) is not None and primary:
        write_session(writer, settings)
        if not _is_multirun():  # a sweep writes its experiment once, when it ends
            write_experiment(writer, [settings])
    if primary:  # the other trackers (MLflow, W&B, CSV) get them as their hyperparameters
        log_settings(trainer.loggers, settings)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)

    guard = next((c for c in trainer.callbacks if isinstance(c, DivergenceGuard)), None)
    result: dict = {
        "status": "ok",
        "epochs_trained": trainer.current_epoch,
        "torch_threads": torch.get_num_threads(),
    }
    if guard is not None and guard.diverged_at is not None:
        log.warning("%s diverged at %s: stopped early", cfg.run_name, guard.diverged_at)
        result.update(status="diverged", diverged_at=guard.diverged_at, test=None)
    else:
        tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
        result["test"] = {"loss": tested["test/loss"], "acc": tested["test/acc"]}
    for logger in trainer.loggers:
        logger.finalize("success")
    history = next((c for c in trainer.callbacks if isinstance(c, MetricsHistory)), None)
    before = history.elapsed_before if history is not None else 0.0  # a resume's earlier epochs
    result["wall_time_s"] = before + time.perf_counter() - started
    if not primary:
        return result
    record = update_record(record_path, **result)
    log.info("%s", result_line(record))
    if not _is_multirun():  # a sweep's summary says where its jobs are
        log.info("Files: %s (metrics.json, checkpoints/, images/; browse: tensorboard --logdir "
                 "%s)", out, out)
    return record


def result_line(record: dict) -> str:
    """One line of a job's outcome: name, status, final val and test accuracy, time."""
    history, test = record.get("history") or [{}], record.get("test") or {}
    val, acc = history[-1].get("val/acc"), test.get("acc")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    time_s = record.get("wall_time_s")
    return (f"{record.get('run_name', '?')}: {record.get('status', '?')}, val acc {pct(val)}, "
            f"test acc {pct(acc)}, {'-' if time_s is None else f'{time_s:.0f} s'}")


REFUSALS_ENV = "BNSTUDY_SWEEP_REFUSALS"  # where a sweep's refused jobs leave their message


class SweepSummary(HydraCallback):
    """At the end of a multirun: a line per job (status, accuracies, time), the sweep's HParams
    experiment, the report command; then names every job that did not finish (failed,
    interrupted, still running or killed: its record says so; refused: it says so in the
    sweep's refusals folder, whichever process ran it) with the resume command, and exits 1 if
    there are any. Ok and diverged jobs are results: exit 0."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if note := local_requeue_limit(config.hydra.get("launcher") or {}):
            log.warning(note)
        # In the environment every launcher hands its jobs (a process of its own or not).
        folder = Path(config.hydra.sweep.dir).absolute() / ".refused" / \
            f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        os.environ[REFUSALS_ENV] = str(folder)
        from bnstudy.trackers import uses_tensorboard

        if uses_tensorboard(config.get("logger")):
            from bnstudy.dashboard import BROWSE_URL

            log.info("Browse as jobs finish: tensorboard --logdir %s, then open %s",
                     config.hydra.sweep.dir, BROWSE_URL)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from bnstudy.trackers import uses_tensorboard

        if uses_tensorboard(config.get("logger")):  # BN vs none over the seeds finished so far
            from bnstudy.dashboard import refresh_sweep_view

            refresh_sweep_view(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        found = [(job.parent, read_record(job)) for job in sorted(
            sweep_dir.glob(f"*/{RECORD_NAME}"), key=lambda p: job_order(p.parent))]
        records = [r for _, r in found if r]
        if records:
            from bnstudy.dashboard import BROWSE_URL, write_sweep_experiment
            from bnstudy.report.answer import console_answer
            from bnstudy.trackers import uses_tensorboard

            if uses_tensorboard(config.get("logger")):
                write_sweep_experiment(found[0][0],
                                       [r["hparams"] for r in records if "hparams" in r])
            lines = "\n".join(f"  {result_line(r)}" for r in records)
            answer = console_answer(sweep_dir)
            log.info("Sweep %s: %d job(s)\n%s\n%sBrowse: tensorboard --logdir %s, then open %s\n"
                     "Report (per second of compute, tuning, pictures, every claim): "
                     "python -m bnstudy.report %s", sweep_dir, len(records), lines,
                     f"{answer}\n" if answer else "",
                     sweep_dir, BROWSE_URL, sweep_dir)
        unfinished = _collect_refusals()
        for job, record in found:
            if record.get("status") not in FINISHED and job.name not in unfinished:
                unfinished[job.name] = _unfinished_reason(job, record)
        if unfinished:
            lines = "\n".join(f"  {name}: {reason}" for name, reason in
                              sorted(unfinished.items(), key=lambda item: job_order(item[0])))
            if _discard_empty_sweep(sweep_dir):  # every job failed before training
                sys.exit(f"{len(unfinished)} job(s) failed before training, so nothing was kept "
                         f"({sweep_dir} removed):\n{lines}\nFix the cause, then run the "
                         "command again.")
            sys.exit(
                f"{len(unfinished)} job(s) of {sweep_dir} did not finish; the others kept their "
                f"results:\n{lines}\nFix the cause, then re-run the same command with "
                f"resume=true hydra.sweep.dir={sweep_dir} to run only what is unfinished."
            )


def _discard_empty_sweep(sweep_dir: Path) -> bool:
    """Removes a sweep directory that no job left a folder in, with the sweep's own files (its
    plan multirun.yaml, views such as `+mean/`) and the empty folders above it
    (`remove_empty_folder`); anything else keeps it. Whether it is gone."""
    if not sweep_dir.is_dir():
        return False
    entries = list(sweep_dir.iterdir())
    own = [p for p in entries if p.name == "multirun.yaml" or p.name.startswith(("+", "."))]
    if len(own) < len(entries):  # a job's folder (or someone else's file)
        return False
    for entry in own:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return remove_empty_folder(sweep_dir)


def _note_refusal(cfg: DictConfig, message: str, why: str = "refused") -> None:
    """Leaves a job's message for its sweep's summary, which may run in another process
    (submitit, joblib), where its directory does not say it: a refused job (its directory is
    another run's) or one that failed before training (its directory was removed)."""
    folder = os.environ.get(REFUSALS_ENV)
    if folder:
        try:
            replace_file(Path(folder) / f"{Path(cfg.paths.output_dir).name}.txt",
                         f"{why}: {message}".encode())
        except RunFileError:
            pass  # the refusal is in the job's log; the record says what the directory holds


def _collect_refusals() -> dict[str, str]:
    """The jobs of the sweep that is ending that left a note (`_note_refusal`), by job
    directory name, with their notes; the notes' folder is removed."""
    folder = os.environ.pop(REFUSALS_ENV, None)
    if not folder or not Path(folder).is_dir():
        return {}
    refused = {note.stem: note.read_text() for note in Path(folder).glob("*.txt")}
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(folder).parent.rmdir()  # .refused/, when no other sweep is writing there
    return refused


def _unfinished_reason(job: Path, record: dict) -> str:
    """Why a job's record is not a result: failed (its error), interrupted, still running."""
    status, epochs = record.get("status", "?"), len(record.get("history") or [])
    if status == "failed":
        return f"failed: {record.get('error', '?')}"
    if status == "interrupted":
        why = record.get("error") or \
            "Ctrl-C, a kill, or a time limit or preemption its launcher did not requeue"
        return f"interrupted after {epochs} epoch(s) ({why})"
    if status == "running":
        return (f"no result after {epochs} epoch(s): still running in "
                f"{describe_holder(holder(job))}, or killed")
    return f"status {status}"


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    """One run (`run`), which holds its job directory's lock (rank 0) from its first check to
    its last record: one writer per job directory."""
    lock = JobDirLock(cfg.paths.output_dir) if is_primary() else None
    try:
        return run(cfg, lock)
    finally:
        if lock is not None:
            lock.release()


def run(cfg: DictConfig, lock: JobDirLock | None) -> dict | None:
    """`train` under the lock; how it ended becomes the record's status, one message and the
    exit status (in a sweep, the job's return value and the sweep's exit status)."""
    record_path = Path(cfg.paths.output_dir) / RECORD_NAME
    try:
        if lock is not None:
            lock.acquire(cfg.run_name)
        return train(cfg)
    except RunExistsError as err:  # the directory's run stays as it was
        _close_job_log(Path(cfg.paths.output_dir))
        log.error("%s: %s", cfg.run_name, err)
        if _is_multirun():
            _note_refusal(cfg, str(err))
            return {"status": "refused", "error": str(err)}
        sys.exit(1)
    except (ConfigError, DataError, RunFileError) as err:
        message, trace = str(err), None
    except Exception as err:  # a bug or an unforeseen failure: keep the traceback too
        if _launcher_gave_up(err):  # no requeue comes: the sweep's summary says so
            _interrupted(cfg, gave_up=str(err).rstrip("."))
            if _is_multirun():
                return {"status": "interrupted"}
            sys.exit(1)
        message, trace = write_error(err, cfg.paths.output_dir), None  # a library's own file
        if message is None:
            message, trace = f"{type(err).__name__}: {err}", traceback.format_exc()
    except BaseException:  # Ctrl-C, a kill, a time limit: the run can be resumed
        _interrupted(cfg)
        raise
    out = Path(cfg.paths.output_dir)
    if trace is None and lock is not None and discard_untrained(out):  # a mistake found
        _close_job_log(out)  # before training: no folder is left for the report to list
        log.error("%s failed before training; nothing was kept (%s removed): %s",
                  cfg.run_name, out, message)
        if _is_multirun():
            _note_refusal(cfg, message, "failed before training, nothing kept")
            return {"status": "failed", "error": message}
        sys.exit(1)
    if not _is_multirun():  # a sweep's summary names the command that resumes it
        message = f"{message} Resume with: {resume_command(cfg)}"
    _record_quietly(record_path, status="failed", run_name=cfg.run_name, error=message,
                    traceback=trace)
    if trace:
        log.error(trace)
    log.error("%s failed: %s", cfg.run_name, message)
    if _is_multirun():
        return {"status": "failed", "error": message}
    sys.exit(1)


def resume_command(cfg: DictConfig) -> str:
    """The command that goes on with this single run: its overrides, `resume=true` and its
    directory."""
    task = [o for o in HydraConfig.get().overrides.task
            if not o.startswith(("resume=", "hydra.run.dir="))] if HydraConfig.initialized() else []
    return shlex.join(["python", "-m", "bnstudy.train", *task, "resume=true",
                       f"hydra.run.dir={cfg.paths.output_dir}"])


def _close_job_log(out: Path) -> None:
    """Detaches the log file Hydra opened in the job directory (its train.log): a refused
    command says why on the console only, and writes nothing there."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if Path(handler.baseFilename).parent == out.resolve():
            root.removeHandler(handler)
            handler.close()


def _interrupted(cfg: DictConfig, gave_up: str | None = None) -> None:
    """Records and says that the run stopped before its end, and how it goes on: by itself if
    its launcher requeues the job, else with resume=true."""
    why = {"error": f"its launcher will not requeue it ({gave_up})"} if gave_up else {}
    _record_quietly(Path(cfg.paths.output_dir) / RECORD_NAME, status="interrupted", **why)
    where = (f"hydra.sweep.dir={HydraConfig.get().sweep.dir}" if _is_multirun()
             else f"hydra.run.dir={cfg.paths.output_dir}")
    how = f"run the same command with resume=true {where}"
    if gave_up:
        how = (f"Its launcher will not requeue it ({gave_up}). To go on, {how} (and a larger "
               "hydra.launcher.timeout_min or max_num_timeout if the time limit was too short).")
    elif launcher_job():
        how = ("If its launcher requeues the job (after a time limit or a preemption), it "
               f"resumes by itself; else, to go on, {how}.")
    else:
        how = f"To go on, {how}."
    log.error("Interrupted: %s keeps what it trained so far. %s", cfg.run_name, how)


def _launcher_gave_up(err: Exception) -> bool:
    """submitit's UncompletedJobError: the job timed out more often than its launcher's
    `max_num_timeout` (or could not be requeued), and will not be requeued again."""
    submitit = sys.modules.get("submitit.core.utils")
    return submitit is not None and isinstance(err, submitit.UncompletedJobError)


def _record_quietly(record_path: Path, **fields) -> None:
    """Records how the run ended (rank 0 only); on a full disk that too may fail, and the
    message already given is the one that matters."""
    if is_primary():
        try:
            update_record(record_path, **fields)
        except RunFileError:
            pass


if __name__ == "__main__":
    if problem := unknown_override(sys.argv[1:]):  # before Hydra, whose hint would be `+key`
        sys.exit(problem)
    main()
