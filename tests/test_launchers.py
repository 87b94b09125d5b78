"""Sweeps through Hydra's launchers, run for real (joblib, submitit's local executor), and the
SLURM launcher's settings and refusals."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import SimpleNamespace

import helpers
import pytest
from helpers import compose_config, fake_commands, read_record
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

import hydra_plugins.bnstudy_launchers as plugin
import hydra_plugins.bnstudy_sweeper as grid
from bnstudy import config
from bnstudy.errors import ConfigError
from bnstudy.records import RunRecord
from bnstudy.report.runs import load_runs
from bnstudy.sweep import register_launchers

# -- sweeps through launchers -------------------------------------------------------------
run_sweep = functools.partial(helpers.run_sweep, fresh=True)  # launchers start processes


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_without_oversubscribing(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "hydra/launcher=parallel", "norm=bn,none",
                     "trainer.max_epochs=1", "threads=auto")  # the setting tested, not FAST's 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stderr + proc.stdout  # the launcher's routine notices are not the study's
    assert "Joblib.Parallel" not in console and "#0 : " not in console and "Sweep " in console
    records = [read_record(p.parent) for p in tmp_path.glob("*/metrics.json")]
    assert sorted(r["hparams"]["norm"] for r in records) == ["bn", "none"]
    assert all(r["status"] == "ok" for r in records)
    assert all(r["torch_threads"] == max(1, os.cpu_count() // 2) for r in records)


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_as_on_slurm_and_requeues_at_a_time_limit(
        tiny_data, tmp_path):
    """A process and a thread a job; at USR2 one is requeued and resumes; the other left alone."""
    sweep = tmp_path / "sweep"
    proc = small_sweep(tiny_data, sweep, "norm=bn,none", "threads=auto",  # not FAST's 1
                       *time_limit_at_epoch(2, tmp_path / "signalled"))
    console = proc.stderr + proc.stdout
    assert proc.returncode == 0, console[-3000:]
    assert (tmp_path / "signalled").exists()  # the signal was sent
    assert "Submitit 'local' sweep output dir" not in console  # the launcher's notices: not ours
    assert f"Sweep {sweep}: 2 job(s)" in console
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"]
    records = [read_record(job) for job in jobs]
    assert [r["hparams"]["norm"] for r in records] == ["bn", "none"]
    assert sorted(r["requeues"] for r in records) == [0, 1]  # the signal is sent once
    for job, record in zip(jobs, records, strict=True):
        assert record["status"] == "ok" and record["epochs_trained"] == 3, record
        assert record["torch_threads"] == 1  # every job starts at once: one core each
        assert [h["epoch"] for h in record["history"]] == [0, 1, 2] and \
            0 <= record["test"]["acc"] <= 1
        assert record["job"]["id"].startswith("submitit-local:")
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list(job.glob("events.out.tfevents.*"))
        assert f"{record['run_name']}: ok, val acc" in console
    # submitit ran them: one result per job, each from another process than the launcher
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2 and sorted(sweep.glob(".submitit/*")) == sorted(  # no `%j/`
        {r.parent for r in results})
    pids = {p.name.split(".")[-2] for job in jobs for p in job.glob("events.out.tfevents.*")}
    # events files named by process: a job's, the requeued one's second, the launcher's (HParams)
    assert len(pids) == 4, pids
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in log and "requeued by its launcher" in log and "resuming" in log
    # the lock files are not jobs to the report: two runs, finished
    assert load_runs(sweep)[["job", "status"]].values.tolist() == [[j.name, "ok"] for j in jobs]


def grid_sweeper(config: dict, compose=None):
    """bnstudy's grid sweeper as Hydra sets it up, composing a job's config with `compose`."""
    sweeper = grid.GridSweeper(max_batch_size=None)
    loader = SimpleNamespace(load_sweep_config=compose)
    sweeper.hydra_context = SimpleNamespace(config_loader=loader)
    sweeper.config = OmegaConf.create(config)
    return sweeper


def test_the_grid_sweeper_composes_each_swept_value_once_before_the_jobs(monkeypatch):
    """Not all 160 of the decisive study's configs first: a job per new value (each checked)."""
    composed, checked, announced = [], [], []
    monkeypatch.setattr(grid, "validate", lambda cfg, given: checked.append(cfg))  # each checked
    monkeypatch.setattr(grid, "announce", announced.append)
    batch = [[f"dataset={d}", f"norm={n}", f"seed={s}"]
             for d in ("mnist", "cifar10") for n in ("bn", "nne") for s in range(20)]
    sweeper = grid_sweeper({"logger": {}}, lambda master_config, sweep_overrides:  # no
                           composed.append(sweep_overrides) or sweep_overrides)  # TensorBoard
    sweeper.validate_batch_is_legal(batch)
    assert {o for job in composed for o in job} == {o for job in batch for o in job}
    assert len(composed) == 22 and composed[20] == ["dataset=mnist", "norm=nne", "seed=0"]
    assert checked == composed
    sweeper.validate_batch_is_legal(batch[:2])  # a second batch (hydra.sweeper.max_batch_size)
    assert len(announced) == 1  # where to browse: said once


@pytest.mark.parametrize("error, said", [
    (ConfigError("dataset.lr=-1 is out of range"), "dataset.lr=-1 is out of range (The sweep's "
     "job dataset=mnist; nothing was run.)"),
    (ValueError("a bug"), "a bug")])
def test_a_job_that_cannot_be_composed_ends_the_sweep_and_leaves_no_folder(tmp_path, error, said):
    def compose(master_config, sweep_overrides):
        raise error

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").touch()  # the sweep's own file: no job's folder
    sweeper = grid_sweeper({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}, compose)
    with pytest.raises((SystemExit, ValueError)) as ended:
        sweeper.validate_batch_is_legal([["dataset=mnist"]])
    assert str(ended.value.code if isinstance(ended.value, SystemExit) else ended.value) == said
    assert not (tmp_path / "sweep").exists()


def test_a_datamodule_argument_its_class_refuses_ends_the_sweep_before_any_job(tmp_path,
                                                                             monkeypatch):
    """Checked where the command gives one (its class is imported only then)."""
    checked, real = [], config.arguments_refused
    monkeypatch.setattr(grid, "announce", lambda config: None)
    monkeypatch.setattr(config, "arguments_refused",
                        lambda node, key: checked.append(key) or real(node, key))
    (tmp_path / "sweep").mkdir()
    sweeper = grid_sweeper({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}},
                           lambda master_config, sweep_overrides: compose_config(*sweep_overrides))
    sweeper.validate_batch_is_legal([["dataset=mnist", "norm=bn"]])
    assert checked == []
    job = ["dataset=mnist", "+dataset.datamodule.foo=1"]
    with pytest.raises(SystemExit) as ended:
        sweeper.validate_batch_is_legal([job])
    assert ended.value.code == (
        "dataset.datamodule.foo: MNISTDataModule takes no such argument. It takes batch_size, "
        "val_size, train_size, eval_batch_size, split_seed, seed, download. (The sweep's job "
        f"{' '.join(job)}; nothing was run.)")
    assert checked == ["dataset.datamodule"] and not (tmp_path / "sweep").exists()


def test_the_grid_sweeper_puts_the_folders_plan_back_when_no_job_of_the_launch_trained(
        tmp_path, monkeypatch):
    saved = tmp_path / "multirun.yaml"

    def launch(self, arguments):
        saved.write_text("this launch's plan")  # as Hydra's sweeper saves it
        return [[SimpleNamespace(_return_value=SimpleNamespace(status=s)) for s in statuses]]

    monkeypatch.setattr(grid.BasicSweeper, "sweep", launch)  # the grid sweeper's base
    monkeypatch.setattr(grid, "check_plan", lambda config: None)
    sweeper = grid_sweeper({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    for statuses, plan in ((["refused", "refused"], "the folder's plan"),
                           (["refused", "ok"], "this launch's plan")):  # more seeds, say
        saved.write_text("the folder's plan")
        sweeper.sweep([])
        assert saved.read_text() == plan, statuses


def test_the_slurm_config_asks_for_the_signal_and_requeues(tmp_path, monkeypatch):
    """The README's `hydra/launcher=slurm ... trainer=gpu`: a GPU, USR2 2 min early, 10 requeues."""
    pytest.importorskip("submitit")
    fake_commands(monkeypatch, tmp_path / "bin", srun="exit 1")  # submitit looks for it only
    register_launchers()  # as the entry point does
    launcher = OmegaConf.to_container(compose_config(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
        "trainer=gpu").hydra.launcher, resolve=False)
    assert launcher.pop("_target_") == "hydra_plugins.bnstudy_launchers.SlurmLauncher"
    executor = plugin.submitit_executor("slurm", {**launcher, "submitit_folder": tmp_path,
                                                  "name": "job"})  # as Hydra's launcher has them
    sbatch = executor._executor._make_submission_file_text("python -m x", "uid")
    assert "#SBATCH --signal=USR2@120" in sbatch and "#SBATCH --requeue" in sbatch
    assert "#SBATCH --time=120" in sbatch and "#SBATCH --partition=gpu" in sbatch
    assert "#SBATCH --gpus-per-node=1" in sbatch
    assert executor._executor.max_num_timeout == 10


def small_sweep(tiny_data, sweep: Path, *overrides: str, submitit: bool = True):
    """3 epochs of 2 batches, through submitit's local executor or Hydra's basic launcher."""
    launcher = ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5") if submitit \
        else ()
    return run_sweep(sweep, tiny_data, *launcher, "trainer.max_epochs=3",
                     "trainer.limit_train_batches=2", "~callbacks.hallucinations", *overrides)


@pytest.mark.parametrize("slurm,overrides,said", [
    ("none", (), "hydra/launcher=slurm submits the jobs to SLURM, but this machine has none "
                 "(no srun on its PATH), so nothing was run ("),
    ("refuses", (), "SLURM refused the sweep's jobs (sbatch: error: invalid partition specified: "
                    "debg), so nothing was run ("),
    ("refuses", ("hydra.launcher.timeout_min=1",), "hydra.launcher.signal_delay_s=120 is not "
     "shorter than hydra.launcher.timeout_min=1 (60 s): SLURM would signal each job to stop as "
     "it starts"),
    # the cells' trials submitted at once, from threads (it waited forever, the paragraph lost)
    ("refuses", ("experiment=tuned", "dataset=mnist", "hydra.sweeper.n_trials=1"),
     "SLURM refused the sweep's jobs (sbatch: error: invalid partition specified: debg), so "
     "nothing was run ({sweep} removed).")])
def test_a_sweep_slurm_cannot_take_is_one_paragraph_and_leaves_no_folder(
        slurm, overrides, said, tiny_data, tmp_path, monkeypatch):
    """No SLURM, sbatch refusing the jobs, a time limit shorter than the signal's head start."""
    refusal = "echo 'sbatch: error: invalid partition specified: debg' >&2; exit 1"
    fake_commands(monkeypatch, tmp_path / "bin", only=True,
                  **({"srun": "exit 1", "sbatch": refusal} if slurm == "refuses" else {}))
    sweep = tmp_path / "sweep"
    proc = helpers.run_sweep(sweep, tiny_data, "hydra/launcher=slurm",
                             "hydra.launcher.partition=debg", *overrides)
    assert proc.returncode == 1 and said.format(sweep=sweep) in proc.stderr
    assert "Traceback" not in proc.stderr and not sweep.exists()
    assert proc.stderr.count("invalid partition") == (said.startswith("SLURM refused"))  # once


def test_a_stop_signal_as_early_as_the_time_limit_is_refused_and_one_second_later_not():
    said = plugin.signal_after_limit({"signal_delay_s": 300, "timeout_min": 5})
    assert said.startswith("hydra.launcher.signal_delay_s=300 is not shorter than "
                           "hydra.launcher.timeout_min=5 (300 s)")
    assert said.endswith("Give each job more time (hydra.launcher.timeout_min=15) or the signal "
                         "less head start (hydra.launcher.signal_delay_s=75).")
    assert plugin.signal_after_limit({"signal_delay_s": 299, "timeout_min": 5}) is None


@pytest.mark.parametrize("status,fails", [("ok", False), ("diverged", False), ("failed", True),
                                          ("interrupted", True), ("refused", True), (None, True)])
def test_a_submitit_job_without_a_result_exits_1(status, fails, monkeypatch):
    """So that SLURM says FAILED, once submitit has kept its return value (None: it raised)."""
    job = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bug")) if status is None \
        else JobReturn(status=JobStatus.COMPLETED, _return_value=RunRecord(status=status))
    # the launcher's own base class (Hydra's plugin scan may import submitit's module again)
    base = next(c for c in plugin.SlurmLauncher.__mro__ if c.__name__ == "BaseSubmititLauncher")
    monkeypatch.setattr(base, "__call__", lambda *args: job)
    at_exit = []
    monkeypatch.setattr(plugin.atexit, "register", at_exit.append)
    assert object.__new__(plugin.SlurmLauncher)(["seed=0"], "hydra.sweep.dir", 0, "id", {}) is job
    assert at_exit == ([plugin._exit_failed] if fails else [])


def test_more_requeues_than_submitits_local_launcher_makes_is_a_warning():
    note = plugin.local_requeue_limit({"max_num_timeout": 10})
    assert note.startswith("hydra.launcher.max_num_timeout=10: submitit's local launcher "
                           "restarts a job at most 5 times")
    for fine in ({"max_num_timeout": 5}, {}):
        assert plugin.local_requeue_limit(fine) is None, fine


def time_limit_at_epoch(epoch: int, marker: Path) -> list[str]:
    """Overrides that send the job submitit's time-limit signal when `epoch` starts, once."""
    return ["+callbacks.limit._target_=tests.faults.SignalAtEpoch",
            f"+callbacks.limit.epoch={epoch}", f"+callbacks.limit.marker={marker}"]


@pytest.mark.slow
def test_a_job_killed_or_past_max_num_timeout_is_named_in_the_summary_and_resumes(tiny_data,
                                                                                  tmp_path):
    """Issue #34: SIGKILL at epoch 1 (as out of memory); the other past max_num_timeout=0."""
    sweep = tmp_path / "sweep"
    kill = [o.replace(".limit", ".kill") for o in time_limit_at_epoch(1, tmp_path / "kill")]
    proc = small_sweep(tiny_data, sweep, "seed=0,1", "+hydra.launcher.max_num_timeout=0", *kill,
                       "+callbacks.kill.signal=SIGKILL",  # the first job to start epoch 1
                       *time_limit_at_epoch(2, tmp_path / "signalled"))  # the other, epoch 2
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    jobs = {read_record(job)["status"]: job for job in sweep.glob("*_mnist-*")}
    killed, interrupted = jobs["running"].name, jobs["interrupted"]
    assert len(read_record(interrupted)["history"]) == 2
    assert f"2 job(s) of {sweep} did not finish" in proc.stderr
    assert f"\n  {killed}: killed, or exited without a result (submitit local state FINISHED): " \
        "no result after 1 epoch(s), its record says running\n" in proc.stderr
    assert proc.stderr.count("without a result") == 1  # the other's result was collected
    assert f"{interrupted.name}: interrupted after 2 epoch(s) (its launcher will not requeue it " \
        "(Job not requeued because: timed-out too many times))" in proc.stderr
    assert f"resume=true hydra.sweep.dir={sweep}" in proc.stderr.splitlines()[-1]
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Its launcher will not requeue it" in log
    resumed = small_sweep(tiny_data, sweep, "seed=0,1", "resume=true", submitit=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for job in sweep.glob("*_mnist-*"):
        assert read_record(job)["status"] == "ok" and len(read_record(job)["history"]) == 3
        assert read_record(job)["error"] is None  # the time-out's note went with it
