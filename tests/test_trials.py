"""A tuned study's trials (`bnstudy.trials`): each scored by its run's record, a failed one
as Optuna's failed trial; the cells' batches launched in turn here, at once on a cluster."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from bnstudy.records import RunRecord
from bnstudy.trials import Cells, ScoringLauncher, objective, score


def job(status: str, val_acc=(), state=JobStatus.COMPLETED, seconds=None) -> JobReturn:
    ret = JobReturn(status=state)
    ret.return_value = RunRecord(status, history=[{"val/acc": acc} for acc in val_acc],
                                 wall_time_s=seconds)
    return ret


def test_a_trial_scores_its_final_val_acc_and_a_diverged_one_zero():
    """Issue #36: the final epoch's accuracy, not the best (a history that drops at the end)."""
    raised = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("out of memory"))
    assert objective(job("ok", [0.5, 0.75])) == 0.75
    assert objective(job("ok", [0.5, 0.9, 0.6])) == 0.6
    assert objective(job("diverged", [0.9])) == 0.0
    for failed in (objective(job("failed")), objective(raised)):
        with pytest.raises(ValueError):
            float(failed)  # not a number: Optuna records the trial as failed
    assert "RuntimeError: out of memory" in objective(raised)  # the reason, in Optuna's warning
    assert objective(JobReturn(status=JobStatus.COMPLETED)) == "no result (?: no history)"
    assert score(RunRecord("failed", history=[{"val/acc": 0.5}], error="boom")) == \
        "no result (failed: boom)"  # what it reached before failing is no result
    assert score(RunRecord("ok")) == "no result (ok: no history)"


def test_a_trial_that_raised_is_scored_as_failed_and_the_search_goes_on(tmp_path):
    """The launcher Optuna sees: a job that raised comes back scored with its reason (float() of
    it fails: a failed trial), not re-raised; each trial keeps its job directory."""
    def done(n: int, ret: JobReturn) -> JobReturn:
        ret.hydra_cfg = OmegaConf.create(
            {"hydra": {"runtime": {"output_dir": str(tmp_path / "search" / "c" / f"{n}_x")}}})
        return ret

    class Inner:
        def launch(self, job_overrides, initial_job_idx):
            return [done(0, JobReturn(status=JobStatus.FAILED,
                                      _return_value=RuntimeError("boom"))),
                    done(1, job("ok", [0.5], seconds=12.5)),
                    JobReturn(status=JobStatus.FAILED, _return_value=OSError("no job dir"))]

    scoring = ScoringLauncher(Inner(), tmp_path)
    failed, ok, early = scoring.launch([(), (), ()], initial_job_idx=0)
    with pytest.raises(ValueError):
        float(failed.return_value)
    assert float(ok.return_value) == 0.5
    assert scoring.jobs == ["search/c/0_x", "search/c/1_x", None]  # failed before its job dir
    assert scoring.errors == ["0_x: failed: RuntimeError: boom", "?: failed: OSError: no job dir"]
    assert scoring.seconds == [None, 12.5, None]  # each trial's compute, for the budget curve


def test_the_cells_batches_run_in_turn_here_and_at_once_on_a_cluster():
    """In this process each batch runs in the main thread (signals, Ctrl-C); on a cluster the
    cells' batches are in flight together. A launch's error reaches its search and the sweep."""
    def search(concurrent: bool, launch) -> list:
        together, real = Cells(concurrent), SimpleNamespace(launch=launch)
        return together.search([lambda n=n: together.launcher(real).launch([n], initial_job_idx=n)
                                for n in (1, 2)])

    def in_turn(job_overrides, initial_job_idx):
        assert threading.current_thread() is threading.main_thread()
        return job_overrides * initial_job_idx

    assert search(False, in_turn) == [[1], [2, 2]]
    barrier = threading.Barrier(2, timeout=20)

    def at_once(job_overrides, initial_job_idx):
        barrier.wait()  # each cell's batch waits for the other's
        return job_overrides

    assert search(True, at_once) == [[1], [2]]

    def fails(job_overrides, initial_job_idx):
        raise OSError("no launcher")

    with pytest.raises(OSError, match="no launcher"):
        search(False, fails)

    def refuses(job_overrides, initial_job_idx):  # a launcher's refusal (SLURM's) exits
        raise SystemExit("SLURM refused the sweep's jobs")

    ended = []

    def sweep():
        with pytest.raises(SystemExit, match="SLURM refused") as refused:
            search(True, refuses)
        ended.append(refused.value)

    thread = threading.Thread(target=sweep, daemon=True)  # (a search waiting forever: failed)
    thread.start()
    thread.join(timeout=20)
    assert ended, "the searches still wait for jobs a refused launch never submitted"
