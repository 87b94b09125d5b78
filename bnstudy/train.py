"""Entry point: `python -m bnstudy.train [overrides]`, or `-m` to sweep (Hydra main).

One run seeds everything, builds datamodule, model and trainer from the config,
fits, tests, and leaves in its job directory the TensorBoard events,
`checkpoints/last.ckpt` and `metrics.json` (history, test metrics, wall time, status).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
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
    overridden_keys,
    register,
    single_run_of_a_sweep,
    unknown_override,
    validate,
)
from bnstudy.errors import ConfigError, DataError, RunFileError
from bnstudy.records import RECORD_NAME, read_record, update_record

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("bnstudy")

FINISHED = ("ok", "diverged")
register()  # the schemas and resolvers `conf/` names, before Hydra composes it


class RunExistsError(ConfigError):
    """The job directory holds a run this command must not touch (its record stays as is)."""


def check_job_dir(cfg: DictConfig, out: Path) -> None:
    """A resume must use the stored config; without one, a job directory that already holds
    a run is left alone unless `overwrite=true` (which clears it for a fresh run)."""
    record, stored = read_record(out), out / ".hydra" / "config.yaml"
    if cfg.resume:
        changed = changed_settings(OmegaConf.load(stored), cfg) if stored.is_file() else []
        if changed:
            raise RunExistsError(
                f"resume=true, but {out} was run with other settings: {'; '.join(changed)}. "
                "Resume with the original command (plus resume=true), or start a new run in "
                "another directory (hydra.run.dir=... or hydra.sweep.dir=...)."
            )
    elif record and not cfg.overwrite:
        raise RunExistsError(
            f"{out} already holds a run (status {record.get('status', '?')}); nothing was "
            "changed. Add resume=true to continue an unfinished run and skip finished ones, "
            "overwrite=true to train it again from scratch (its results are replaced), or "
            "choose another hydra.run.dir / hydra.sweep.dir."
        )
    elif record:
        for old in [out / RECORD_NAME, *out.glob("events.out.tfevents.*")]:
            old.unlink()
        for folder in ("checkpoints", "images"):
            shutil.rmtree(out / folder, ignore_errors=True)


def default_config() -> DictConfig | None:
    """The config this job's group choices give without any other override (None outside a
    Hydra job): `hparams` records the settings that differ from it."""
    return group_defaults(HydraConfig.get().runtime.choices) if HydraConfig.initialized() \
        else None


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
    """Threads for this job: an explicit count, or with `auto` cores / parallel jobs."""
    if setting != "auto":
        return setting
    n_jobs = None
    if HydraConfig.initialized():
        n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if not n_jobs:
        return None  # one job at a time: torch's default (all cores)
    cores = os.cpu_count() or 1
    return max(1, cores // n_jobs) if n_jobs > 0 else 1


def build_model(cfg: DictConfig, input_shape, num_classes: int) -> L.LightningModule:
    """The LightningModule of `cfg.model`, around the network `cfg.model.net` built for the
    dataset's input shape and classes, with the optimizer factory of `cfg.optim`."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    net = {**model.pop("net"), "input_shape": list(input_shape), "num_classes": num_classes}
    return instantiate(model, net=net, num_classes=num_classes,  # the module builds the net
                       optimizer=instantiate(cfg.optim.optimizer), _recursive_=False)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """The datamodule, model (with its optimizer) and trainer (logger, callbacks) of a config."""
    datamodule = instantiate(cfg.dataset.datamodule, data_dir=to_absolute_path(cfg.paths.data_dir))
    model = build_model(cfg, datamodule.input_shape, datamodule.num_classes)
    from lightning.pytorch.callbacks import ProgressBar

    from bnstudy.checkpoints import AtomicCheckpointIO

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar's callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]

    trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger), callbacks=callbacks,
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
    if primary:
        check_job_dir(cfg, out)
    if cfg.resume and read_record(record_path).get("status") in FINISHED:
        log.info("%s already finished (resume=true): skipped", cfg.run_name)
        return read_record(record_path)
    overridden = overridden_keys(HydraConfig.get().overrides.task) \
        if HydraConfig.initialized() else ()
    settings = hparams(cfg, default_config(), overridden)

    # Imported here, not at the top: Lightning takes seconds to import, and a config error,
    # `--help` or `--cfg` should not wait for it.
    import lightning as L
    import torch

    quiet_console()
    from bnstudy.callbacks import DivergenceGuard
    from bnstudy.checkpoints import resume_checkpoint
    from bnstudy.dashboard import tensorboard_writer, write_experiment, write_session

    started = time.perf_counter()
    if primary:
        log.info("%s: training %s epochs into %s", cfg.run_name, cfg.trainer.max_epochs, out)
        update_record(record_path, drop=("error", "traceback", "diverged_at"),
                      status="running", run_name=cfg.run_name, hparams=settings)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if (threads := torch_threads(cfg.threads)) is not None:
        torch.set_num_threads(threads)

    datamodule, model, trainer = build(cfg)
    resume_from, note = resume_checkpoint(checkpoint) if cfg.resume else (None, None)
    if note and primary:
        update_record(record_path, resume_note=note)

    if (writer := tensorboard_writer(trainer)) is not None and primary:
        write_session(writer, settings)
        if not _is_multirun():  # a sweep writes its experiment once, when it ends
            write_experiment(writer, [settings])
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)

    logger = trainer.logger
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
    logger.finalize("success")
    result["wall_time_s"] = time.perf_counter() - started
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


class SweepSummary(HydraCallback):
    """At the end of a multirun: a line per job (status, accuracies, time), the sweep's HParams
    experiment, the report command; then names the jobs that failed (their record says so) or
    were refused (their directory already held a run) and exits 1 if there are any."""

    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and value.get("status") == "refused":
            self.refused.append((Path(config.paths.output_dir).name, value["error"]))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        found = [(job.parent, read_record(job)) for job in sorted(
            sweep_dir.glob(f"*/{RECORD_NAME}"), key=lambda p: _job_order(p.parent.name))]
        records = [r for _, r in found if r]
        if records:
            from bnstudy.dashboard import BROWSE_URL, write_sweep_experiment
            from bnstudy.report.answer import console_answer

            write_sweep_experiment(found[0][0],
                                   [r["hparams"] for r in records if "hparams" in r])
            lines = "\n".join(f"  {result_line(r)}" for r in records)
            answer = console_answer(sweep_dir)
            log.info("Sweep %s: %d job(s)\n%s\n%sBrowse: tensorboard --logdir %s, then open %s\n"
                     "Report (per second of compute, tuning, pictures, every claim): "
                     "python -m bnstudy.report %s", sweep_dir, len(records), lines,
                     f"{answer}\n" if answer else "",
                     sweep_dir, BROWSE_URL, sweep_dir)
        failed = [(job.name, r.get("error", "?")) for job, r in found
                  if r.get("status") == "failed"]
        if self.refused:
            sys.exit(
                f"{len(self.refused)} job(s) of {sweep_dir} already held a run and were left "
                f"as they were, e.g. {self.refused[0][0]}: {self.refused[0][1]}"
            )
        if failed:
            lines = "\n".join(f"  {name}: {error}" for name, error in failed)
            sys.exit(
                f"{len(failed)} job(s) of {sweep_dir} failed; the others kept their results:\n"
                f"{lines}\nFix the cause, then re-run the same command with resume=true "
                f"hydra.sweep.dir={sweep_dir} to run only what is unfinished."
            )


def _job_order(name: str) -> tuple:
    """A job directory's place in its sweep: by its number (`10_…` after `9_…`), then name."""
    head = name.split("_", 1)[0]
    return (int(head) if head.isdigit() else -1, name)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    record_path = Path(cfg.paths.output_dir) / RECORD_NAME
    try:
        return train(cfg)
    except RunExistsError as err:  # the directory's run stays as it was
        log.error("%s: %s", cfg.run_name, err)
        if _is_multirun():
            return {"status": "refused", "error": str(err)}
        sys.exit(1)
    except (ConfigError, DataError, RunFileError) as err:
        message, trace = str(err), None
    except Exception as err:  # a bug or an unforeseen failure: keep the traceback too
        message, trace = f"{type(err).__name__}: {err}", traceback.format_exc()
    except BaseException:  # Ctrl-C or a kill: the run can be resumed
        _record_quietly(record_path, status="interrupted")
        where = (f"hydra.sweep.dir={HydraConfig.get().sweep.dir}" if _is_multirun()
                 else f"hydra.run.dir={cfg.paths.output_dir}")
        log.error("Interrupted: %s keeps what it trained so far. To go on, run the same command "
                  "with resume=true %s", cfg.run_name, where)
        raise
    _record_quietly(record_path, status="failed", error=message, traceback=trace)
    if trace:
        log.error(trace)
    log.error("%s failed: %s", cfg.run_name, message)
    if _is_multirun():
        return {"status": "failed", "error": message}
    sys.exit(1)


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
