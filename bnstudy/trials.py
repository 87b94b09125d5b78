"""A tuned study's trials (`bnstudy.tune`): each scored by its run's record for Optuna
(`objective`), and launched for every cell's search at once (`Cells`)."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from hydra.core.utils import JobReturn, JobStatus

from bnstudy.records import RunRecord


def score(record: RunRecord) -> float | str:
    """A run's score: its final epoch's validation accuracy, 0 for a diverged run; for a failed
    or refused run the reason (not a number)."""
    if record.status == "diverged":
        return 0.0
    if record.status != "ok" or record.final_val_acc is None:
        return f"no result ({record.status}: {record.error or 'no history'})"
    return float(record.final_val_acc)


def objective(job: JobReturn) -> float | str:
    """What Optuna maximises for a trial: its run's `score`; for a job that raised the reason,
    which Optuna cannot cast to a number and so records as a failed trial (never the best)."""
    if job.status != JobStatus.COMPLETED:
        err = job._return_value  # the job's exception (the `return_value` property raises it)
        return f"failed: {type(err).__name__}: {err}"
    return score(job.return_value if isinstance(job.return_value, RunRecord) else RunRecord("?"))


class ScoringLauncher:
    """The sweep's launcher, each job's return value turned into `objective`'s score (which the
    Optuna sweeper casts to float); keeps each trial's job directory (relative to `root`, trial
    number = job number), its compute seconds (the run's `wall_time_s`) and why trials failed."""

    def __init__(self, launcher, root: Path) -> None:
        self.launcher, self.root = launcher, root
        self.jobs: list[str | None] = []
        self.seconds: list[float | None] = []
        self.errors: list[str] = []

    def launch(self, job_overrides, initial_job_idx: int):
        jobs = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for job in jobs:
            out = job.hydra_cfg.hydra.runtime.output_dir if job.hydra_cfg else None
            self.jobs.append(out and Path(os.path.relpath(out, self.root)).as_posix())
            record = job._return_value
            self.seconds.append(record.wall_time_s if isinstance(record, RunRecord) else None)
            value = objective(job)
            job.status, job.return_value = JobStatus.COMPLETED, value  # scored, even a failure
            if isinstance(value, str):
                self.errors.append(f"{Path(out or '?').name}: {value}")
        return jobs


class Cells:
    """The cells' searches at once: each cell's Optuna loop in a thread of its own, its batches
    of trials handed to the main thread, which launches them in turn (the cells' rounds
    interleave; a job run in this process keeps Ctrl-C and signals in the main thread), or, on
    a cluster (`concurrent`), each batch at once: `n_jobs` trials of every cell in flight."""

    def __init__(self, concurrent: bool) -> None:
        self.concurrent, self.requests = concurrent, queue.Queue()

    def launcher(self, real) -> SimpleNamespace:
        """`real`, its `launch` handed to the main thread (`search`)."""
        def launch(job_overrides, initial_job_idx: int):
            done: Future = Future()
            self.requests.put((done, partial(real.launch, job_overrides,
                                             initial_job_idx=initial_job_idx)))
            return done.result()

        return SimpleNamespace(launch=launch)

    def search(self, searches: list) -> list:
        """Each search's return value, in order; the first one's error is raised."""
        outcomes: list[Future] = [Future() for _ in searches]
        for pair in zip(outcomes, searches, strict=True):  # daemons: Ctrl-C ends the sweep
            threading.Thread(target=_settle, args=pair, daemon=True).start()
        while not all(outcome.done() for outcome in outcomes):
            try:
                request = self.requests.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.concurrent:
                threading.Thread(target=_settle, args=request, daemon=True).start()
            else:
                _settle(*request)
        return [outcome.result() for outcome in outcomes]


def _settle(done: Future, call) -> None:
    """`done` holds what `call()` returns or raises, for the thread that waits on it (a
    launcher's refusal exits: in a thread silently, and its search would wait forever)."""
    try:
        done.set_result(call())
    except BaseException as err:
        done.set_exception(err)
