"""`experiment=tuned` (`bnstudy.tune`): the config composes with the Optuna sweeper, a tiny
search and its seed re-runs run end to end through the entry point, and the report's C6 reads
them."""

from __future__ import annotations

import csv
import json
import re

import pytest
from helpers import FAST, compose_config, run_sweep, run_train, write_mnist
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from bnstudy.records import TUNING_FILE, RunRecord
from bnstudy.report.cli import main as report
from bnstudy.tune import ScoringLauncher, objective

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_the_tuned_experiment_composes_with_the_optuna_search():
    cfg = compose_config("experiment=tuned")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.bnstudy_tuned.TunedSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert isinstance(sweeper.sampler.seed, int) and sweeper.n_trials >= 2
    assert set(sweeper.search) == {"sgd", "adam"}
    assert sweeper.search.sgd["optim.optimizer.lr"].startswith("tag(log, interval(")
    assert "optim.optimizer.momentum" in sweeper.search.sgd
    assert dict(sweeper.cells) == {"dataset": ["mnist", "cifar10"], "optim": ["sgd", "adam"],
                                   "norm": ["bn", "none"]}


def job(status: str, val_acc=(), state=JobStatus.COMPLETED) -> JobReturn:
    ret = JobReturn(status=state)
    ret.return_value = RunRecord(status, history=[{"val/acc": acc} for acc in val_acc])
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


def test_a_trial_that_raised_is_scored_as_failed_and_the_search_goes_on(tmp_path):
    """The launcher the Optuna search sees: a job that raised comes back scored with its reason
    (the Optuna sweeper's float() of it fails: a failed trial), not re-raised; each trial keeps
    its job directory."""
    def done(n: int, ret: JobReturn) -> JobReturn:
        ret.hydra_cfg = OmegaConf.create(
            {"hydra": {"runtime": {"output_dir": str(tmp_path / "search" / "c" / f"{n}_x")}}})
        return ret

    class Inner:
        def launch(self, job_overrides, initial_job_idx):
            return [done(0, JobReturn(status=JobStatus.FAILED,
                                      _return_value=RuntimeError("boom"))),
                    done(1, job("ok", [0.5]))]

    scoring = ScoringLauncher(Inner(), tmp_path)
    failed, ok = scoring.launch([(), ()], initial_job_idx=0)
    with pytest.raises(ValueError):
        float(failed.return_value)
    assert float(ok.return_value) == 0.5
    assert scoring.jobs == ["search/c/0_x", "search/c/1_x"]
    assert scoring.errors == ["0_x: failed: RuntimeError: boom"]


@pytest.mark.slow
def test_a_tiny_search_then_its_seed_reruns_end_to_end(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "experiment=tuned", "dataset=mnist", "optim=sgd",
                     "hydra.sweeper.n_trials=3", "seed=0,1",
                     "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuning = json.loads((tmp_path / TUNING_FILE).read_text())
    cells = {c["norm"]: c for c in tuning["cells"]}
    assert set(cells) == {"bn", "none"} and tuning["n_trials"] == 3
    for cell in cells.values():
        assert len(cell["trials"]) == 3  # the same budget for each norm
        best = max((t for t in cell["trials"] if t["value"] is not None),
                   key=lambda t: t["value"])
        assert cell["best_params"] == best["params"] and cell["best_value"] == best["value"]
        assert len(cell["final_jobs"]) == 2
        # named like any sweep's jobs: the tuned settings (they vary), not the shared epochs
        for name in cell["final_jobs"] + [t["job"] for t in cell["trials"]]:
            assert "-lr=" in name and "-momentum=" in name and "max_epochs" not in name
        for name in cell["final_jobs"]:
            record = json.loads((tmp_path / name / "metrics.json").read_text())
            assert record["status"] == "ok" and record["test"]["acc"] > 0
            assert record["hparams"]["norm"] == cell["norm"]
            assert record["hparams"]["lr"] == pytest.approx(
                best["params"]["optim.optimizer.lr"])
        search = tmp_path / "search" / f"mnist-{cell['norm']}-sgd"
        assert len(list(search.glob("*/metrics.json"))) == 3  # the trials, apart from the jobs
        for trial in cell["trials"]:  # each trial names the job that scored it
            record = json.loads((tmp_path / trial["job"] / "metrics.json").read_text())
            assert (tmp_path / trial["job"]).parent == search
            assert record["hparams"]["lr"] == pytest.approx(trial["params"]["optim.optimizer.lr"])
            assert record["history"][-1]["val/acc"] == pytest.approx(trial["value"])
        # the Optuna sweeper's own summary stays with its search, not among the study's files
        results = OmegaConf.load(search / "optimization_results.yaml")
        assert results.best_value == pytest.approx(cell["best_value"])
    assert not (tmp_path / "optimization_results.yaml").exists()
    # the cells are searched together: their trials run in rounds, each cell's in its order
    started = re.findall(r"training \d+ epochs into \S+/search/(\S+?)/(\d+)_", proc.stderr)
    assert [int(number) for _, number in started] == [0, 0, 1, 1, 2, 2], started
    # one sampler seed: every cell's search proposes the same first settings
    first = [[t["params"] for t in c["trials"]] for c in cells.values()]
    assert first[0] == first[1]
    assert report([str(tmp_path)]) == 0
    with open(tmp_path / "report" / "claims.csv") as f:
        (c6,) = [r for r in csv.DictReader(f) if r["claim"] == "C6"]
    assert c6["verdict"] in ("holds", "does not hold", "cannot tell")
    text = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "| mnist | sgd | BN | 3 |" in text


@pytest.mark.slow
def test_the_sampler_seed_makes_a_search_repeat_itself(tiny_data, tmp_path):
    """One cell, 3 trials of which 2 are TPE's (after 1 random one): the same sampler seed
    proposes the same settings and scores them the same; another seed proposes others. The
    sweep dirs are relative to where it is launched, as Hydra's default one is."""
    def search(name: str, sampler_seed: int) -> list[dict]:
        proc = run_train("-m", *FAST, f"paths.data_dir={tiny_data}", f"hydra.sweep.dir={name}",
                         "experiment=tuned", "dataset=mnist", "optim=adam", "norm=bn", "seed=0",
                         "trainer.max_epochs=1", "hydra.sweeper.n_trials=3",
                         "hydra.sweeper.sampler.n_startup_trials=1",
                         f"hydra.sweeper.sampler.seed={sampler_seed}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (cell,) = json.loads((tmp_path / name / TUNING_FILE).read_text())["cells"]
        return [(t["params"], t["value"]) for t in cell["trials"]]

    first = search("first", 0)
    assert search("again", 0) == first
    assert [p for p, _ in search("other", 1)] != [p for p, _ in first]


@pytest.mark.slow
def test_a_cell_whose_trials_all_fail_ends_the_sweep_in_a_paragraph(tmp_path):
    """CIFAR-10 missing (no download): its trials fail, the search goes on, MNIST is tuned and
    re-run, and the sweep says which cell found no setting and how to go on; exit 1."""
    data = write_mnist(tmp_path / "data")
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, data, "experiment=tuned", "dataset=mnist,cifar10", "optim=adam",
                     "norm=bn", "seed=0", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
                     "dataset.datamodule.download=false")
    assert proc.returncode == 1
    assert "1 cell(s) of" in proc.stderr and "cifar10-bn-adam: every trial failed" in proc.stderr
    assert f"resume=true hydra.sweep.dir={sweep}" in proc.stderr
    assert "Traceback" not in proc.stderr
    cells = {c["dataset"]: c for c in json.loads((sweep / TUNING_FILE).read_text())["cells"]}
    assert [t["state"] for t in cells["cifar10"]["trials"]] == ["FAIL", "FAIL"]
    assert cells["cifar10"]["best_params"] == {} and cells["cifar10"]["final_jobs"] == []
    (name,) = cells["mnist"]["final_jobs"]
    assert json.loads((sweep / name / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_sweeping_a_searched_setting_is_refused_in_one_paragraph(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "experiment=tuned", "optim.optimizer.lr=0.1,0.2")
    assert proc.returncode != 0
    assert "experiment=tuned searches its own space" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*/metrics.json"))
