"""Where a job's time goes: a sweep run through the entry point in this process, timed by phase.

    python -m bnstudy.bench profile [--jobs 3] [overrides ...]   # e.g. trainer.max_epochs=50

It runs `python -m bnstudy.train -m seed=0,1,... [overrides]` in this process (Hydra's basic
launcher: one job after another, as each worker of a parallel launcher runs its share) with a
wall-clock timer around each function of `PHASES`, and prints seconds per job and per epoch
(the median over the jobs after the first, which also pays the imports, timed apart) and the
first job's; then the sweeper's composition of every job's config before the first. What no
phase times (the steps themselves, Lightning's loop, Hydra) is the rest of each total. A timer
costs a few µs a call; the divergence guard's runs once a training_step.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict

from bnstudy.bench import check_overrides

T0 = time.perf_counter()

COMPOSE = "compose the job's config (Hydra's launcher)"
CHECK = "the sweeper composes every job's config first"
PHASES = [  # (what is timed, module:[owner.]function; label; per "job" or "epoch" or "sweep")
    ("hydra._internal.config_loader_impl:ConfigLoaderImpl.load_sweep_config", COMPOSE, "job"),
    ("bnstudy.run:default_config", "compose its group defaults (hparams)", "job"),
    ("bnstudy.records:RunRecord.write", "metrics.json writes", "job"),
    ("bnstudy.data:TensorDataModule.setup", "data: read, normalise, split", "job"),
    ("bnstudy.run:build", "build datamodule, model, callbacks, Trainer", "job"),
    ("bnstudy.dashboard:write_session", "HParams session", "job"),
    ("lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop.run",
     "epoch: training steps and validation", "epoch"),
    ("lightning.pytorch.loops.evaluation_loop:_EvaluationLoop.run",
     "  of which validation (and the test)", "epoch"),
    ("lightning.pytorch.callbacks:ModelCheckpoint.on_train_epoch_end", "epoch end: checkpoint",
     "epoch"),
    ("bnstudy.callbacks:MetricsHistory.on_train_epoch_end", "epoch end: record", "epoch"),
    ("bnstudy.callbacks:WeightGrid.on_train_epoch_end", "epoch end: weight grids", "epoch"),
    ("bnstudy.callbacks:Hallucinations.on_train_epoch_end", "epoch end: hallucinations", "epoch"),
    ("bnstudy.callbacks:ComparisonCurves._write", "comparison curves", "epoch"),
    ("lightning.pytorch.loggers:TensorBoardLogger.log_metrics", "TensorBoard scalars", "epoch"),
    ("bnstudy.callbacks:DivergenceGuard.on_train_batch_end",
     "divergence guard (every training_step)", "epoch"),
    ("bnstudy.callbacks:ImageCallback.on_train_end", "pictures when training ends", "job"),
    ("lightning.pytorch:Trainer.fit", "Trainer.fit", "job"),
    ("lightning.pytorch:Trainer.test", "Trainer.test", "job"),
    ("bnstudy.train:train", "train(cfg), the run (bnstudy.run.train)", "job"),
    ("bnstudy.sweep:SweepSummary.on_job_end", "the sweep's view (+mean runs)", "job"),
    ("hydra.core.utils:run_job", "Hydra's job (all of the above but the compose)", "job"),
    ("hydra.plugins.sweeper:Sweeper.validate_batch_is_legal", CHECK, "sweep"),
]


class Timers:
    """Seconds per label and job (a job starts with Hydra's `run_job`; the composition of its
    config just before is counted in it); the sweeper's check, before any job, in `sweep`."""

    def __init__(self) -> None:
        self.job, self.pending, self.checking = 0, 0.0, False
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.sweep = 0.0

    def wrap(self, owner, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if label == CHECK:
                self.checking = True
            elif attribute == "run_job":
                self.job += 1
                self.seconds[self.job][COMPOSE] += self.pending
                self.pending = 0.0
            job, start = self.job, time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                if label == CHECK:
                    self.checking, self.sweep = False, self.sweep + seconds
                elif label == COMPOSE:
                    self.pending += 0.0 if self.checking else seconds
                else:
                    self.seconds[job][label] += seconds

        setattr(owner, attribute, timed)
        for module in list(sys.modules.values()):  # `from x import f` copies made before
            if getattr(module, attribute, None) is original:
                setattr(module, attribute, timed)

    def install(self) -> list[str]:
        """Wraps every phase that exists (and the references modules imported before, as
        Hydra's launchers import `run_job`); returns those that do not (a library changed)."""
        missing = []
        for where, label, _ in PHASES:
            module, _, name = where.partition(":")
            owner, _, attribute = name.rpartition(".")
            try:
                target = importlib.import_module(module)
                self.wrap(getattr(target, owner) if owner else target, attribute, label)
            except (ImportError, AttributeError):
                missing.append(where.replace(":", "."))
        return missing


def _no_pointers(record: logging.LogRecord) -> bool:
    """The sweep's console lines less those naming its folder to browse or report."""
    lines = record.getMessage().splitlines()
    record.msg, record.args = "\n".join(line for line in lines
                                        if not line.startswith(("Browse", "Report ("))), ()
    return bool(record.msg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnstudy.bench profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="jobs (seeds) to run (default 3)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=cifar10")
    args = parser.parse_intermixed_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: it profiles 1 job or more, e.g. --jobs 3")
    if problem := check_overrides(args.overrides):
        parser.error(problem)

    import bnstudy.train  # noqa: F401  (the entry point; Hydra and the config only)
    entry_s, start = time.perf_counter() - T0, time.perf_counter()
    for module in ("lightning.pytorch", "torch.utils.tensorboard", "bnstudy.callbacks",
                   "bnstudy.dashboard", "bnstudy.data"):
        importlib.import_module(module)
    libraries_s, timers = time.perf_counter() - start, Timers()
    missing = timers.install()
    out = tempfile.mkdtemp(prefix="bnstudy-profile-")
    logging.getLogger("bnstudy").addFilter(_no_pointers)  # to `out`: it is removed below
    sys.argv = ["bnstudy.train", "-m", f"seed={','.join(map(str, range(args.jobs)))}",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={out}", *args.overrides]
    started = time.perf_counter()
    try:
        bnstudy.train.main()
    except SystemExit as exit_:
        if exit_.code:
            raise
    finally:
        total_s = time.perf_counter() - started
        from bnstudy.records import sweep_records

        found = sweep_records(out)
        shutil.rmtree(out, ignore_errors=True)  # its jobs' files: only their times are kept
    epochs = statistics.median(len(r.history) or 1 for _, r in found)
    jobs = sorted(timers.seconds)
    print(f"{len(jobs)} job(s) of {epochs} epoch(s) in {total_s:.1f} s; imports: the "
          f"entry point {entry_s:.2f} s, then Lightning, torch, TensorBoard and the callbacks "
          f"{libraries_s:.2f} s (once per process)")
    print(f"{'phase':48s} {'s/job':>8s} {'ms/epoch':>9s} {'first job s':>12s}")
    for *_, label, per in PHASES[:-1]:
        per_job = statistics.median(timers.seconds[j].get(label, 0.0) for j in jobs[1:] or jobs)
        per_epoch = f"{1000 * per_job / epochs:9.1f}" if per == "epoch" else " " * 9
        print(f"{label:48s} {per_job:8.3f} {per_epoch} {timers.seconds[jobs[0]][label]:12.3f}")
    print(f"{CHECK}: {timers.sweep:.3f} s for the {len(jobs)} job(s), before the first "
          "(main process)")
    if missing:
        print(f"not timed (not found in this version): {', '.join(missing)}")
