"""Where a job's time goes: a sweep run through the entry point in this process, timed by phase.

    python -m bnstudy.bench profile [--jobs 3] [overrides ...]   # e.g. trainer.max_epochs=50

It runs `python -m bnstudy.train -m seed=0,1,... [overrides]` in this process (Hydra's basic
launcher: one job after another, as a parallel launcher's worker runs its share), with a
wall-clock timer (`time.perf_counter`) around each of the functions below, and prints their
seconds per job and per epoch: the median over the jobs after the first (which also pays
the imports, timed apart), and the first job's; then the sweeper's check, which composes every
job's config in the main process before the first job starts (Hydra's launcher composes each
again where the job runs). What no phase of its own times (the training steps themselves,
Lightning's loop between them, Hydra's own work) is the remainder of each total. The timers
cost a few µs a call; none runs inside a step, but the divergence guard's, once a step.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

T0 = time.perf_counter()

# (module, owner, attribute, label, per): per "job" or "epoch" (divided by the job's epochs)
COMPOSE = "compose the job's config (Hydra's launcher)"
PHASES = [
    ("hydra._internal.config_loader_impl", "ConfigLoaderImpl", "load_sweep_config", COMPOSE,
     "job"),
    ("bnstudy.run", None, "default_config", "compose its group defaults (hparams)", "job"),
    ("bnstudy.records", "RunRecord", "write", "metrics.json writes", "job"),
    ("bnstudy.data", "TensorDataModule", "setup", "data: read, normalise, split", "job"),
    ("bnstudy.run", None, "build", "build datamodule, model, callbacks, Trainer", "job"),
    ("bnstudy.dashboard", None, "write_session", "HParams session", "job"),
    ("lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop", "run",
     "epoch: training steps and validation", "epoch"),
    ("lightning.pytorch.loops.evaluation_loop", "_EvaluationLoop", "run",
     "  of which validation (and the test)", "epoch"),
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "on_train_epoch_end",
     "epoch end: checkpoint", "epoch"),
    ("bnstudy.callbacks", "MetricsHistory", "on_train_epoch_end", "epoch end: record", "epoch"),
    ("bnstudy.callbacks", "WeightGrid", "on_train_epoch_end", "epoch end: weight grids",
     "epoch"),
    ("bnstudy.callbacks", "Hallucinations", "on_train_epoch_end",
     "epoch end: hallucinations", "epoch"),
    ("bnstudy.dashboard", "ComparisonCurves", "_write", "comparison curves", "epoch"),
    ("lightning.pytorch.loggers", "TensorBoardLogger", "log_metrics",
     "TensorBoard scalars (Lightning's)", "epoch"),
    ("bnstudy.callbacks", "DivergenceGuard", "on_train_batch_end",
     "divergence guard (every step)", "epoch"),
    ("bnstudy.callbacks", "ImageCallback", "on_train_end", "pictures when training ends",
     "job"),
    ("lightning.pytorch", "Trainer", "fit", "Trainer.fit", "job"),
    ("lightning.pytorch", "Trainer", "test", "Trainer.test", "job"),
    ("bnstudy.train", None, "train", "bnstudy.train.train (the job)", "job"),
    ("bnstudy.sweep", "SweepSummary", "on_job_end", "the sweep's view (+mean runs)", "job"),
    ("hydra.core.utils", None, "run_job", "Hydra's job (all of the above but the compose)",
     "job"),
]
SWEEP_PHASES = [  # once a sweep, in its main process
    ("hydra.plugins.sweeper", "Sweeper", "validate_batch_is_legal",
     "the sweeper composes every job's config first", "sweep"),
]


class Timers:
    """Seconds per label, per job: a job starts with Hydra's `run_job`, and the composition of
    its config that the launcher does just before is counted in it. The sweeper's own check of
    every job's config (before the first job) is counted apart, in `sweep`."""

    def __init__(self) -> None:
        self.job = 0
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.sweep: dict[str, float] = defaultdict(float)
        self.pending = 0.0  # a compose that precedes its job
        self.checking = False  # inside the sweeper's check

    def wrap(self, owner, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if attribute == "run_job":
                self.job += 1
                self.seconds[self.job][COMPOSE] += self.pending
                self.pending = 0.0
            self.checking |= attribute == "validate_batch_is_legal"
            job, start = self.job, time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                if attribute == "validate_batch_is_legal":
                    self.checking = False
                    self.sweep[label] += seconds
                elif attribute == "load_sweep_config":
                    if not self.checking:
                        self.pending += seconds
                else:
                    self.seconds[job][label] += seconds

        setattr(owner, attribute, timed)

    def install(self) -> list[str]:
        """Wraps every phase that exists (before Hydra imports its launcher, which takes its
        own reference to `run_job`); returns those that do not (a library changed)."""
        missing = []
        for module, owner, attribute, label, _ in [*PHASES, *SWEEP_PHASES]:
            try:
                target = importlib.import_module(module)
                for name in ([owner] if owner else []):
                    target = getattr(target, name)
                if attribute == "update_record":  # called by these modules under their names
                    for user in ("bnstudy.train", "bnstudy.callbacks"):
                        self.wrap(importlib.import_module(user), attribute, label)
                else:
                    self.wrap(target, attribute, label)
            except (ImportError, AttributeError):
                missing.append(f"{module}.{owner + '.' if owner else ''}{attribute}")
        return missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnstudy.bench profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="jobs (seeds) to run (default 3)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=cifar10")
    args = parser.parse_intermixed_args(argv)

    import bnstudy.train  # noqa: F401  (the entry point; Hydra and the config only)
    entry_s = time.perf_counter() - T0
    start = time.perf_counter()
    import lightning.pytorch  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401

    import bnstudy.callbacks  # noqa: F401
    import bnstudy.dashboard  # noqa: F401
    import bnstudy.data  # noqa: F401
    libraries_s = time.perf_counter() - start
    timers = Timers()
    missing = timers.install()
    out = tempfile.mkdtemp(prefix="bnstudy-profile-")
    seeds = ",".join(map(str, range(args.jobs)))
    sys.argv = ["bnstudy.train", "-m", f"seed={seeds}", "trainer.enable_progress_bar=false",
                f"hydra.sweep.dir={out}", *args.overrides]
    started = time.perf_counter()
    try:
        bnstudy.train.main()
    except SystemExit as exit_:
        if exit_.code:
            raise
    total_s = time.perf_counter() - started
    from bnstudy.records import RunRecord

    records = [RunRecord.read(p) for p in Path(out).glob("*/metrics.json")]
    epochs = [len(r.history) for r in records]
    report(timers, epochs, entry_s, libraries_s, total_s, out, missing)


def report(timers: Timers, epochs: list[int], entry_s: float, libraries_s: float,
           total_s: float, out: str, missing: list[str]) -> None:
    jobs = sorted(timers.seconds)
    later = jobs[1:] or jobs
    print(f"{len(jobs)} job(s) of {epochs[0] if epochs else '?'} epoch(s) in {total_s:.1f} s "
          f"({out}); imports: the entry point {entry_s:.2f} s, then Lightning, torch, "
          f"TensorBoard and the callbacks {libraries_s:.2f} s (once per process)")
    print(f"{'phase':48s} {'s/job':>8s} {'ms/epoch':>9s} {'first job s':>12s}")
    for _, _, _, label, per in PHASES:
        values = [timers.seconds[j].get(label, 0.0) for j in later]
        per_job = statistics.median(values)
        n = statistics.median(epochs) if epochs else 1
        per_epoch = f"{1000 * per_job / n:9.1f}" if per == "epoch" else " " * 9
        first = timers.seconds[jobs[0]].get(label, 0.0) if jobs else 0.0
        print(f"{label:48s} {per_job:8.3f} {per_epoch} {first:12.3f}")
    for *_, label, _ in SWEEP_PHASES:
        print(f"{label}: {timers.sweep.get(label, 0.0):.3f} s for the {len(jobs)} job(s), "
              "before the first (main process)")
    if missing:
        print(f"not timed (not found in this version): {', '.join(missing)}")
