"""`python -m bnstudy.eval`: a checkpoint scored on its run's test split, the datamodule rebuilt
from the run's stored config; the same numbers as the run recorded."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import hydra.utils
import pytest
import torch
from helpers import help_words, read_record, run_module
from omegaconf import OmegaConf

from bnstudy import eval as evaluate
from bnstudy.jobdir import JobDirLock, holder
from bnstudy.rebuild import CHECKPOINT, DataCache, RunError, SavedRun, UsageError, restore
from bnstudy.records import RunRecord


def test_a_sweep_evaluates_to_its_recorded_test_metrics_and_names_the_runs_it_cannot(sweep, capsys):
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    records = {job: (job / "metrics.json").read_bytes() for job in jobs}
    missing, damaged, misfit, renamed, held = refused = [jobs.pop(2) for _ in range(5)]
    lock = JobDirLock(held)
    lock.acquire("its training")  # one writer per job directory
    (missing / "checkpoints" / "last.ckpt").unlink()
    (damaged / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    config = misfit / ".hydra" / "config.yaml"  # job 4 (bn): no norm, the same shapes, other
    config.write_text(config.read_text().replace("norm: bn\n", "norm: none\n"))  # modules
    config = renamed / ".hydra" / "config.yaml"  # a class the code no longer has
    config.write_text(config.read_text().replace("bnstudy.model.Classifier", "bnstudy.model.Gone"))
    files = {job: {p.relative_to(job) for p in job.rglob("*")} for job in jobs}
    assert evaluate.main([str(sweep)]) == 1
    out, err = capsys.readouterr()
    assert f"{missing.name}: no checkpoint ({missing}/checkpoints/last.ckpt is missing), so its " \
        "network cannot be loaded. A run keeps checkpoints/last.ckpt unless it was trained " \
        "without one (trainer.enable_checkpointing=false or ~callbacks.checkpoint) or the file " \
        "was removed; train it again to get one (the same command with overwrite=true, without " \
        "those)." in " ".join(err.split())
    assert re.search(rf"{damaged.name}/checkpoints/last.ckpt does not load \(\w+Error: [^)]+\); "
                     r"the file is damaged\. Its previous version, if any, is "
                     r"checkpoints/last\.ckpt\.prev\.", " ".join(err.split()))
    assert f"{misfit.name}/checkpoints/last.ckpt does not fit the network of its " \
        ".hydra/config.yaml (RuntimeError: " in err
    assert f"{renamed.name}: its model config does not build (Error locating target " \
        "'bnstudy.model.Gone'" in err
    assert f"{held.name}: not evaluated, it is in use: its training in process " in err
    assert not any((job / "eval.json").exists() for job in refused)
    for job in jobs:
        result = json.loads((job / "eval.json").read_text())
        recorded = read_record(job)["test"]
        assert result["test"]["acc"] == pytest.approx(recorded["acc"], abs=1e-7)
        assert result["test"]["loss"] == pytest.approx(recorded["loss"], rel=1e-6)
        assert result["checkpoint"] == str(CHECKPOINT) and result["epoch"] == 1
        assert result["global_step"] == torch.load(job / CHECKPOINT)["global_step"] > 0
        assert result["recorded_test"] == recorded and result["trainer_flags"] == {}
        assert f"{job.name} (checkpoints/last.ckpt, after epoch 2): test loss" in out
        assert f"% (as recorded) -> {job.name}/eval.json\n" in out
        assert (job / "metrics.json").read_bytes() == records[job]  # the record is as it was
        assert {p.relative_to(job) for p in job.rglob("*")} == files[job] | {Path("eval.json")}
    assert out.count("(as recorded)") == 3
    assert f"Evaluated 3 of 8 run(s); not evaluated: {', '.join(j.name for j in refused)}." in out
    lock.release()


def test_the_entry_point_scores_another_checkpoint_of_a_run_with_its_own_weights(sweep):
    job = next(sweep.glob("4_*"))
    previous = job / "checkpoints" / "last.ckpt.prev"  # the epoch before the last
    proc = run_module("bnstudy.eval", str(previous), cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((job / "eval-last.ckpt.prev.json").read_text())
    assert result["checkpoint"] == "checkpoints/last.ckpt.prev" and result["epoch"] == 0
    recorded = read_record(job)["test"]
    assert result["test"]["loss"] != pytest.approx(recorded["loss"])
    assert f"test acc {100 * result['test']['acc']:.2f} % (recorded: loss " \
        f"{recorded['loss']:.4f}, acc {100 * recorded['acc']:.2f} %) -> " \
        f"{job.name}/eval-last.ckpt.prev.json" in proc.stdout
    assert "GPU available" not in proc.stderr and "Tip" not in proc.stderr
    assert not (job / "eval.json").exists()


def test_moved_data_is_named_and_found_with_paths_data_dir(sweep, capsys, monkeypatch):
    job, other = sorted(sweep.glob("*_mnist-*"))[:2]
    for extra in {p for p in sweep.iterdir() if p.is_dir()} - {job, other}:
        shutil.rmtree(extra)  # (the others evaluated: the first test)
    for each in (job, other):
        config = each / ".hydra" / "config.yaml"
        data_dir = OmegaConf.load(config).paths.data_dir
        split = "null" if each == other else "0"  # a split of its own: the same missing files
        config.write_text(config.read_text().replace(f"data_dir: {data_dir}", "data_dir: /nowhere")
                          .replace("split_seed: 0", f"split_seed: {split}"))
    assert evaluate.main([str(sweep)]) == 1
    err = capsys.readouterr().err
    assert err.count("files not found") == 1 and "paths.data_dir=DIR" in err  # said once,
    assert f"{other.name}: its data is not there either (see above)." in err  # then shortly
    assert "download" not in err and "Traceback" not in err  # eval never downloads
    assert not (job / "eval.json").exists()
    assert evaluate.main([str(job)]) == 1  # one run: the count is said where it failed
    assert capsys.readouterr().out == f"Evaluated 0 of 1 run(s); not evaluated: {job.name}.\n"
    seen, real = [], evaluate.evaluate  # the run's lock names this command while it writes
    monkeypatch.setattr(evaluate, "evaluate",
                        lambda run, *args: seen.append(holder(run.path)["run"]) or real(run, *args))
    assert evaluate.main([str(job), f"paths.data_dir={data_dir}"]) == 0
    out = capsys.readouterr().out  # one run evaluated: its line alone, no count
    assert "(as recorded)" in out and out.count("\n") == 1
    assert seen == ["python -m bnstudy.eval"]


def test_an_unfinished_run_is_evaluated_with_the_flags_kept_and_one_refused_is_named(sweep, capsys):
    job = next(sweep.glob("0_*"))
    assert evaluate.main([str(job), "trainer.limit_test_batches=0.001"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{job.name}: not evaluated, Lightning's Trainer refused the settings "
                          "(MisconfigurationException: ") and "Traceback" not in err
    assert "The flags given: trainer.limit_test_batches=0.001; the others are the run's own." \
        in err and not (job / "eval.json").exists()
    record = read_record(job)
    (job / "metrics.json").write_text(json.dumps({**record, "status": "interrupted", "test": None}))
    assert evaluate.main([str(job), "trainer.inference_mode=false", "trainer.accelerator=cpu"]) == 0
    assert "(no test result recorded: the run is not finished (interrupted)) -> " in \
        capsys.readouterr().out
    assert json.loads((job / "eval.json").read_text())["trainer_flags"] == {
        "inference_mode": False, "accelerator": "cpu"}  # the Trainer's first flag too


def test_the_trainer_keeps_the_runs_test_settings_and_leaves_its_training_ones(sweep, monkeypatch):
    """What changes a test's numbers (precision, limits, …) is the run's own unless given."""
    job = next(sweep.glob("0_*"))
    config = job / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    own = {"accelerator": "cpu", "precision": "bf16-mixed", "limit_test_batches": 0.5,
           "inference_mode": False, "deterministic": True, "benchmark": True,
           "fast_dev_run": 2}
    cfg.trainer.update(own | {"max_epochs": 99, "limit_train_batches": 3})
    OmegaConf.save(cfg, config)
    built, instantiate = {}, hydra.utils.instantiate

    def trainer_or_other(node, *args, **kwargs):
        if not str(node.get("_target_", "")).endswith("Trainer"):
            return instantiate(node, *args, **kwargs)
        built.update(node)
        return SimpleNamespace(test=lambda *_, **__: [{"test/loss": 0.5, "test/acc": 0.9}])

    monkeypatch.setattr(hydra.utils, "instantiate", trainer_or_other)
    assert evaluate.main([str(job), "trainer.precision=32-true"]) == 0
    assert built == {"_target_": cfg.trainer._target_, **own, "precision": "32-true"}


@pytest.mark.parametrize("case, args, message", [
    ("missing", ["{tmp}/missing"], "{tmp}/missing does not exist. Pass a run's directory "
     "(outputs/runs/<time>_<name>), a sweep's directory (outputs/multirun/<date>_<time>) or, for "
     "eval, a checkpoint (<run>/checkpoints/last.ckpt).\n"),
    ("empty", ["{tmp}/empty"], "{tmp}/empty holds no runs: neither it nor any folder in it has "
     "a .hydra/config.yaml or a metrics.json. Pass the directory a run or sweep of `python -m "
     "bnstudy.train` wrote (hydra.run.dir or hydra.sweep.dir).\n"),
    ("sweeps", ["{tmp}"],  # the folder of the sweep (and of empty/)
     "{tmp} holds sweeps, not runs (1: sweep). Pass one of them, e.g. {tmp}/sweep.\n"),
    ("runs below", ["{tmp}/outputs"], "{tmp}/outputs holds no runs itself (runs/ holds 2). Pass "
     "such a folder for all its runs, e.g. {tmp}/outputs/runs, or one run, e.g. "
     "{tmp}/outputs/runs/b_run.\n"),
    ("record", ["{job}/metrics.json"], "{job}/metrics.json is not in a run's checkpoints/ "
     "folder, so its run's dataset and test split are unknown. Pass a checkpoint inside "
     "<run>/checkpoints/, or the run's directory.\n"),
    ("stray", ["{tmp}/checkpoints/last.ckpt"],  # no run's
     "{tmp}/checkpoints/last.ckpt is not in a run's checkpoints/ folder"),
    ("setting", ["{job}", "model.net.hidden_dim=3"], "model.net.hidden_dim: eval takes "
     "paths.data_dir=DIR (where the data is now) and trainer flags (e.g. "
     "trainer.accelerator=cpu); the model, data and splits are the run's own.\n"),
    ("one dot", ["{job}", "dataset.lr=0.1"],  # not taken for a trainer flag
     "dataset.lr: eval takes paths.data_dir=DIR"),
    ("no value", ["{job}", "steps"],
     "'steps' is not a setting (missing EQUAL at '<EOF>'); give KEY=VALUE.\n"),
    ("several", ["{job}", "trainer.precision=32,bf16-mixed"], "trainer.precision=32,bf16-mixed: "
     "one value a setting (several are a sweep of `python -m bnstudy.train -m`); run this "
     "command once a value, e.g. trainer.precision=32.\n"),  # (not Hydra's ChoiceSweep(...))
    ("flag", ["{job}", "trainer.max_epoch=3"],
     "trainer.max_epoch: the Trainer has no such flag; did you mean trainer.max_epochs?"),
    ("no flag near", ["{job}", "trainer.zzzzzz=1"], "trainer.zzzzzz: the Trainer has no such "
     "flag: give Lightning Trainer arguments, e.g. trainer.precision=bf16-mixed.\n"),
    ("set here", ["{job}", "trainer.devices=2"], "trainer.devices: eval sets it itself (one "
     "device; no logger, checkpoints or callbacks).\n"),
])
def test_bad_paths_and_settings_get_one_paragraph(sweep, tmp_path, case, args, message, capsys):
    (tmp_path / "empty").mkdir()
    for run in ("a_run", "b_run"):  # `outputs`, whose runs/ holds single runs
        (tmp_path / "outputs" / "runs" / run / ".hydra").mkdir(parents=True)
        (tmp_path / "outputs" / "runs" / run / ".hydra" / "config.yaml").touch()
    (tmp_path / "outputs" / "notes" / "old").mkdir(parents=True)  # a folder of no runs
    job = next(sweep.glob("0_*"))
    (tmp_path / "checkpoints").mkdir()  # a checkpoint copied out of its run
    shutil.copy(job / "checkpoints" / "last.ckpt", tmp_path / "checkpoints")
    assert evaluate.main([arg.format(tmp=tmp_path, job=job) for arg in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnstudy.eval: ") and message.format(tmp=tmp_path, job=job) in err
    assert err.count("\n") == 1
    assert not list(sweep.glob("*/eval*.json"))


def test_each_line_compares_the_test_with_the_record_or_says_why_there_is_none(tmp_path):
    def line(record, recorded=None, loss=0.5, epoch=2, when="after epoch 3") -> str:
        run = SavedRun(tmp_path / "0_run", record, OmegaConf.create({}))
        result = {"checkpoint": "checkpoints/last.ckpt", "epoch": epoch,  # Lightning's index
                  "test": {"loss": loss, "acc": 0.9}, "recorded_test": recorded}
        said = evaluate.result_line(run, result, run.path / "eval.json")
        head = f"0_run (checkpoints/last.ckpt, {when}): test loss {loss:.4f}, test acc 90.00 % ("
        assert said.startswith(head) and said.endswith(") -> 0_run/eval.json"), said
        return said[len(head):-len(") -> 0_run/eval.json")]

    unfinished, ok = "no test result recorded: the run is not finished", RunRecord("ok")
    assert line(None) == f"{unfinished} (no metrics.json)"
    assert line(RunRecord("interrupted")) == f"{unfinished} (interrupted)"
    assert line(ok) == line(RunRecord("diverged")) == "no test result recorded"
    assert line(ok, epoch=None, when="epoch unknown") == "no test result recorded"
    assert line(ok, {"loss": 0.5 + 4e-6, "acc": 0.9 + 4e-7}) == "as recorded"  # float noise
    assert line(ok, {"loss": 0.5 + 1.5e-5, "acc": 0.9}) == "recorded: loss 0.5000, acc 90.00 %"
    assert line(ok, {"loss": 0.5, "acc": 0.8}) == "recorded: loss 0.5000, acc 80.00 %"
    assert line(ok, {"loss": 0.5, "acc": 0.9 - 1e-4}) == "recorded: loss 0.5000, acc 89.99 %"  # an
    # image of 10,000 told otherwise, at the same loss
    assert line(ok, {"loss": 3.00002, "acc": 0.9}, loss=3.0) == "as recorded"  # relative


def test_a_flag_of_another_type_is_refused_before_any_run():
    for flag, said in [("limit_test_batches=x", "takes a number or null, not 'x', so nothing"),
                       ("inference_mode=maybe", "takes true or false, not 'maybe', so nothing"),
                       ("precision=bf16-mix", "Did you mean trainer.precision=bf16-mixed?")]:
        with pytest.raises(UsageError, match=re.escape(said)):  # as the training command's
            evaluate.parse_settings([f"trainer.{flag}"])
    assert evaluate.parse_settings(["trainer.limit_test_batches=0.5", "trainer.fast_dev_run=true",
                                    "trainer.precision=bf16-mixed"]) == (
        None, {"limit_test_batches": 0.5, "fast_dev_run": True, "precision": "bf16-mixed"})


def test_a_setting_given_twice_is_refused_unless_alike():
    for twice, said in [(["trainer.precision=32", "trainer.precision=bf16-mixed"],
                         "trainer.precision is given twice (32 and bf16-mixed)"),
                        (["paths.data_dir=a", "paths.data_dir=b"],
                         "paths.data_dir is given twice (a and b)")]:
        with pytest.raises(UsageError, match=re.escape(said)):
            evaluate.parse_settings(twice)
    assert evaluate.parse_settings(["paths.data_dir=a", "trainer.precision=32"] * 2) == (
        "a", {"precision": 32})


def test_runs_share_a_datamodule_only_where_they_share_the_data_and_its_split(sweep, tmp_path):
    """Seed and batch size aside; with `split_seed=null` (decisive) a run's split is its seed's."""
    base = SavedRun.open(next(sweep.glob("0_*")))

    def variant(**changes) -> SavedRun:
        cfg = base.cfg.copy()
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value)
        return SavedRun(base.path, base.record, cfg, base.launched_in)

    copied = shutil.copytree(base.data_dir(), tmp_path / "copied")
    cache, drawn = DataCache(), {"dataset.datamodule.split_seed": None}
    shared = cache.get(base, "test")
    assert cache.get(variant(seed=1, **{"dataset.batch_size": 32}), "test") is shared
    assert cache.get(variant(**{"dataset.datamodule.seed": 1,  # given, not interpolated; the
                                "dataset.datamodule.batch_size": 32,  # files: paths.data_dir's
                                "dataset.datamodule.data_dir": "/nowhere"}), "test") is shared
    apart = [cache.get(variant(**changes), "test") for changes in (
        drawn, {**drawn, "seed": 1},  # each seed draws its own split
        {"dataset.val_size": 0.2}, {"dataset.train_size": 100}, {"paths.data_dir": str(copied)})]
    assert len({id(data) for data in [shared, *apart]}) == 6
    assert not torch.equal(apart[0].val_set.y, apart[1].val_set.y)  # seed 0's split, seed 1's
    assert cache.get(variant(**drawn, **{"dataset.batch_size": 32}), "test") is apart[0]
    assert cache.get(base, "validate") is not shared  # set up for another stage
    assert not restore(base, cache, "test")[2].training  # BN with its running statistics
    with pytest.raises(RunError) as refused:  # a setting its class no longer takes: one line
        cache.get(variant(**{"dataset.datamodule.bogus": 1}), "test")
    assert str(refused.value).startswith(f"{base.name}: its dataset config does not build (Error "
                                         "in call to target 'bnstudy.data.MNISTDataModule': ")
    assert "\n" not in str(refused.value) and "keyword argument 'bogus'" in str(refused.value)


def test_a_saved_run_opens_knows_where_it_was_launched_and_reads_its_data_dir_from_there(
        tmp_path, monkeypatch):
    run = tmp_path / "0_run"
    (run / ".hydra").mkdir(parents=True)
    with pytest.raises(RunError) as refused:
        SavedRun.open(run)
    assert str(refused.value) == "0_run: no .hydra/config.yaml, so its dataset and model cannot " \
        "be rebuilt. Only directories written by `python -m bnstudy.train` can be used."
    for damaged in ("config.yaml", "hydra.yaml"):  # YAML cut short: one line, no traceback
        for name in ("config.yaml", "hydra.yaml"):
            (run / ".hydra" / name).write_text("seed: [0" if name == damaged else "seed: 0")
        with pytest.raises(RunError) as refused:
            SavedRun.open(run)
        assert re.fullmatch(r"0_run: its \.hydra/ files or metrics\.json do not read \(\w+Error: "
                            rf"[^\n]+{damaged}[^\n]+\)\.", str(refused.value)), str(refused.value)
    (run / ".hydra" / "hydra.yaml").unlink()
    opened = SavedRun.open(run)
    assert (opened.record, opened.launched_in, opened.status) == (None, None, "no metrics.json")
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {tmp_path}\n")
    assert SavedRun.open(run).launched_in == tmp_path

    def saved(data_dir: str, launched_in: Path | None = None) -> SavedRun:
        return SavedRun(run, None, OmegaConf.create({"paths": {"data_dir": data_dir}}), launched_in)

    (launched := tmp_path / "launched").mkdir()
    monkeypatch.chdir(tmp_path)
    assert saved("data", launched).data_dir() == launched / "data"  # not the current folder
    assert saved("data", tmp_path / "gone").data_dir() == tmp_path / "data"  # moved: here
    assert saved(str(tmp_path / "abs"), launched).data_dir() == tmp_path / "abs"
    assert saved("~/stored", launched).data_dir() == Path.home() / "stored"  # the run's own ~
    assert saved("data", launched).data_dir("~/moved") == Path.home() / "moved"  # given: it
    monkeypatch.delenv("BNSTUDY_NO_SUCH_VARIABLE", raising=False)
    with pytest.raises(RunError) as refused:
        saved("${oc.env:BNSTUDY_NO_SUCH_VARIABLE}").data_dir()
    assert re.fullmatch(r"0_run: its paths\.data_dir does not resolve \(.*BNSTUDY_NO_SUCH_VARIABLE"
                        r".*\); give the data's folder with paths\.data_dir=DIR\.",
                        str(refused.value), re.S)


def test_the_help_says_what_eval_takes_with_an_example_and_no_abbreviation_is_taken():
    doc = " ".join(evaluate.__doc__.split("\n\n")[0].split())
    assert help_words(evaluate.main, ["--he"]) == (
        f"usage: python -m bnstudy.eval [-h] path [KEY=VALUE ...] {doc} positional arguments: "
        "path a run's directory, a sweep's directory, or a checkpoint file KEY=VALUE "
        "paths.data_dir=DIR, trainer.FLAG=VALUE options: -h, --help show this help message and "
        "exit e.g. python -m bnstudy.eval outputs/multirun/2026-01-01_10-00-00")
