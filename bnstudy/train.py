"""Entry point: `python -m bnstudy.train [overrides]`, or `-m` to sweep. Each job is
`bnstudy.run.train(cfg)`, plus a paragraph per way it ends and its exit status."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bnstudy.config import CONFIG_DIR, is_multirun, register
from bnstudy.jobdir import RunExistsError, dir_override, launcher_job
from bnstudy.overrides import first_mistake, launcher_without_sweep, sweeper_clash
from bnstudy.records import RunRecord, study_dir
from bnstudy.run import RunEnded, train
from bnstudy.sweep import note_refusal, register_launchers, stop_sweep
from bnstudy.trackers import uses_tensorboard

log = logging.getLogger("bnstudy")

register()  # the schemas and resolvers `conf/` names, before Hydra composes it
register_launchers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> RunRecord:
    """One job: its record (a sweep's return value; a single run exits 1 without a result)."""
    if not is_multirun() and (note := single_run_of_a_sweep(HydraConfig.get())):
        log.warning(note)
    out = Path(cfg.paths.output_dir)
    try:
        record = train(cfg)
    except RunExistsError as err:  # the directory's run stays as it was
        return _refused(cfg, out, str(err), "refused", "%s: %s")
    except RunEnded as err:
        if err.status == "discarded":
            return _refused(cfg, out, str(err), "failed before training, nothing kept",
                            f"%s failed before training; nothing was kept ({out} removed): %s")
        if err.status == "interrupted":  # its launcher gave up on it
            _say_interrupted(cfg, gave_up=str(err))
        else:
            if err.trace:
                log.error(err.trace)
            log.error("%s failed: %s", cfg.run_name, err)
        if is_multirun():
            return RunRecord(status=err.status, run_name=cfg.run_name, error=str(err))
        sys.exit(1)
    except BaseException as err:  # Ctrl-C, a kill, a time limit: the record says interrupted
        _say_interrupted(cfg)
        if isinstance(err, KeyboardInterrupt):  # outside the fit (Lightning's own exits 1)
            sys.exit(1)
        raise
    log.info("%s", record.line())
    if not is_multirun():  # a sweep's summary says where its jobs are
        made = [name for name in ("metrics.json", "checkpoints/", "images/")
                if (out / name).exists()]
        browse = f"; browse: tensorboard --logdir {shlex.quote(str(out))}" \
            if uses_tensorboard(cfg.logger) and any(out.glob("events.out.tfevents.*")) \
            else ""  # not after a fast_dev_run
        log.info("Files: %s (%s%s)", out, ", ".join(made), browse)
    return record


def _refused(cfg: DictConfig, out: Path, message: str, why: str, line: str) -> RunRecord:
    """Says why the job left nothing (console only), tells the sweep's summary, or exits 1."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if Path(handler.baseFilename).parent == out.resolve():  # Hydra's train.log
            root.removeHandler(handler)
            handler.close()
    log.error(line, cfg.run_name, message)
    if not is_multirun():
        sys.exit(1)
    note_refusal(out, message, why)
    return RunRecord(status="refused" if why == "refused" else "failed", run_name=cfg.run_name,
                     error=message)


def _say_interrupted(cfg: DictConfig, gave_up: str | None = None) -> None:
    """Says that the run stopped, and how it goes on (its launcher's requeue, or resume=true)."""
    key, folder = ("hydra.sweep.dir", study_dir(HydraConfig.get().sweep.dir)) if is_multirun() \
        else ("hydra.run.dir", cfg.paths.output_dir)
    how = f"run the same command with resume=true {dir_override(key, folder)}"
    if gave_up:
        how = (f"Its launcher will not requeue it ({gave_up}). To go on, {how} (and a larger "
               "hydra.launcher.timeout_min or max_num_timeout if the time limit was too short).")
    elif launcher_job():
        how = ("If its launcher requeues the job (after a time limit or a preemption), it "
               f"resumes by itself; else, to go on, {how}.")
    else:
        how = f"To go on, {how}."
    log.error("Interrupted: %s keeps what it trained so far. %s", cfg.run_name, how)


def sweep_interrupted() -> str:
    """What a Ctrl-C on a sweep's process says: what it keeps and how it goes on."""
    if (sweep := stop_sweep()) is None:
        return "Interrupted before anything was trained."
    sweep = study_dir(sweep)
    return (f"Interrupted: the sweep {sweep} stopped. Its finished jobs keep their results "
            f"(python -m bnstudy.report {shlex.quote(str(sweep))}); to go on, run the same "
            f"command with resume=true {dir_override('hydra.sweep.dir', sweep)}: only what is "
            "unfinished runs.")


def hydra_paths_printable(argv: list[str]) -> None:
    """Makes `--cfg hydra -p hydra.run.dir` `--cfg all`: Hydra's paths read the job's
    ${run_name}, which `--cfg hydra` leaves out (a traceback); `all` prints the key the same.
    `--cfg=hydra` and `--package=…` are split first, as Hydra's argparse reads them."""
    argv[:] = [part for arg in argv for part in (
        arg.split("=", 1) if arg.startswith(("--cfg=", "--package=")) else [arg])]
    at = {arg: i + 1 for i, arg in enumerate(argv[:-1])}  # each flag: its value's index
    cfg, package = at.get("-c", at.get("--cfg")), at.get("-p", at.get("--package"))
    if cfg and package and argv[cfg] == "hydra" and argv[package].startswith("hydra"):
        argv[cfg] = "all"


def single_run_of_a_sweep(hydra_cfg) -> str | None:
    """A warning when an experiment that is a sweep (`lr_sweep`, `tuned`) runs without `-m`."""
    experiment = hydra_cfg.runtime.choices.get("experiment")
    params = dict(hydra_cfg.sweeper.get("params") or {})
    varies = bool(set(params) - {"seed"}) or params.get("seed") != "0,1,2"  # beyond the default
    own_sweeper = hydra_cfg.runtime.choices.get("hydra/sweeper") not in ("basic", "grid")
    if experiment is None or not (varies or own_sweeper):
        return None
    return (f"experiment={experiment} is a sweep, but without -m Hydra runs one job with the "
            "config's own values. To run the sweep: python -m bnstudy.train -m "
            f"experiment={experiment} (plus your other settings).")


if __name__ == "__main__":
    # before Hydra, whose hint would be `+key`, and whose list of options a list of them lacks
    if problem := (first_mistake(sys.argv[1:]) or sweeper_clash(sys.argv[1:])
                   or launcher_without_sweep(sys.argv[1:])):
        sys.exit(problem)
    hydra_paths_printable(sys.argv)
    if {"-m", "--multirun"} & set(sys.argv) and {"-c", "--cfg"} & set(sys.argv):
        sys.exit("--cfg prints one job's config, so it does not go with -m (Hydra stops with a "
                 "traceback). Drop -m to see a job's config: python -m bnstudy.train --cfg job "
                 "<your overrides, one value each>.")
    try:
        main()
    except KeyboardInterrupt:  # a sweep's own process (a job's Ctrl-C is said by the job)
        sys.exit(sweep_interrupted())
