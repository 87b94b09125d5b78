"""A sweep's edges (`bnstudy.sweep`): its summary, its exit status, its folder checked first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import (
    TINY_SETTINGS,
    TINY_SWEEP,
    fake_commands,
    run_sweep,
    run_train,
    sweep_jobs,
    write_job,
)
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from bnstudy import cluster, dashboard
from bnstudy.dashboard import BROWSE_URL
from bnstudy.jobdir import LOCK_NAME, JobDirLock
from bnstudy.records import RunRecord
from bnstudy.report.answer import console_answer
from bnstudy.sweep import REFUSALS_ENV, SweepSummary, check_plan, discard_empty_sweep, note_refusal

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


@pytest.fixture
def sweep_summary(tmp_path, caplog):
    """The summary callback of a sweep in tmp_path, started; `end()`: its exit message or None."""
    caplog.set_level("INFO", logger="bnstudy")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(config)

    def end() -> str | None:
        try:
            summary.on_multirun_end(config)
        except SystemExit as exit_:
            return str(exit_.code)
        return None

    summary.config, summary.end = config, end
    yield summary
    os.environ.pop(REFUSALS_ENV, None)


@pytest.mark.parametrize("status,error,reason", [
    ("ok", None, None),
    ("diverged", None, None),  # a divergence is a result
    ("failed", "ValueError: boom", "failed: ValueError: boom"),
    ("failed", None, "failed: ?"),
    ("interrupted", None, "interrupted after 2 epoch(s) (Ctrl-C, a kill, or a time limit or "
                          "preemption its launcher did not requeue)"),
    ("interrupted", "SIGTERM", "interrupted after 2 epoch(s) (SIGTERM)"),
    ("running", None, "no result after 2 epoch(s): still running in x in process 7 on node1 "
                      "since noon, or killed"),  # the lock file names its last holder
    ("refused", None, "refused: it was in use"),  # told by the job's process, wherever it ran
])
def test_the_sweep_exits_1_when_a_job_did_not_finish(status, error, reason, tmp_path,
                                                      sweep_summary):
    done = write_job(tmp_path, [0.5, 0.6])
    job = write_job(tmp_path, [0.4, 0.5], status="running" if status == "refused" else status,
                    error=error, seed=1)
    if status == "refused":  # an unfinished run in use by another process
        note_refusal(job, "it was in use")
        assert [p.parent for p in (tmp_path / ".refused").iterdir()] == [tmp_path / ".refused"]
    (job / LOCK_NAME).write_text(json.dumps({"run": "x", "pid": 7, "host": "node1",
                                             "since": "noon"}))  # no longer held
    message = sweep_summary.end()
    if reason is None:
        assert message is None  # exit status 0
        return
    assert message.startswith(f"1 job(s) of {tmp_path} did not finish")
    assert f"\n  {job.name}: {reason}\n" in message and done.name not in message
    assert f"resume=true hydra.sweep.dir={tmp_path}" in message
    assert not (tmp_path / ".refused").exists()  # the refusals' notes are read and removed


@pytest.mark.parametrize("board,other_norm", [(False, "none"), (True, "bn")])
def test_a_finished_sweeps_summary_is_a_line_per_job_the_answer_and_the_commands(
        board, other_norm, tmp_path, sweep_summary, caplog):
    if board:
        sweep_summary.config.logger = {"tensorboard": {"_target_": TENSORBOARD}}
    sweep_summary.config.hydra.sweep.dir = str(sweep := tmp_path / "my sweep")  # a shell splits
    write_job(sweep, [0.5, 0.6])
    write_job(sweep, [0.4, 0.5], norm=other_norm, seed=1)
    answer = console_answer(sweep)  # none for a sweep of one norm
    assert sweep_summary.end() is None and bool(answer) == (other_norm == "none")
    assert caplog.messages[-1] == (
        f"Sweep {sweep}: 2 job(s)\n  ?: ok, val acc 60.00 %, test acc 59.00 %, 10 s\n"
        f"  ?: ok, val acc 50.00 %, test acc 49.00 %, 11 s\n" + (f"{answer}\n" if answer else "")
        + (f"Browse: tensorboard --logdir '{sweep}', then open {BROWSE_URL}\n" if board else "")
        + f"Report (per second of compute, tuning, pictures, every claim): python -m "
        f"bnstudy.report '{sweep}'")  # each command as a shell reads it


def test_jobs_that_ended_alike_are_one_line_of_the_summary(tmp_path, sweep_summary):
    """Missing data fails every job of a dataset with the same paragraph: said once."""
    missing = "failed: DataError: mnist: files not found: /typo/MNIST/raw/..."
    jobs = [write_job(tmp_path, [0.4], status="failed", error=missing[8:], seed=s)
            for s in range(3)]
    other = write_job(tmp_path, [0.4], status="failed", error="ValueError: boom", seed=3)
    message = sweep_summary.end()
    assert message.startswith(f"4 job(s) of {tmp_path} did not finish")
    assert f"\n  3 jobs ({jobs[0].name}, {jobs[1].name}, …): {missing}\n" in message
    assert f"\n  {other.name}: failed: ValueError: boom\n" in message


def test_finished_runs_refused_are_kept_or_were_finished_meanwhile(tmp_path, sweep_summary, caplog):
    """One kept from before, one finished meanwhile, one unfinished (each alone: the test below)."""
    held = write_job(tmp_path, [0.5, 0.6])
    os.utime(held / "metrics.json", (sweep_summary.started - 60,) * 2)  # from before
    finished = write_job(tmp_path, [0.5, 0.6], seed=1)  # by the other launch, meanwhile
    running = write_job(tmp_path, [0.4], status="running", seed=2)
    for job in (held, finished, running):
        note_refusal(job, f"{job} is in use")
    message = sweep_summary.end()
    assert message.startswith(f"1 job(s) of {tmp_path} did not finish")
    assert f"\n  {running.name}: refused: " in message and message.endswith(
        f"\n1 job(s) already held a finished run and were left as they are ({held.name}); "
        "overwrite=true trains them again.")
    assert f"finished by another launch of this sweep meanwhile: {finished.name}" in caplog.text


@pytest.mark.parametrize("how", ["held before", "finished meanwhile", "still trained"])
def test_the_summary_names_the_jobs_refused_here_in_job_order(how, tmp_path, sweep_summary, caplog):
    """Jobs 9 and 10 (as text, 10_ sorts first), both refused here, each kind alone."""
    for n in range(9):  # numbers only: not job folders
        (tmp_path / f"{n}_empty").mkdir()
    jobs = [write_job(tmp_path, [0.4], status="running" if how == "still trained" else "ok",
                      seed=seed) for seed in (9, 10)]
    names = f"{jobs[0].name}, {jobs[1].name}"
    assert names.startswith("9_")
    with JobDirLock(jobs[0]) as first, JobDirLock(jobs[1]) as second:
        for job, lock in zip(jobs, (first, second), strict=True):
            note_refusal(job, f"{job} is in use")
            if how == "held before":
                os.utime(job / "metrics.json", (sweep_summary.started - 60,) * 2)
            if how == "still trained":
                lock.acquire("other launch")
        message = sweep_summary.end()
    if how == "held before":
        assert message == (f"2 job(s) already held a finished run and were left as they are "
                           f"({names}); overwrite=true trains them again. Their results stand: "
                           f"python -m bnstudy.report {tmp_path}")
    elif how == "finished meanwhile":
        assert message is None and caplog.messages[-1] == (
            f"2 job(s) were in use here and finished by another launch of this sweep meanwhile: "
            f"{names}")
    else:  # the other launch trains them still: nothing to fix here
        assert message == (f"2 job(s) are being trained by another launch of this sweep "
                           f"({names}): its summary lists them when it ends; should it stop, "
                           f"resume=true hydra.sweep.dir={tmp_path} runs them here.")


RULE = "-" * 22  # around the trace in submitit's FailedJobError


class FakeJob:
    """A submitit job ended, as `collect_jobs` sees it: a result, a trace, or a `state` (lost)."""

    def __init__(self, result=None, state: str | None = None, raised: str | None = None) -> None:
        self.result, self.state, self.raised = result, state, raised

    def done(self) -> bool:
        return True

    def results(self):
        from submitit.core.utils import FailedJobError, UncompletedJobError

        if self.raised is not None:  # submitit's message for a job whose code raised
            raise FailedJobError(f"Job (task=0) failed during processing with trace:\n{RULE}\n"
                                 f"Traceback (most recent call last):\n{self.raised}\n{RULE}\n"
                                 "You can check full logs with 'job.stderr(0)'")
        if self.state is not None:
            raise UncompletedJobError(f"Job 6_1 has not produced any output (state: {self.state})")
        return [self.result]


class LocalJob(FakeJob):  # named as submitit's classes: job_ending and Queue read the name
    pass


class SlurmJob(FakeJob):
    """A SLURM job that left the queue without a result."""

    def __init__(self, folder: Path = Path(), job_id: str = "7_0", state: str | None = None):
        super().__init__(state=state)
        self.job_id = job_id
        self.paths = type("Paths", (), {"result_pickle": folder / f"{job_id}_result.pkl"})

    def done(self) -> bool:
        raise AssertionError("without accounting, submitit's sacct poll is not used")


@pytest.mark.parametrize("job, message, ending", [  # (a failed job's state is not read)
    (SlurmJob(), f"Job (task=0) failed with trace:\n{RULE}\nTraceback (most recent call last):"
     f"\n  File x\nValueError: boom\n\n{RULE}\nYou can check full logs",
     "failed in its process: ValueError: boom"),
    (SlurmJob(), f"Job failed: no trace\n{RULE}\nafter one rule\n",
     "failed in its process: Job failed: no trace"),  # not submitit's: the part before
    (SlurmJob(), f"Job failed\n{RULE}\n \n{RULE}\nlogs", "failed in its process: ?"),
    (SlurmJob(state="CANCELLED by 1000"), None, "cancelled (SLURM state CANCELLED by 1000)"),
    (LocalJob(state="INTERRUPTED"), None, "stopped by submitit's local controller (past its "
                                          "restarts) (submitit local state INTERRUPTED)"),
    (SlurmJob(state="Odd State"), None, "odd state (SLURM state Odd State)"),  # not in ENDINGS
])
def test_a_submitit_job_without_a_result_says_how_it_ended(job, message, ending):
    from submitit.core.utils import FailedJobError, UncompletedJobError

    err = FailedJobError(message) if message else UncompletedJobError("no result")
    assert cluster.job_ending(job, err) == ending


@pytest.mark.parametrize("mode,status,value,board,refreshed,sweep", [
    ("MULTIRUN", "COMPLETED", "ok", True, True, ""),
    ("MULTIRUN", "COMPLETED", None, True, True, ""),  # a return without a status
    ("MULTIRUN", "FAILED", ValueError("boom"), True, True, ""),  # its curves so far are shown too
    ("MULTIRUN", "COMPLETED", "refused", True, False, ""),  # nothing new
    ("MULTIRUN", "COMPLETED", "ok", False, False, ""),  # no TensorBoard
    ("RUN", "COMPLETED", "ok", True, False, ""),  # a single run has no sweep view
    ("MULTIRUN", "COMPLETED", "ok", True, False, "search/mnist-bn-sgd"),  # a tuned cell's trial
])
def test_the_sweeps_mean_view_is_refreshed_after_each_job_that_trained(
        mode, status, value, board, refreshed, sweep, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dashboard, "refresh_sweep_view", calls.append)
    logger = {"tensorboard": {"_target_": TENSORBOARD}} if board else {}
    (tmp_path / "multirun.yaml").write_text("{}")  # the study's, above its searches
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / sweep)},
                                         "mode": getattr(RunMode, mode)}, "logger": logger})
    value = RunRecord(status=value) if isinstance(value, str) else value
    SweepSummary().on_job_end(config, JobReturn(status=getattr(JobStatus, status),
                                                _return_value=value))
    assert calls == ([str(tmp_path / sweep)] if refreshed else [])


def test_a_launch_that_trained_nothing_writes_into_no_job(tmp_path, sweep_summary):
    """Its HParams go into its first job only when it trained one (not one trained meanwhile)."""
    summary, config = sweep_summary, sweep_summary.config
    config.hydra.mode, config.logger = RunMode.MULTIRUN, {"tensorboard": {"_target_": TENSORBOARD}}
    held = write_job(tmp_path, [0.5, 0.6])
    os.utime(held / "metrics.json", (summary.started - 60,) * 2)  # finished earlier
    before = sorted(tmp_path.rglob("*"))
    summary.on_job_end(config, JobReturn(status=JobStatus.COMPLETED,
                                         _return_value=RunRecord(status="refused")))
    assert summary.end() is None and sorted(tmp_path.rglob("*")) == before
    summary.on_multirun_start(config)  # refused here, trained meanwhile by another launch
    note_refusal(held, f"{held} is in use")
    os.utime(held / "metrics.json", (summary.started + 1,) * 2)
    assert summary.end() is None and sorted(tmp_path.rglob("*")) == before
    summary.on_multirun_start(config)
    os.utime(held / "metrics.json", (summary.started + 1,) * 2)  # trained by this launch
    summary.end()
    assert len(list(held.glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("mode,key", [((), "hydra.run.dir"), (("-m",), "hydra.sweep.dir")])
def test_a_read_only_output_folder_is_one_paragraph(tmp_path, mode, key):
    """A read-only folder, or (as root, who writes anywhere) /sys, which refuses even root."""
    (tmp_path / "read-only").mkdir(mode=0o555)
    where = (tmp_path / "read-only" if os.geteuid() != 0 else Path("/sys/bnstudy-test")) / "out"
    proc = run_train(*mode, "paths.data_dir=/nonexistent", "seed=0", f"{key}={where}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    what = "run's" if key == "hydra.run.dir" else "sweep's"
    assert f"Could not write the {what} folder, {where}: " in proc.stderr
    assert "Nothing was run." in proc.stderr and f"point {key} at a" in proc.stderr
    assert not where.exists()


def test_a_job_that_left_no_result_is_a_line_in_the_summary(tmp_path, sweep_summary):
    """Issue #34: a cancelled job does not end the sweep; named with SLURM's state, exit 1."""
    pytest.importorskip("submitit")
    done = write_job(tmp_path, [0.5, 0.6])
    cancelled = write_job(tmp_path, [0.4, 0.5], status="interrupted", seed=1)
    never = tmp_path / "2_mnist-bn-sgd-seed2"  # cancelled before it started: no folder
    names = [done.name, cancelled.name, never.name, "3_mnist-bn-sgd-seed3"]
    returns = cluster.collect_jobs([FakeJob("its record"), FakeJob(state="CANCELLED by 0"),
                                    FakeJob(state="NODE_FAIL"), FakeJob(raised="ValueError: boom")],
                                   [["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"]],
                                   names.__getitem__, tmp_path, poll_s=0)
    assert returns[0] == "its record"
    assert {r.return_value.status for r in returns[1:]} == {"interrupted"}
    message = sweep_summary.end()
    assert message.startswith(f"3 job(s) of {tmp_path} did not finish")
    assert "\n  3_mnist-bn-sgd-seed3: failed in its process: ValueError: boom: no result " \
        "before its run started\n" in message
    assert f"\n  {cancelled.name}: cancelled (SLURM state CANCELLED by 0): no result after 2 " \
        "epoch(s), its record says interrupted\n" in message
    assert f"\n  {never.name}: lost with its node (SLURM state NODE_FAIL): no result before " \
        "its run started\n" in message
    assert done.name not in message and f"resume=true hydra.sweep.dir={tmp_path}" in message


def test_without_sacct_a_job_gone_from_the_queue_is_noticed_and_no_answer_is_not(
        tmp_path, sweep_summary, monkeypatch, caplog):
    """Issue #34: said once; a job gone from `squeue` without a result is not waited for forever:
    lost at squeue's second `Invalid job id` (all left); squeue's controller down tells nothing."""
    pytest.importorskip("submitit")
    done = write_job(tmp_path, [0.5, 0.6])
    fake_commands(monkeypatch, tmp_path / "bin",  # the queue empty, but held while polled
                  squeue='case "$*" in *"-t PD"*) echo "7_0 PartitionConfig";; esac',
                  sacct="echo 'Slurm accounting storage is disabled' >&2; exit 1")
    monkeypatch.setattr(cluster.Queue, "SQUEUE_EVERY_S", 0)
    cluster.collect_jobs([FakeJob("its record"), SlurmJob(tmp_path)], [[], []],
                       [done.name, "1_mnist-bn-sgd-seed1"].__getitem__, tmp_path, poll_s=0)
    notes = [r.getMessage() for r in caplog.records if "no job accounting" in r.getMessage()]
    assert notes == ["This cluster has no job accounting (sacct does not answer): job states "
                     "come from result files and squeue only."]
    assert any(r.getMessage().startswith("SLURM holds 1 of the sweep's jobs (7_0: Partition")
               for r in caplog.records)  # asked as the sweep waits
    assert "\n  1_mnist-bn-sgd-seed1: left the queue (state unknown without sacct): no result " \
        "before its run started\n" in sweep_summary.end()
    said = tmp_path / "said"
    fake_commands(monkeypatch, tmp_path / "bin", sacct="exit 1", squeue=f'cat {said} >&2; exit 1')
    for error, ending in (("slurm_load_jobs error: Unable to contact slurm controller", False),
                          ("slurm_load_jobs error: Invalid job id specified", "lost")):
        said.write_text(error)
        queue, job = cluster.Queue([SlurmJob(tmp_path)]), SlurmJob(tmp_path)
        assert [queue.ended(job), queue.ended(job)] == [False, ending]


@pytest.mark.parametrize(("sacct", "answers"), [
    ("exit 0", True), ("echo 'sacct: error: Slurm accounting storage is disabled' >&2", False),
    ("echo 'Slurm accounting storage is disabled' >&2; exit 1", False), (None, False)])
def test_accounting_is_there_where_sacct_answers(tmp_path, monkeypatch, sacct, answers):
    """sacct without accounting storage says so, exit 0 or 1 by version; no sacct at all."""
    fake_commands(monkeypatch, tmp_path / "bin", only=sacct is None,
                  **{} if sacct is None else {"sacct": sacct})
    assert cluster.has_accounting() is answers


def test_jobs_slurm_holds_for_good_are_said_once_with_what_to_do(tmp_path, monkeypatch, caplog):
    """PartitionConfig (more than a node has) holds for good: said; Priority passes: not said."""
    pytest.importorskip("submitit")
    reason = tmp_path / "reason"
    fake_commands(monkeypatch, tmp_path / "bin", sacct="exit 0",
                  squeue=f'echo "$@" > {tmp_path}/asked; echo "7_0 $(cat {reason})"; '
                  'echo "12_0 Priority"')
    monkeypatch.setattr(cluster.Queue, "SQUEUE_EVERY_S", 0)
    queue = cluster.Queue([SlurmJob(tmp_path, job_id) for job_id in ("7_0", "7_1", "12_0")])
    for why in ("Priority", "PartitionConfig", "PartitionConfig"):
        reason.write_text(why)
        queue.say_held(tmp_path / "multirun" / "s")
    assert (tmp_path / "asked").read_text() == "-h -r -t PD -o %i %r -j 12,7\n"  # 2 arrays
    assert [r.getMessage() for r in caplog.records if "holds" in r.getMessage()] == [
        "SLURM holds 1 of the sweep's jobs (7_0: PartitionConfig), which ask more than the "
        "partition gives, so they will not start. Stop them (scancel 12 7) and launch again with "
        "settings its nodes have (sinfo -o '%P %c %m %G %l' lists each partition's CPUs, "
        "memory, GPUs and time limit): hydra.launcher.cpus_per_task, mem_gb, gpus_per_node, "
        f"timeout_min, and resume=true hydra.sweep.dir={tmp_path}/multirun/s."]


def test_a_sweep_folder_without_a_job_goes_with_its_own_files_and_a_job_keeps_it(tmp_path,
                                                                                monkeypatch):
    sweep = tmp_path / "multirun" / "sweep"
    (sweep / "+mean" / "bn").mkdir(parents=True)
    for own in ("multirun.yaml", ".lock"):
        (sweep / own).write_text("")
    (sweep / "0_mnist-bn-sgd-seed0").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not discard_empty_sweep(sweep) and (sweep / "multirun.yaml").is_file()
    (sweep / "0_mnist-bn-sgd-seed0").rmdir()
    assert discard_empty_sweep(sweep) and not (tmp_path / "multirun").exists()


def test_a_sweep_numbered_otherwise_than_the_folders_jobs_is_refused(tmp_path):
    """The same sweep again (resumed, other run-only keys, more seeds or fewer) goes on."""
    def hydra(*task: str):  # the config a multirun of `task` hands its sweeper
        launch = ["hydra/launcher=slurm", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}"]
        return OmegaConf.create({"hydra": {
            "sweep": {"dir": str(tmp_path)}, "sweeper": {"params": {"seed": "0,1,2"}},
            "overrides": {"task": ["dataset=mnist", "run_name=${dataset.name}-x", *task],
                          "hydra": launch}}})  # a run name typed: read as typed

    grid = ("norm=bn,none", "optim=sgd,adam")
    OmegaConf.save(hydra(*grid, "resume=true", "overwrite=false"),  # saved by a resume of it
                   tmp_path / "multirun.yaml")
    check_plan(hydra("optim=adam"))  # no job in the folder yet: Hydra's plan replaces its own
    write_job(tmp_path, [0.5])
    for same in ([], ["resume=true", "threads=2", "+callbacks.x=1"], ["seed=0,1,2,3"], ["seed=0"]):
        check_plan(hydra(*grid, *same))
    job_2 = "seed=0 norm=none optim=sgd (job 2 there)"
    def refusal(*task: str) -> str:
        with pytest.raises(SystemExit) as refused:
            check_plan(hydra(*task))
        return str(refused.value.code)

    for other, job in ((["norm=bn,none", "optim=sgd"], job_2),
                       (["norm=none", "optim=sgd", "seed=0"], job_2),  # a single job
                       (["norm=none,bn", "optim=sgd,adam"], job_2),
                       (["norm=bn", "optim=sgd,adam", "seed=0,1"],
                        "seed=1 norm=bn optim=sgd (job 4 there)"),
                       (["norm=bn,none", "optim=sgd,adam", "dataset=mnist,cifar10"],
                        "seed=0 dataset=cifar10 norm=bn optim=sgd"),
                       ([*grid, "dataset=cifar10"], "seed=0 dataset=cifar10 norm=bn optim=sgd"),
                       ([*grid, "model.net.depth=1,2"],  # job 0 only adds a key: job 1 differs
                        "seed=0 norm=bn optim=sgd model.net.depth=2"),
                       ([*grid, "+optim.optimizer.weight_decay=0,0.01"],  # an argument added
                        "seed=0 norm=bn optim=sgd +optim.optimizer.weight_decay=0.01")):
        said = refusal(*other)
        assert said.startswith(f"{tmp_path} holds the jobs of another sweep, numbered otherwise: ")
        assert f"this sweep's would be {job}. In one folder the two would train a setting " \
            "twice, or two settings under one number, so nothing was run. " in said
        assert ("To go on with that sweep, run its command with resume=true: python -m "
                "bnstudy.train -m hydra/launcher=slurm dataset=mnist 'run_name=${dataset.name}-x' "
                f"norm=bn,none optim=sgd,adam resume=true hydra.sweep.dir={tmp_path}; to run "
                "this one, give it a folder of its own (hydra.sweep.dir=<another folder>). More "
                "seeds (seed=0,1,2,3,4 after seed=0,1,2, with resume=true) keep the numbers and "
                "may share the folder.") in said
    assert refusal(*grid, "dataset.lr=0.1", "trainer.max_epochs=5", "resume=true").startswith(
        f"{tmp_path} holds the jobs of another sweep, run with other settings (dataset.lr: "
        "(default) -> 0.1; trainer.max_epochs: (default) -> 5), so nothing was run. To go on "
        "with that sweep, run its command with resume=true: ")  # the same jobs, other settings
    tuned = hydra(*grid)  # a tuned study's plan: its searched setting an interval
    tuned.hydra.sweeper.params["optim.optimizer.lr"] = "tag(log, interval(0.0001, 1.0))"
    OmegaConf.save(tuned, tmp_path / "multirun.yaml")
    assert "holds the jobs of another kind of sweep, not a grid of values (a tuned study's " \
        "searches?): in one folder the report would read the two as one study, so nothing " \
        "was run." in refusal(*grid)


@pytest.mark.parametrize("grid, said", [
    (("dataset=mnist", "norm=bn,none", "optim=sgd", "seed=0"),  # another grid
     "{} holds the jobs of another sweep, numbered otherwise: its job 1 is dataset=mnist norm=bn "
     "optim=adam, this sweep's would be dataset=mnist norm=none optim=sgd (job 2 there)."),
    pytest.param(TINY_SWEEP, "8 job(s) already held a finished run", marks=pytest.mark.slow)],
    ids=["another", "the same"])  # the same: 8 jobs refused, 3 s
def test_a_sweep_launched_into_a_sweeps_folder_without_resume_changes_nothing(grid, said, sweep,
                                                                              tiny_data):
    plan, jobs = (sweep / "multirun.yaml").read_bytes(), sweep_jobs(sweep)
    proc = run_sweep(sweep, tiny_data, *grid, *TINY_SETTINGS)  # the tiny sweep's settings
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert said.format(sweep) in " ".join(proc.stderr.split())
    assert (sweep / "multirun.yaml").read_bytes() == plan  # Hydra's own save, put back
    assert sweep_jobs(sweep) == jobs
