"""A sweep's submitit jobs (`hydra/launcher=slurm`, `submitit_local`; the launchers in
`hydra_plugins.bnstudy_launchers`): collected one by one as they end (`collect_jobs`), a job
without a result said with its SLURM state, jobs SLURM holds for good said once, and
submission's stderr kept to one thread at a time."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from bnstudy.jobdir import dir_override
from bnstudy.records import RunRecord, study_dir
from bnstudy.sweep import note_refusal

log = logging.getLogger("bnstudy")

# A SLURM state (sacct's first word) or a submitit local job's, as the summary says it
ENDINGS = {"CANCELLED": "cancelled", "TIMEOUT": "timed out, not requeued",
           "OUT_OF_MEMORY": "killed for memory", "NODE_FAIL": "lost with its node",
           "PREEMPTED": "preempted, not requeued", "FAILED": "failed outside the run",
           "BOOT_FAIL": "its node failed to start", "DEADLINE": "past its deadline",
           "INTERRUPTED": "stopped by submitit's local controller (past its restarts)",
           "FINISHED": "killed, or exited without a result", "COMPLETED": "exited without a result"}
_STDERR = threading.Lock()


@contextlib.contextmanager
def stderr_muted():
    """`sys.stderr` swapped for a stand-in, one thread at a time: it is one for all threads, so
    two swapping at once (a tuned study's cells submitting) would each restore the other's
    stand-in, and the process's last words would go nowhere."""
    with _STDERR, contextlib.redirect_stderr(io.StringIO()):
        yield


def collect_jobs(jobs, overrides, name_of, sweep_dir: Path, poll_s: float = 2.0) -> list[JobReturn]:
    """Each submitit job's return value, collected as the jobs end. A job that ends without one
    (cancelled, killed, lost, past its requeues) is noted for the summary under its folder's
    name `name_of(i)`, and returns a record saying why: the other jobs' results are kept."""
    from submitit.core.utils import UncompletedJobError

    queue = Queue(jobs)
    pending, returns = dict(enumerate(jobs)), [None] * len(jobs)
    while pending:
        for i, job in list(pending.items()):
            if not (ended := queue.ended(job)):
                continue
            del pending[i]
            if ended == "lost":
                ending = "left the queue (state unknown without sacct)"
            else:
                try:
                    returns[i] = job.results()[0]
                    continue
                except UncompletedJobError as err:
                    ending = job_ending(job, err)
            name = name_of(i)
            record = RunRecord.read(sweep_dir / name)
            progress = f"after {len(record.history)} epoch(s), its record says " \
                f"{record.status}" if record is not None else "before its run started"
            note_refusal(sweep_dir / name, f"no result {progress}", ending)
            returns[i] = JobReturn(overrides=list(overrides[i]), status=JobStatus.COMPLETED,
                                   _return_value=RunRecord(status="interrupted", run_name=name,
                                                           error=f"{ending}: no result"))
        if pending:
            queue.say_held(sweep_dir)
            time.sleep(poll_s)
    return returns


def job_ending(job, err: Exception) -> str:
    """Why a submitit job left no result: `cancelled (SLURM state CANCELLED)`, or its error."""
    from submitit.core.utils import FailedJobError

    if isinstance(err, FailedJobError):  # the job's own code raised outside the run
        parts = str(err).split("-" * 22)  # submitit's message: the trace between two rules
        trace = [line for line in parts[len(parts) > 2].splitlines() if line.strip()]
        return f"failed in its process: {trace[-1].strip() if trace else '?'}"
    state = str(job.state)
    kind = "submitit local state" if type(job).__name__ == "LocalJob" else "SLURM state"
    return f"{ENDINGS.get(state.split()[0].upper(), state.lower())} ({kind} {state})"


class Queue:
    """Whether submitit jobs ended: submitit's poll (`sacct`), or without accounting their
    result file and `squeue` (gone twice in a row without a result: `lost`)."""

    SQUEUE_EVERY_S = 15.0
    # why SLURM holds a job that will never start: it asks more than the partition's nodes have
    NEVER = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints")

    def __init__(self, jobs) -> None:
        self.slurm = [job for job in jobs if type(job).__name__ == "SlurmJob"]
        self.ids = array_ids(self.slurm)
        self.accounting = not self.slurm or has_accounting()
        self.absent: Counter[str] = Counter()  # squeue answers in a row without the job
        self.asked = float("-inf")
        self.held_asked: float | None = time.monotonic()  # None: said
        if not self.accounting:
            log.warning("This cluster has no job accounting (sacct does not answer): job states "
                        "come from result files and squeue only.")

    def ended(self, job) -> str | bool:
        """True (ended: its outcome can be read), "lost" (gone without a result) or False."""
        if self.accounting or type(job).__name__ != "SlurmJob":
            return job.done()
        if job.paths.result_pickle.exists():
            return True
        if time.monotonic() - self.asked > self.SQUEUE_EVERY_S:
            self._ask_squeue()
        return "lost" if self.absent[job.job_id] >= 2 else False

    def say_held(self, sweep_dir: Path) -> None:
        """Warns once if SLURM holds jobs for a reason that does not pass (`NEVER`)."""
        if not self.slurm or self.held_asked is None or \
                time.monotonic() - self.held_asked < self.SQUEUE_EVERY_S:
            return
        self.held_asked = time.monotonic()
        if (out := self._squeue("-t", "PD", "-o", "%i %r")) is None:
            return
        held = dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)
        if not (never := {job: why for job, why in held.items() if why.strip() in self.NEVER}):
            return
        self.held_asked = None
        log.warning(
            "SLURM holds %d of the sweep's jobs (%s: %s), which ask more than the partition "
            "gives, so they will not start. Stop them (scancel %s) and launch again with "
            "settings its nodes have (sinfo -o '%%P %%c %%m %%G %%l' lists each partition's "
            "CPUs, memory, GPUs and time limit): hydra.launcher.cpus_per_task, mem_gb, "
            "gpus_per_node, timeout_min, and resume=true %s.", len(never),
            ", ".join(sorted(never)), ", ".join(sorted({w.strip() for w in never.values()})),
            " ".join(self.ids), dir_override("hydra.sweep.dir", study_dir(sweep_dir)))

    def _squeue(self, *options: str) -> subprocess.CompletedProcess | None:
        """`squeue` of this sweep's jobs, one line each (array tasks apart); None: no answer."""
        try:
            return subprocess.run(["squeue", "-h", "-r", *options, "-j", ",".join(self.ids)],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def _ask_squeue(self) -> None:
        out = self._squeue("-o", "%i")
        if out is None or out.returncode != 0 and "Invalid job id" not in out.stderr:
            return  # no answer: nothing is known to have left
        self.asked, queued = time.monotonic(), set(out.stdout.split())
        for job in self.slurm:
            self.absent[job.job_id] = self.absent[job.job_id] + 1 if job.job_id not in queued else 0


def array_ids(jobs) -> list[str]:
    """The SLURM job arrays of submitit jobs (`7` of tasks `7_0`, `7_1`), what scancel takes."""
    return sorted({job.job_id.split("_")[0] for job in jobs})


def has_accounting() -> bool:
    """Whether `sacct` answers (a cluster without accounting storage refuses it)."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-j", "1"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "disabled" not in proc.stderr
