"""`experiment=tuned` (`bnstudy.tune`): the config composes with the Optuna sweeper, a tiny
search and its seed re-runs run end to end through the entry point, and the report's C6 reads
them."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import compose_config, csv_rows, run_sweep, run_train, write_job
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

import bnstudy.run
import bnstudy.tune
from bnstudy.errors import ConfigError
from bnstudy.jobdir import JobDirLock
from bnstudy.records import SEARCH_DIR, TUNING_FILE, RunRecord, job_dirs
from bnstudy.report.cli import main as report
from bnstudy.run import RunEnded
from bnstudy.trials import Cells
from bnstudy.tune import METRIC, STUDY_LOCK, TunedSweeper, cell_seed, check_folder, choose

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_the_tuned_experiment_composes_with_the_optuna_search_and_python_gets_its_defaults():
    cfg = compose_config("experiment=tuned")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.bnstudy_tuned.TunedSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.RandomSampler"
    assert isinstance(sweeper.sampler.seed, int) and sweeper.n_trials == 32
    assert sweeper.rerun_top == 3
    assert cfg.dataset.datamodule.split_seed is None  # the re-runs' seeds draw their splits
    assert sweeper.search.adam["optim.optimizer.lr"] == "tag(log, interval(0.00001, 0.1))"
    assert set(sweeper.search) == {"sgd", "adam"}
    assert sweeper.search.sgd["optim.optimizer.lr"].startswith("tag(log, interval(")
    assert "optim.optimizer.momentum" in sweeper.search.sgd
    assert dict(sweeper.cells) == {"dataset": ["mnist", "cifar10"], "optim": ["sgd", "adam"],
                                   "norm": ["bn", "none"]}
    tuner = TunedSweeper(sweeper.cells, sweeper.search, sweeper.n_trials, sweeper.sampler)
    assert (tuner.seeds, tuner.n_jobs, tuner.rerun_top) == ([0], 1, 3)  # seed 0, its top 3
    assert TunedSweeper(sweeper.cells, sweeper.search, 2, sweeper.sampler,
                        params={"seed": "3,4"}).seeds == [3, 4]


def sweeper(*overrides: str) -> TunedSweeper:
    """The tuned experiment's sweeper as Hydra builds it, not set up (no launcher)."""
    cfg = compose_config("experiment=tuned", *overrides).hydra.sweeper
    return TunedSweeper(**{k: v for k, v in cfg.items() if not k.startswith("_")})


def first_settings(sampler, space: dict, n: int = 2) -> list[dict]:
    """The first `n` settings `sampler` proposes over `space` (Optuna sweeper syntax) to a cell."""
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    distributions, _ = create_params_from_overrides([f"{k}={v}" for k, v in space.items()])
    study = optuna.create_study(sampler=sampler, direction="maximize")
    return [study.ask(distributions).params for _ in range(n)]


def test_each_cell_searches_independently_and_repeats_itself():
    """Issue #33: each cell seeds its sampler from its name (the norms differ), a resume repeats."""
    tuner = sweeper()
    space = dict(tuner.search.sgd)
    bn, none = (first_settings(tuner.cell_sampler(f"mnist-{n}-sgd")[0], space)
                for n in ("bn", "none"))
    assert bn != none and bn[0] != none[0]
    assert first_settings(tuner.cell_sampler("mnist-bn-sgd")[0], space) == bn  # a new one
    for setting in bn + none:
        assert 1e-3 <= setting["optim.optimizer.lr"] <= 1.0
        assert 0.0 <= setting["optim.optimizer.momentum"] <= 0.95
    assert cell_seed(0, "mnist-bn-sgd") == tuner.cell_sampler("mnist-bn-sgd")[1]
    assert len({cell_seed(0, f"{d}-{n}-{o}") for d in ("mnist", "cifar10")
                for n in ("bn", "none") for o in ("sgd", "adam")}) == 8
    assert cell_seed(1, "mnist-bn-sgd") != cell_seed(0, "mnist-bn-sgd")
    # fixed values, within 31 bits: a later version's rerun draws the same settings too
    assert (cell_seed(0, "mnist-bn-sgd"), cell_seed(0, "cifar10-bn-adam")) == \
        (369815432, 1619330633)
    tpe = sweeper("hydra.sweeper.sampler._target_=optuna.samplers.TPESampler")
    assert type(tpe.cell_sampler("mnist-bn-sgd")[0]).__name__ == "TPESampler"
    unseeded, seed = sweeper("hydra.sweeper.sampler.seed=null").cell_sampler("mnist-bn-sgd")
    assert type(unseeded).__name__ == "RandomSampler" and seed is None


def test_the_top_settings_are_chosen_on_mean_val_acc_over_seeds():
    """A lucky split loses to a better mean; a failed re-run left out, a diverged one 0; a tie."""
    lucky = {"params": {"lr": 0.5}, "val_acc": [0.90, 0.60, 0.60]}
    steady = {"params": {"lr": 0.1}, "val_acc": [0.80, 0.80, None]}
    diverges = {"params": {"lr": 0.9}, "val_acc": [0.95, 0.0, 0.95]}
    assert choose([lucky, steady, diverges]) is steady
    assert choose([lucky, {**steady, "val_acc": [0.7, 0.7]}]) is lucky  # 0.70 each: the first
    assert choose([{"val_acc": [None]}, {"val_acc": []}]) == {"val_acc": [None]}
    assert choose([{"val_acc": [None]}, {"val_acc": [0.1]}]) == {"val_acc": [0.1]}  # scored
    assert choose([]) is None


def test_the_reruns_list_every_candidate_and_report_the_chosen_ones(tmp_path):
    """`_rerun_top` on records scoring lr × seed: the best mean chosen, `final_jobs` its re-runs."""
    acc = {("0.1", "0"): 0.9, ("0.1", "1"): 0.5, ("0.01", "0"): 0.75, ("0.01", "1"): None}

    class Launcher:
        def launch(self, job_overrides, initial_job_idx):
            assert job_overrides  # Hydra's launchers take no empty list
            returns = []
            for n, overrides in enumerate(job_overrides, initial_job_idx):
                given = dict(o.split("=", 1) for o in overrides)
                out = tmp_path / f"{n}_lr{given['optim.optimizer.lr']}_seed{given['seed']}"
                out.mkdir()
                key = (given["optim.optimizer.lr"], given["seed"])
                status = "ok" if acc[key] is not None else "failed"  # no score: None
                RunRecord(status, history=[{"val/acc": acc[key]}], wall_time_s=2.0).write(out)
                returns.append(JobReturn(status=JobStatus.COMPLETED, hydra_cfg=OmegaConf.create(
                    {"hydra": {"runtime": {"output_dir": str(out)}}})))
            return returns

    tuner = sweeper("hydra.sweeper.rerun_top=2")
    tuner.seeds, tuner.launcher = [0, 1], Launcher()
    cell = {"dataset": "mnist", "optim": "adam", "norm": "bn",
            "best_params": {"optim.optimizer.lr": 0.1}, "best_value": 0.9, "final_jobs": [],
            "candidates": [{"params": {"optim.optimizer.lr": lr}, "value": v, "jobs": [],
                            "val_acc": []} for lr, v in ((0.1, 0.9), (0.01, 0.7))]}
    record, started = {"cells": [cell], "time_s": {}}, time.perf_counter()
    tuner._rerun_top(record, [], tmp_path)
    assert 0 < record["time_s"]["final"] <= time.perf_counter() - started
    assert cell["best_params"] == {"optim.optimizer.lr": 0.01} and cell["best_value"] == 0.7
    assert cell["final_jobs"] == ["2_lr0.01_seed0", "3_lr0.01_seed1"]
    assert cell["candidates"][0]["jobs"] == ["0_lr0.1_seed0", "1_lr0.1_seed1"]
    assert [c["val_acc"] for c in cell["candidates"]] == [[0.9, 0.5], [0.75, None]]  # failed: None
    assert json.loads((tmp_path / TUNING_FILE).read_text()) == record
    tuner._rerun_top({"cells": [], "time_s": {}}, [], tmp_path)  # nothing to re-run: no launch


@pytest.mark.slow
def test_a_tiny_search_then_its_seed_reruns_end_to_end(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "experiment=tuned", "dataset=mnist", "optim=sgd",
                     "hydra.sweeper.n_trials=3", "hydra.sweeper.rerun_top=2", "seed=0,1",
                     "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuning = json.loads((tmp_path / TUNING_FILE).read_text())
    cells = {c["norm"]: c for c in tuning["cells"]}
    assert set(cells) == {"bn", "none"} and tuning["n_trials"] == 3
    for cell in cells.values():  # the choice among the candidates: the test without training
        assert len(cell["trials"]) == 3  # the same budget for each norm
        assert all(t["seconds"] > 0 for t in cell["trials"])  # each trial's compute
        assert len(cell["final_jobs"]) == 2  # the chosen setting's re-runs, C6's
        # named like any sweep's jobs: the tuned settings (they vary), not the shared epochs
        for name in cell["final_jobs"] + [t["job"] for t in cell["trials"]]:
            assert "-lr=" in name and "-momentum=" in name and "max_epochs" not in name
        for name in cell["final_jobs"]:
            record = json.loads((tmp_path / name / "metrics.json").read_text())
            assert record["status"] == "ok" and record["test"]["acc"] > 0
            assert record["hparams"]["norm"] == cell["norm"]
            lr = cell["best_params"]["optim.optimizer.lr"]
            assert record["hparams"]["lr"] == pytest.approx(lr)
        search = tmp_path / "search" / f"mnist-{cell['norm']}-sgd"
        assert len(list(search.glob("*/metrics.json"))) == 3  # the trials, apart from the jobs
        assert not (search / "+mean").exists()  # TensorBoard's mean runs: the study's only
        for trial in cell["trials"]:  # each trial names the job that scored it
            record = json.loads((tmp_path / trial["job"] / "metrics.json").read_text())
            assert (tmp_path / trial["job"]).parent == search
            assert record["hparams"]["lr"] == pytest.approx(trial["params"]["optim.optimizer.lr"])
            assert record["history"][-1]["val/acc"] == pytest.approx(trial["value"])
        # the Optuna sweeper's own summary stays with its search, not among the study's files
        results = OmegaConf.load(search / "optimization_results.yaml")
        assert results.best_value == pytest.approx(cell["candidates"][0]["value"])
    assert not (tmp_path / "optimization_results.yaml").exists()
    # the cells are searched together: their trials run in rounds, each cell's in its order
    started = re.findall(r"training \d+ epochs? into \S+/search/(\S+?)/(\d+)_", proc.stderr)
    assert [int(number) for _, number in started] == [0, 0, 1, 1, 2, 2], started
    assert report([str(tmp_path)]) == 0
    claims = csv_rows(tmp_path / "report" / "claims.csv")
    (c6,) = [r for r in claims if r["claim"] == "C6"]
    assert c6["verdict"] in ("holds", "does not hold", "cannot tell")
    text = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "| mnist | sgd | BN | 3 |" in text
    # the budget curve of the searches (C7): its figure, budget.csv and the claim's parts
    assert (tmp_path / "report" / "budget_mnist-sgd-bn-none.png").is_file()
    assert "![expected best against the budget](budget_mnist-sgd-bn-none.png)" in text
    trials = [r for r in csv_rows(tmp_path / "report" / "budget.csv") if r["budget"] == "trials"]
    assert [r["k"] for r in trials] == ["1", "2", "3"]
    assert sum(r["claim"] == "C7" for r in claims) == 2  # k = 1, 2


@pytest.mark.slow  # two tuned studies through the entry point
def test_a_search_proposes_its_cells_seeded_settings_and_overwrite_keeps_no_old_job(tmp_path,
                                                                                   monkeypatch):
    """At base sampler seed 1, in a sweep dir relative to the cwd (as Hydra's default one is);
    overwrite=true: the old re-runs and trials go (fewer seeds kept the others beside its own)."""
    import optuna

    monkeypatch.setattr(bnstudy.run, "train", fake_train)
    common = ("-m", "hydra.sweep.dir=first", "experiment=tuned", "dataset=mnist", "optim=adam",
              "norm=bn", "hydra.sweeper.n_trials=3", "hydra.sweeper.rerun_top=1",
              "hydra.sweeper.sampler.seed=1")
    seeded = optuna.samplers.RandomSampler(seed=cell_seed(1, "mnist-bn-adam"))
    study, proposed = tmp_path / "first", first_settings(seeded, dict(sweeper().search.adam), 3)
    for *given, jobs in (("seed=0,1,2", 3), ("seed=0", "overwrite=true", 1)):
        proc = run_train(*common, *given, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tuning = json.loads((study / TUNING_FILE).read_text())
        (cell,) = tuning["cells"]
        assert [t["params"] for t in cell["trials"]] == proposed
        assert len(job_dirs(study)) == jobs
        assert len(job_dirs(study / SEARCH_DIR / "mnist-bn-adam")) == 3
    assert tuning["seeds"] == [0]


def fake_train(cfg):
    """`bnstudy.run.train` without training: val acc from lr and seed; CIFAR-10's data missing."""
    if cfg.dataset.name == "cifar10":
        raise RunEnded("failed", "no CIFAR-10 here")
    acc = fake_train_acc(cfg.optim.optimizer.lr, cfg.seed)
    record = RunRecord("ok", run_name=cfg.run_name, wall_time_s=1.5,
                       history=[{"val/acc": 0.99}, {"val/acc": acc}])  # the final one counts
    record.write(Path(cfg.paths.output_dir))
    return record


@pytest.mark.slow
def test_a_search_and_its_reruns_through_the_entry_point_without_training(tmp_path, monkeypatch):
    """Each job a `fake_train` record; a cell whose every trial failed is said, exit 1, the other
    tuned all the same."""
    monkeypatch.setattr(bnstudy.run, "train", fake_train)
    study = ("-m", "experiment=tuned", "dataset=mnist,cifar10", "optim=adam", "norm=bn",
             f"hydra.sweep.dir={tmp_path}", f"paths.data_dir={tmp_path}")
    proc = run_train(*study, "seed=0,1", "hydra.sweeper.n_trials=3", "hydra.sweeper.rerun_top=2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    tuning = json.loads((tmp_path / TUNING_FILE).read_text())  # its header: the record's test
    mnist, cifar = tuning["cells"]
    assert (mnist["dataset"], mnist["optim"], mnist["norm"]) == ("mnist", "adam", "bn")
    assert mnist["sampler_seed"] == cell_seed(tuning["sampler_seed"], "mnist-bn-adam")
    for n, trial in enumerate(mnist["trials"]):
        lr = trial["params"]["optim.optimizer.lr"]
        assert trial["value"] == pytest.approx(fake_train_acc(lr, 0))
        assert trial["state"] == "COMPLETE" and trial["seconds"] == 1.5
        assert trial["job"].startswith(f"search/mnist-bn-adam/{n}_")
    ranked = sorted(mnist["trials"], key=lambda t: -t["value"])[:2]
    assert [(c["trial"], c["params"]) for c in mnist["candidates"]] == [
        (mnist["trials"].index(t), t["params"]) for t in ranked]
    for candidate in mnist["candidates"]:
        lr = candidate["params"]["optim.optimizer.lr"]
        assert candidate["val_acc"] == pytest.approx([fake_train_acc(lr, s) for s in (0, 1)])
        assert len(candidate["jobs"]) == 2 and "-seed1-" in candidate["jobs"][1]
    chosen = choose(mnist["candidates"])
    assert mnist["best_params"] == chosen["params"] and mnist["final_jobs"] == chosen["jobs"]
    for name in mnist["final_jobs"]:
        assert json.loads((tmp_path / name / "metrics.json").read_text())["status"] == "ok"
    assert [t["state"] for t in cifar["trials"]] == ["FAIL"] * 3
    assert cifar["best_params"] == {} and cifar["best_value"] is None
    assert cifar["candidates"] == [] and cifar["final_jobs"] == []
    said = " ".join((proc.stdout + proc.stderr).split())  # the Tuning lines: on stdout
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any(line.endswith("] Tuning mnist-bn-adam: 3 trials") for line in lines)
    assert said.index(f"Browse as jobs finish: tensorboard --logdir {tmp_path}") < \
        said.index("Tuning mnist-bn-adam")  # said once the cells are known
    best = max(mnist["trials"], key=lambda t: t["value"])
    assert any(line.endswith(
        f"] Tuned mnist-bn-adam: best val acc {100 * best['value']:.2f} % (trial "
        f"{mnist['trials'].index(best) + 1} of 3) at optim.optimizer.lr="
        f"{best['params']['optim.optimizer.lr']:.3g}") for line in lines)
    assert any("] Tuned cifar10-bn-adam: every trial failed, e.g. " in line
               for line in lines)
    assert f"1 cell(s) of {tmp_path} found no setting" in said
    assert "cifar10-bn-adam: every trial failed, e.g. " in said and "no CIFAR-10 here" in said
    assert f"then run the same command with resume=true hydra.sweep.dir={tmp_path}:" in said
    record = (tmp_path / TUNING_FILE).read_bytes()  # launched again without resume=true:
    again = run_train(*study)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"{tmp_path} already holds a tuned study ({TUNING_FILE}); nothing was changed. Add " \
        "resume=true" in " ".join(again.stderr.split())
    assert (tmp_path / TUNING_FILE).read_bytes() == record  # its search's record kept
    plan = (tmp_path / "multirun.yaml").read_bytes()  # resumed with another setting: refused
    other = run_train(*study, "seed=0,1", "hydra.sweeper.n_trials=3", "hydra.sweeper.rerun_top=2",
                      "dataset.batch_size=32", "resume=true")
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert f"{tmp_path} holds a tuned study run with other settings (dataset.batch_size: 64 -> " \
        "32; dataset.datamodule.batch_size: 64 -> 32), so nothing was run." in \
        " ".join(other.stderr.split())
    assert (tmp_path / TUNING_FILE).read_bytes() == record
    assert (tmp_path / "multirun.yaml").read_bytes() == plan
    assert not (tmp_path / ".refused").exists()
    grid = run_train("-m", "dataset=mnist", "optim=adam", "norm=bn,none",  # a grid into it:
                     f"hydra.sweep.dir={tmp_path}", f"paths.data_dir={tmp_path}")  # refused
    assert grid.returncode == 1 and f"{tmp_path} holds the jobs of another kind of sweep, " \
        "not a grid of values" in grid.stderr and "Traceback" not in grid.stderr
    for plan in (tmp_path, tmp_path / SEARCH_DIR / "mnist-bn-adam"):  # kept, its searches' too
        assert "optim.optimizer.lr" in OmegaConf.load(plan / "multirun.yaml").hydra.sweeper.params


def test_a_tuned_study_refuses_a_misspelt_cell_a_grids_folder_and_a_second_launch(tmp_path,
                                                                                  monkeypatch):
    """Before any trial (not after the other cells' searches), nothing changed; two launches of a
    study would each search and write tuning.json: the running one's folder kept (not as empty)."""
    monkeypatch.setattr(bnstudy.run, "train", fake_train)
    common = ("-m", "experiment=tuned", "optim=adam", "norm=bn", "seed=0",
              "hydra.sweeper.n_trials=2", f"paths.data_dir={tmp_path}")
    typo = run_train(*common, "dataset=mnist,mnst", f"hydra.sweep.dir={tmp_path / 'typo'}")
    assert typo.returncode == 1 and "dataset has no option mnst, so nothing was run. Did you " \
        "mean mnist?" in typo.stderr
    assert "Tuning" not in typo.stdout + typo.stderr and not (tmp_path / "typo").exists()
    grid = write_job(tmp_path / "grid", [0.5, 0.6]).parent
    for how in ((), ("resume=true",)):
        into = run_train(*common, "dataset=mnist", f"hydra.sweep.dir={grid}", *how)
        assert into.returncode == 1 and f"{grid} holds the jobs of another kind of sweep (a " \
            "grid of values), so nothing was run." in " ".join(into.stderr.split())
    assert sorted(p.name for p in grid.iterdir()) == ["0_mnist-bn-sgd-seed0"]
    (tmp_path / "multirun.yaml").write_text("{}")  # a study just started: no search/ yet
    with JobDirLock(tmp_path, STUDY_LOCK) as running:  # the first launch, still tuning
        running.acquire("the tuned study")
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
        second = run_train(*common, "dataset=mnist", "resume=true", f"hydra.sweep.dir={tmp_path}")
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    said = " ".join(second.stderr.split())
    assert second.returncode == 1 and "Traceback" not in said
    assert f"{tmp_path} is being tuned: the tuned study in process {os.getpid()} on " in said
    assert "A tuned study's searches live in one process, so nothing was run. Wait until it " \
        f"ends (or stop it), then run the same command with resume=true hydra.sweep.dir=" \
        f"{tmp_path} to go on; to tune beside it, choose another hydra.sweep.dir." in said


@pytest.mark.parametrize(("override", "said"), [
    ('hydra.sweeper.search.adam={optim.optimizer.lr: "tag(log, interval(0.0, 0.1))"}',
     "hydra.sweeper.search.adam: ValueError: The `low` value must be larger than 0 for a log "
     "distribution (low=0.0, high=0.1), so nothing was run. Each entry is a setting"),
    ('hydra.sweeper.search.adam={optim.optimizer.lr: "interval(0.1"}',
     "hydra.sweeper.search.adam: OverrideParseException: no viable alternative at input "
     "'interval(0.1', so nothing was run."),
    ("hydra.sweeper.sampler._target_=optuna.samplers.TPESamplr", "hydra.sweeper.sampler: "
     "ImportError: Error loading 'optuna.samplers.TPESamplr', so nothing was run. Optuna's "
     "samplers: CmaEsSampler, "),
    ("+hydra.sweeper.sampler.foo=1", "hydra.sweeper.sampler: TypeError: RandomSampler.__init__() "
     "got an unexpected keyword argument 'foo', so nothing was run."),
    ("hydra.sweeper.sampler.seed=abc", "hydra.sweeper.sampler.seed=abc: the base seed is a whole "
     "number or null, so nothing was run. Type e.g. hydra.sweeper.sampler.seed=0."),
    ("hydra.sweeper.cells.norm=[bn,batch]", "In 'config': Could not find 'norm/batch'. Available "
     "options in 'norm': bn group layer none, so nothing was run."),
    ("+dataset.datamodule.foo=1", "dataset.datamodule.foo: MNISTDataModule takes no such "
     "argument. It takes batch_size, ")])
def test_a_search_that_cannot_be_made_is_refused_before_any_trial(override, said, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(bnstudy.run, "train", fake_train)
    bad = run_train("-m", "experiment=tuned", "dataset=mnist", "optim=adam", "seed=0", override,
                    f"paths.data_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'study'}")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert said in bad.stderr
    assert "Tuning" not in bad.stdout + bad.stderr and not (tmp_path / "study").exists()


def fake_train_acc(lr: float, seed: int) -> float:
    return 0.9 - abs(math.log10(lr) + 2) / 10 + seed / 100


def test_the_cells_are_narrowed_on_the_command_line_and_a_searched_setting_is_not_swept(caplog):
    tuner = sweeper()
    cells, rest = tuner._cells(["dataset=mnist", "norm=bn,none", "seed=3,4",
                                "trainer.max_epochs=2"])
    assert not caplog.messages
    tuner._cells(["norm=layer"])  # one norm: tuned, but compared with nothing
    assert caplog.messages == ["Only norm=layer: each cell is tuned and re-run, but the report's "
                               "answer compares two norms at their best, e.g. norm=layer,none."]
    assert cells == [{"dataset": "mnist", "optim": o, "norm": n}
                     for o in ("sgd", "adam") for n in ("bn", "none")]
    assert rest == ["trainer.max_epochs=2"] and tuner.seeds == [3, 4]
    with pytest.raises(ConfigError) as refused:
        tuner._cells(["optim.optimizer.lr=0.1,0.2"])
    assert str(refused.value) == (
        "experiment=tuned searches its own space, so optim.optimizer.lr cannot be swept "
        "(optim.optimizer.lr=0.1,0.2). Set one value (optim.optimizer.lr=...), or change the "
        "search space in hydra.sweeper.search.")
    assert tuner._cells(["optim=sgd", "optim.optimizer.lr=0.1"])[1] == ["optim.optimizer.lr=0.1"]
    for given in ("dataset.lr=0.1", "dataset.lr=0.1,0.2"):  # not read once the lr is searched
        with pytest.raises(ConfigError) as refused:
            tuner._cells([given])
        assert str(refused.value) == (
            f"{given}: experiment=tuned searches the learning rate (optim.optimizer.lr), which "
            "then no longer reads dataset.lr. Drop it to search it, or fix it with "
            "optim.optimizer.lr=... (the rest is searched).")
    with pytest.raises(ConfigError, match="fixes all that experiment=tuned searches"):
        tuner._cells(["optim=adam", "+optim.optimizer.lr=0.1"])  # given with a +: fixed too
    with pytest.raises(ConfigError) as refused:
        tuner._cells(["optim=sgd", "optim.optimizer.lr=0.1", "optim.optimizer.momentum=0.9"])
    assert str(refused.value) == (
        "optim.optimizer.lr, optim.optimizer.momentum given a value fixes all that "
        "experiment=tuned searches for optim=sgd, so its trials would all be one run. Drop it to "
        "search it; to train one setting, run without experiment=tuned.")
    caplog.clear()
    tuner._cells(["norm=none"])  # compared with BN, then
    assert caplog.messages[-1].endswith("compares two norms at their best, e.g. norm=bn,none.")
    with pytest.raises(ConfigError) as refused:  # SGD still searches its momentum; Adam nothing
        tuner._cells(["optim=sgd,adam", "optim.optimizer.lr=0.1"])
    assert str(refused.value).startswith("optim.optimizer.lr given a value fixes all that "
                                         "experiment=tuned searches for optim=adam, so its ")
    tuner.cells = {"dataset": ["mnist"], "norm": ["bn", "none"]}  # a space without optimizers
    assert tuner._cells([])[0] == [{"dataset": "mnist", "norm": n} for n in ("bn", "none")]


@pytest.mark.parametrize("key, value", [("n_trials", "0"), ("n_trials", "-1"), ("n_trials", "abc"),
                                        ("n_jobs", "0"), ("rerun_top", "1.5")])
def test_a_sweeper_count_that_is_no_whole_number_from_1_is_one_paragraph(key, value, tmp_path):
    tuner = sweeper(f"hydra.sweeper.{key}={value}")
    tuner.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    with pytest.raises(SystemExit) as refused:
        tuner.sweep([])
    assert refused.value.code.startswith(f"hydra.sweeper.{key}={value}: the number of ")
    assert f"must be a whole number, 1 or more, e.g. hydra.sweeper.{key}=" in refused.value.code


def test_a_refused_tuning_leaves_no_empty_folder_and_an_interrupted_one_says_how_to_go_on(
        tmp_path, caplog, monkeypatch):
    tuner = sweeper("hydra.sweeper.rerun_top=0")
    tuner.config = OmegaConf.create({"hydra": {"sweep": {"dir": "outputs/multirun/x"}}})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "multirun" / "x").mkdir(parents=True)  # as Hydra makes it
    with pytest.raises(SystemExit) as refused:
        tuner.sweep([])
    assert re.match(r"hydra.sweeper.rerun_top=0: the number of each .* "
                    r"hydra.sweeper.rerun_top=3", refused.value.code)
    assert not list(tmp_path.iterdir())  # refused before anything ran: no empty outputs/
    tuner.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    (tmp_path / "sweep" / "search" / "mnist-bn-sgd").mkdir(parents=True)
    with pytest.raises(SystemExit):
        tuner.sweep([])
    assert (tmp_path / "sweep" / "search" / "mnist-bn-sgd").is_dir()  # something ran: kept
    tuner._sweep = ctrl_c
    with pytest.raises(SystemExit) as stopped:  # said here, exit 1: not said again by train
        tuner.sweep([])
    assert stopped.value.code == 1
    sweep = tmp_path / "sweep"
    assert caplog.messages == [
        f"Interrupted: {sweep} keeps its finished trials and runs. To go on (the same trials, "
        f"then the re-runs), run the same command with resume=true hydra.sweep.dir={sweep}"]
    tuner.in_flight = True  # its cells' SLURM jobs queued on, from threads: said here
    with pytest.raises(SystemExit):
        tuner.sweep([])
    assert caplog.messages[1:] == ["The study's SLURM jobs go on without it: squeue --me lists "
                                   "them, scancel <job id> stops them.", caplog.messages[0]]
    # Hydra's default folder, `${now:...}`, resolved once: not again after trials ran (its cache
    # lost), as the re-runs' launcher made a second, empty folder, which Ctrl-C would have named
    tuner.config = OmegaConf.create({"hydra": {"sweep": {"dir": f"{sweep}-${{now:%H%M%S%f}}"}}})
    first = tuner.config.hydra.sweep.dir

    def trials_ran(arguments):
        OmegaConf.clear_cache(tuner.config)
        raise KeyboardInterrupt

    tuner._sweep = trials_ran
    with pytest.raises(SystemExit):
        tuner.sweep([])
    assert tuner.config.hydra.sweep.dir == first and caplog.messages[-1].endswith(first)


def ctrl_c(*args):
    raise KeyboardInterrupt


def test_ctrl_c_on_a_tuned_study_is_said_once(tmp_path, monkeypatch):
    """In the study's own words, not the grid's too; its searches' SLURM jobs said to go on."""
    monkeypatch.setattr(bnstudy.run, "train", fake_train)
    monkeypatch.setattr(TunedSweeper, "_rerun_top", ctrl_c)
    study = ("-m", "experiment=tuned", "dataset=mnist", "optim=adam", "norm=bn",
             "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path}",
             f"paths.data_dir={tmp_path}")
    proc = run_train(*study)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in said
    assert said.count("Interrupted") == 1 and f"Interrupted: {tmp_path} keeps its finished " \
        f"trials and runs. To go on (the same trials, then the re-runs), run the same command " \
        f"with resume=true hydra.sweep.dir={tmp_path}" in said
    assert "SLURM" not in said  # no cells' jobs were in flight on a cluster

    class OnCluster(bnstudy.tune.Cells):  # the cells' trials in flight on SLURM, from threads
        def __init__(self, concurrent: bool) -> None:
            super().__init__(concurrent=True)

        def search(self, searches):
            raise KeyboardInterrupt

    monkeypatch.setattr(bnstudy.tune, "Cells", OnCluster)
    shutil.rmtree(tmp_path / SEARCH_DIR, ignore_errors=True)
    proc = run_train(*study, "resume=true")
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and said.count("The study's SLURM jobs go on without it: squeue "
                                               "--me lists them, scancel <job id> stops them.") == 1


@pytest.mark.parametrize("folder, settings, refusal", [
    ("empty", {}, None),
    ("grid", {}, "{d} holds the jobs of another kind of sweep (a grid of values), so nothing "
                 "was run. Give the tuned study a folder of its own (hydra.sweep.dir=<another "
                 "folder>)."),
    ("tuned", {}, "{d} already holds a tuned study (tuning.json); nothing was changed. Add "
                  "resume=true to go on (finished trials and runs are kept, the rest run), "
                  "overwrite=true to search and re-run again from scratch, or choose another "
                  "hydra.sweep.dir."),
    ("searching", {}, "{d} already holds a tuned study (search/); nothing was changed. Add "),
    ("tuned", {"resume": True}, None),  # the same settings: it goes on
    ("tuned", {"resume": True, "seed": 1, "lr": 0.2}, "{d} holds a tuned study run with "
     "other settings (lr: 0.1 -> 0.2; seed: 0 -> 1), so nothing was run. To go on with "
     "it, run its command with resume=true; to run this one, give it a folder of its own "
     "(hydra.sweep.dir=<another folder>)."),
    ("tuned", {"overwrite": True}, None),  # from scratch: its jobs and record removed
    ("searching", {"overwrite": True}, None),  # no tuning.json yet
    ("reran", {"overwrite": True}, None),  # no search/ left
    ("running", {"overwrite": True}, "overwrite=true, but the tuned study in {d} is running "
                                     "(1_mnist-bn-sgd-seed0, 0_mnist-bn-sgd-seed0 in use), so "
                                     "nothing was changed. Wait until it ends (or stop it), "
                                     "then run this command again."),
])
def test_a_tuned_studys_folder_is_checked_before_any_trial(folder, settings, refusal, tmp_path):
    sweep, base = tmp_path / "study", {"seed": 0, "lr": 0.1, "resume": False, "overwrite": False}
    sweep.mkdir()
    if folder == "grid":
        write_job(sweep, [0.5])
    if folder in ("tuned", "searching", "running", "reran"):
        trial = write_job(sweep / SEARCH_DIR / "mnist-bn-sgd", [0.5])
        rerun = write_job(sweep, [0.5])
        OmegaConf.save(OmegaConf.create(base), sweep / "multirun.yaml")
    if folder in ("tuned", "running", "reran"):
        (sweep / TUNING_FILE).write_text("{}")
    if folder == "reran":
        shutil.rmtree(sweep / SEARCH_DIR)
    config = OmegaConf.create({**base, **settings})
    with contextlib.ExitStack() as held:
        for job in (trial, rerun) if folder == "running" else ():
            held.enter_context(JobDirLock(job)).acquire("a trial")
        before = sorted(sweep.rglob("*"))
        if refusal is None:
            check_folder(config, sweep)
        else:
            with pytest.raises(ConfigError) as raised:
                check_folder(config, sweep)
            assert str(raised.value).startswith(refusal.format(d=sweep))
            assert sorted(sweep.rglob("*")) == before  # nothing removed
    if settings.get("overwrite") and refusal is None:  # the study's own files only
        assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml"]
    elif refusal is None:
        assert sorted(sweep.rglob("*")) == before


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_the_studys_record_holds_its_searches_then_its_reruns(failing, tmp_path, monkeypatch,
                                                               caplog):
    """`_sweep` with searches and re-runs stubbed; the cells that found no setting named."""
    caplog.set_level("INFO", logger="bnstudy")
    study = tmp_path / "study"
    study.mkdir()  # by the sweep's OutputFolder callback
    tuner = sweeper("hydra.sweeper.n_trials=4", "hydra.sweeper.rerun_top=2")
    tuner.seeds = [0, 1]  # hydra.sweeper.params.seed
    board = {"tensorboard": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}}
    tuner.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(study)}, "sweeper": {}},
                                     "logger": board})
    tuner.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(
        load_sweep_config=lambda config, overrides: compose_config(*overrides)))
    # on SLURM, its searches' trials in flight at once; on other launchers, in turn
    tuner.launcher, reran = type("SlurmLauncher", (), {})() if failing == 2 else object(), []
    names = ["mnist-bn-sgd", "mnist-none-sgd"]

    def search(cell, rest, sweep_dir, together):
        name = f"{cell['dataset']}-{cell['norm']}-{cell['optim']}"
        assert rest == ["trainer.max_epochs=2"] and sweep_dir == study
        assert isinstance(together, Cells) and together.concurrent == (failing == 2)
        return {**cell, "best_value": 0.5}, f"{name}: no trial ran" if \
            names.index(name) < failing else None

    monkeypatch.setattr(tuner, "_search", search)
    monkeypatch.setattr(tuner, "_rerun_top", lambda record, rest, sweep_dir: reran.append(
        json.loads((sweep_dir / TUNING_FILE).read_text())) or reran.append((record, rest)))
    said = tuner._sweep(["dataset=mnist", "optim=sgd", "trainer.max_epochs=2"])
    searched = reran[0]  # tuning.json as the searches left it, before the re-runs
    assert reran[1] == (searched, ["trainer.max_epochs=2"])  # the re-runs get the record
    assert {k: v for k, v in searched.items() if k != "time_s"} == {
        "sampler": "RandomSampler", "sampler_seed": tuner.sampler.seed, "n_trials": 4,
        "rerun_top": 2, "seeds": [0, 1], "metric": METRIC,
        "cells": [{"dataset": "mnist", "optim": "sgd", "norm": n, "best_value": 0.5}
                  for n in ("bn", "none")]}
    assert 0 < searched["time_s"]["search"] < 60
    plan = OmegaConf.load(study / "multirun.yaml").hydra
    assert plan.sweep.dir == str(study) and dict(plan.sweeper.params) == {
        "seed": "0,1", **tuner.search.sgd}
    assert any(m.startswith(f"Browse as jobs finish: tensorboard --logdir {study}")
               for m in caplog.messages)
    monkeypatch.setattr(tuner, "_sweep", lambda arguments: said)  # the paragraph, exit 1
    with pytest.raises(SystemExit) if failing else contextlib.nullcontext() as ended:
        tuner.sweep([])
    if not failing:
        assert said is None
        return
    assert ended.value.code == said == (
        f"{failing} cell(s) of {study} found no setting, so they have no re-runs"
        + "; the other cells were tuned and re-run" * (failing < 2) + ":\n"
        + "\n".join(f"  {name}: no trial ran" for name in names[:failing])
        + "\nFix the cause (each trial's error is above, and in its train.log if it started), "
        f"then run the same command with resume=true hydra.sweep.dir={study}: finished trials "
        "and runs are kept, the failed ones run again.")

