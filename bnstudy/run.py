"""One run of the study, `train(cfg) -> RunRecord`: the job directory's lock, resume or requeue,
fit and test, the record. Raises `RunExistsError` (directory untouched), `RunEnded`, or Ctrl-C's
own after recording `interrupted`."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from bnstudy.config import (
    NO_JOB_DIR,
    changed_settings,
    group_defaults,
    hparams,
    is_multirun,
    overridden_keys,
    validate,
)
from bnstudy.console import quiet_console, shown_before, workers_log_to
from bnstudy.errors import (
    ConfigError,
    DataError,
    RunFileError,
    arguments_refused,
    first_line,
)
from bnstudy.jobdir import (
    DIR_SETTINGS,
    JobDirLock,
    RunExistsError,
    dir_override,
    in_callers_words,
    is_primary,
    is_requeue,
    launcher_job,
    same_job,
)
from bnstudy.records import (
    RECORD_NAME,
    TEST_CORRECT_FILE,
    RunRecord,
    save_composed,
    write_error,
    write_test_correct,
)

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("bnstudy")

RUN_FILES = (".hydra", "train.log", "job.lock", RECORD_NAME, "hparams.yaml",
             "events.out.tfevents.*", "checkpoints", "images")  # what a run writes at its start


class RunEnded(Exception):
    """A run without a result: `status` discarded (folder gone), failed or interrupted; a
    one-paragraph message, `trace` an unforeseen error's traceback."""

    def __init__(self, status: str, message: str, trace: str | None = None) -> None:
        super().__init__(message)
        self.status, self.trace = status, trace


def train(cfg: DictConfig) -> RunRecord:
    """Fits and tests one configuration in `paths.output_dir`; returns its record."""
    if cfg.paths.output_dir == NO_JOB_DIR:  # composed outside a job, no folder given
        raise ConfigError(
            "paths.output_dir is not set: a config composed outside a Hydra job has no job "
            "directory, so nothing was run. Name one, e.g. compose([\"norm=none\", "
            "\"paths.output_dir=outputs/runs/mine\"]).")
    out = Path(cfg.paths.output_dir)
    with JobDirLock(out) as lock:  # released after the handlers below recorded the end
        try:
            if is_primary():
                lock.acquire(cfg.run_name)
            return _train(cfg, out)
        except RunExistsError as err:  # the directory's run stays as it was
            err.args = (in_callers_words(str(err)),)
            raise
        except Exception as err:
            raise _ended(cfg, out, err) from err
        except BaseException:  # Ctrl-C, a kill, a time limit: the run can be resumed
            _record_quietly(out, status="interrupted")
            raise


def _train(cfg: DictConfig, out: Path) -> RunRecord:
    validate(cfg)
    check_devices(cfg)
    primary, job, record_path = is_primary(), launcher_job(), out / RECORD_NAME
    resume = check_job_dir(cfg, out) if primary else False
    if primary and "hydra" in cfg and (cfg.overwrite or not (out / ".hydra").exists()):
        save_composed(cfg, out)  # composed in Python: its config kept as a command line's is
    previous = RunRecord.read(record_path)
    if not primary:  # as rank 0 decides: a requeued job's other ranks resume with it
        resume = cfg.resume or (previous is not None and same_job(previous.job, job))
    if resume and previous is not None and previous.finished:
        log.info("%s already finished: skipped", cfg.run_name)
        return previous
    settings = hparams(cfg, default_config(), overridden_keys(
        HydraConfig.get().overrides.task if HydraConfig.initialized() else ()))

    # Lightning takes seconds to import: a config error does not wait for it
    import lightning as L
    import torch

    from bnstudy.callbacks import DivergenceGuard, MetricsHistory, tensorboard_writer
    from bnstudy.checkpoints import resume_checkpoint
    from bnstudy.dashboard import experiment_summary, write_session
    from bnstudy.trackers import log_settings, tracker_runs

    quiet_console()
    started = time.perf_counter()
    record = previous or RunRecord()
    resume_from, note, step, done = resume_checkpoint(out / "checkpoints" / "last.ckpt") \
        if resume else (None, None, None, 0)
    if primary:
        epochs = cfg.trainer.max_epochs
        what = "a fast_dev_run (a batch of each loop)" if cfg.trainer.fast_dev_run else \
            f"{epochs} epoch{'' if epochs == 1 else 's'}" + (
                "" if not done else f" (resuming after epoch {done})" if done < epochs
                else f" (all {done} trained: resuming at its test)")
        log.info("%s: training %s into %s", cfg.run_name, what, out)
        requeued = previous is not None and is_requeue(previous.job, job)
        if requeued:  # its earlier attempts' warnings were shown: not again
            shown_before(out / "train.log")
        record = replace(record, status="running", run_name=cfg.run_name, hparams=settings,
                         job=job, requeues=record.requeues + requeued, error=None,
                         traceback=None, diverged_at=None)
        record.write(record_path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if (threads := torch_threads(cfg.threads)) is not None:
        torch.set_num_threads(threads)

    datamodule, model, trainer = build(cfg, record.trackers if resume else None, step)
    if primary:
        found = {"resume_note": note, "trackers": tracker_runs(trainer.loggers)}
        if changes := {key: value for key, value in found.items() if value}:
            RunRecord.update(record_path, **changes)
        if (writer := tensorboard_writer(trainer)) is not None:
            write_session(writer, settings)
            if not is_multirun():  # a sweep writes its experiment once, when it ends
                writer.file_writer.add_summary(experiment_summary([settings]))
        log_settings(trainer.loggers, settings)  # the other trackers' hyperparameters
    with workers_log_to(out / "train.log"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        callbacks = {type(c): c for c in trainer.callbacks}
        guard, history = callbacks.get(DivergenceGuard), callbacks.get(MetricsHistory)
        result: dict = {"status": "ok", "epochs_trained": trainer.current_epoch,
                        "torch_threads": torch.get_num_threads()}
        if guard is not None and guard.diverged_at is not None:
            log.warning("%s diverged at %s: stopped early", cfg.run_name, guard.diverged_at)
            result.update(status="diverged", diverged_at=guard.diverged_at, test=None)
        else:
            tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
            result["test"] = {"loss": tested["test/loss"], "acc": tested["test/acc"]}
            if primary:
                write_test_correct(out, trainer.callback_metrics["test/correct"].numpy())
    for logger in trainer.loggers:
        logger.finalize("success")
    before = history.elapsed_before if history is not None else 0.0  # a resume's earlier epochs
    result["wall_time_s"] = before + time.perf_counter() - started
    if not primary:
        return replace(RunRecord.read(record_path) or record, **result)
    return RunRecord.update(record_path, **result)


def check_job_dir(cfg: DictConfig, out: Path) -> bool:
    """Whether the run in `out` resumes (`resume=true`, or a requeue); else a directory holding
    a run is refused, unless `overwrite=true` (which clears it)."""
    record, stored = RunRecord.read(out / RECORD_NAME), out / ".hydra" / "config.yaml"
    requeue = record is not None and is_requeue(record.job, launcher_job())
    if cfg.resume or requeue:
        if stored.is_file() and (changed := changed_settings(OmegaConf.load(stored), cfg)):
            raise RunExistsError(
                f"resume=true, but {out} was run with other settings: {'; '.join(changed)}. "
                "Resume with the original command (plus resume=true), or start a new run in "
                f"another directory ({DIR_SETTINGS}).")
        if requeue:
            log.info("%s: requeued by its launcher (job %s, status %s): resuming", cfg.run_name,
                     record.job["id"], record.status)
        return True
    if record is not None and not cfg.overwrite:
        raise RunExistsError(
            f"{out} already holds a run (status {record.status}); nothing was changed. Add "
            "resume=true to continue an unfinished run and skip finished ones, overwrite=true "
            "to train it again from scratch (its results are replaced), or choose another "
            f"{DIR_SETTINGS}.")
    if record is not None:
        for old in [out / RECORD_NAME, *out.glob("events.out.tfevents.*"), *out.glob("eval*.json"),
                    *out.glob(TEST_CORRECT_FILE), *out.glob("hparams.yaml")]:
            old.unlink()
        for folder in ("checkpoints", "images", "csv"):
            shutil.rmtree(out / folder, ignore_errors=True)
    return False


def _ended(cfg: DictConfig, out: Path, err: Exception) -> RunEnded:
    """Records how the run failed (or removes its folder, `discard_untrained`)."""
    submitit = sys.modules.get("submitit.core.utils")  # its job timed out too often:
    if submitit is not None and isinstance(err, submitit.UncompletedJobError):  # no requeue
        gave_up = str(err).rstrip(".")
        _record_quietly(out, status="interrupted",
                        error=f"its launcher will not requeue it ({gave_up})")
        return RunEnded("interrupted", gave_up)
    message, trace = str(err), None
    if not isinstance(err, ConfigError | DataError | RunFileError) and \
            (message := write_error(err, out)) is None:  # a library's own file, or a bug:
        message, trace = f"{type(err).__name__}: {err}", traceback.format_exc()
    if trace is None and is_primary() and discard_untrained(out):
        return RunEnded("discarded", message)
    message = in_callers_words(message)
    if not is_multirun():  # a sweep's summary names the command that resumes it
        message = f"{message} Resume with: {resume_command(cfg)}"
    _record_quietly(out, status="failed", run_name=cfg.run_name, error=message, traceback=trace)
    return RunEnded("failed", message, trace)


def _record_quietly(out: Path, **changes) -> None:
    """Records how the run ended (rank 0); on a full disk that fails too, quietly."""
    if is_primary():
        with contextlib.suppress(RunFileError, ValueError):
            RunRecord.update(out / RECORD_NAME, **changes)


def discard_untrained(job_dir: Path) -> bool:
    """Removes a job directory of `RUN_FILES` only in which nothing trained (no epoch, no
    checkpoint), and the empty folders above it; whether it is gone."""
    try:
        record = RunRecord.read(job_dir / RECORD_NAME)
    except (OSError, ValueError):
        return False
    trained = record is not None and record.history
    return not trained and not any((job_dir / "checkpoints").glob("last.ckpt*")) and \
        discard_folder(job_dir, RUN_FILES)


def discard_folder(folder: Path, own: tuple[str, ...]) -> bool:
    """Removes `folder` if its entries all match patterns of `own` (`remove_empty_folder`)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    if not all(any(entry.match(pattern) for pattern in own) for entry in entries):
        return False
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return remove_empty_folder(folder)


def remove_empty_folder(folder: Path) -> bool:
    """Whether `folder` is gone: removed if empty, then the emptied folders above it in the cwd."""
    cwd = Path.cwd().resolve()  # before the removal: the job may run in its own folder
    try:
        folder.rmdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        for parent in folder.resolve().parents:
            if cwd not in parent.parents:
                break
            parent.rmdir()
    return True


def default_config() -> DictConfig | None:
    """The config of this job's group choices alone (None outside a Hydra job)."""
    return group_defaults(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else None


def resume_command(cfg: DictConfig) -> str:
    """The command that goes on with this single run."""
    task = [o for o in HydraConfig.get().overrides.task  # (Hydra keeps hydra.* out of it)
            if not o.startswith("resume=")] if HydraConfig.initialized() else []
    return f"{shlex.join(['python', '-m', 'bnstudy.train', *task, 'resume=true'])} " \
        f"{dir_override('hydra.run.dir', cfg.paths.output_dir)}"


def check_devices(cfg: DictConfig) -> None:
    """Refuses multi-process settings that cannot work, before anything starts."""
    if cfg.trainer.use_distributed_sampler:
        raise ConfigError(
            "trainer.use_distributed_sampler=true would shard batches a second time: the "
            "datamodule already gives each process its own share. Leave it false.")
    if cfg.trainer.devices not in (1, "1") and is_multirun() and \
            cfg.trainer.strategy != "ddp_spawn":
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} with trainer.strategy="
            f"{cfg.trainer.strategy} in a sweep (-m): Lightning's ddp restarts the script, "
            "which would start the sweep again in every process. In a sweep use "
            "trainer.strategy=ddp_spawn; for a single run either works.")


def torch_threads(setting: int | str | None) -> int | None:
    """Threads for this job: a count, or with `auto` the cores its launcher gives it (cores /
    n_jobs, `cpus_per_task`, 1 under submitit's local launcher), else torch's default."""
    if setting != "auto":
        return setting
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    if n_jobs := launcher.get("n_jobs"):
        return max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 0 else 1
    if cpus := launcher.get("cpus_per_task"):
        return cpus
    return 1 if launcher.get("_target_", "").endswith("LocalLauncher") else None


def build_model(cfg: DictConfig, input_shape, num_classes: int) -> L.LightningModule:
    """The LightningModule of `cfg.model` for the data's shape, with `cfg.optim`'s optimizer."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    net = {**model.pop("net"), "input_shape": list(input_shape), "num_classes": num_classes}
    return instantiate(model, net=net, num_classes=num_classes,  # the module builds the net
                       optimizer=instantiate(cfg.optim.optimizer), _recursive_=False)


def build_datamodule(node: DictConfig, data_dir: str) -> L.LightningDataModule:
    """The run's datamodule; a value of `dataset.datamodule` its class does not take is a
    `ConfigError` (`errors.arguments_refused`)."""
    if said := arguments_refused(node, "dataset.datamodule"):
        raise ConfigError(said)
    try:
        return instantiate(node, data_dir=data_dir)
    except InstantiationException as err:  # the class's own refusal, e.g. verify_checksums
        if isinstance(err.__cause__, DataError | ConfigError):
            raise err.__cause__ from None
        raise refused("dataset.datamodule", err) from err


def build(cfg: DictConfig, trackers: dict | None = None, step: int | None = None
          ) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """The datamodule, model and trainer of a config (`trackers`, `step`: a resume's)."""
    from lightning.pytorch.callbacks import Checkpoint, ProgressBar

    from bnstudy.checkpoints import AtomicCheckpointIO
    from bnstudy.trackers import make_loggers

    datamodule = build_datamodule(cfg.dataset.datamodule, to_absolute_path(cfg.paths.data_dir))
    try:
        model = build_model(cfg, datamodule.input_shape, datamodule.num_classes)
    except InstantiationException as err:  # (here, not in build_model: eval rebuilds saved runs)
        raise refused("model", err) from err
    callbacks = [made(c, f"callbacks.{name}") for name, c in cfg.callbacks.items() if c is not None]
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar's callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.enable_checkpointing is False:  # Lightning refuses a checkpoint callback then
        callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)]
    loggers = make_loggers(cfg.logger, Path(cfg.paths.output_dir).name, trackers, step)
    return datamodule, model, made(  # without the study's checkpoint, none at all (not Lightning's)
        cfg.trainer, "trainer", logger=loggers or False, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks))


def made(node: DictConfig, key: str, **kwargs):
    """`instantiate(node, **kwargs)`; a value its class refuses is a `ConfigError` (`refused`)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        raise refused(key, err) from err


def refused(key: str, err: InstantiationException) -> ConfigError:
    """The paragraph of a value the class at `key` refused when made (`trainer.strategy=dpp`)."""
    cause = err  # (the net's error, made inside the model's)
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    return ConfigError(
        f"{key}: {first_line(cause)}, so nothing was run. Fix the {key}.* override it names "
        f"(python -m bnstudy.train --cfg job --package {key} shows each setting).")
