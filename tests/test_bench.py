"""The benchmarks of `python -m bnstudy.bench`: what they run and that their baselines train
the very same runs (their timings are measured by running them, not here)."""

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
from helpers import REPO, compose_config

from bnstudy.bench.study import NO_HALLUCINATIONS, study_overrides, unlike_plain


def test_study_overrides_add_to_the_default_study_replacing_its_keys():
    assert study_overrides([]) == ["hydra/launcher=parallel", "dataset=mnist,cifar10",
                                   "norm=bn,none", "optim=sgd,adam", NO_HALLUCINATIONS]
    assert study_overrides(["dataset=mnist", "hydra/launcher=basic", "seed=0,1"]) == [
        "norm=bn,none", "optim=sgd,adam", "dataset=mnist", "hydra/launcher=basic", "seed=0,1",
        NO_HALLUCINATIONS]
    assert NO_HALLUCINATIONS not in study_overrides([], hallucinations=True)
    assert study_overrides(["callbacks.hallucinations.steps=5"]).count(NO_HALLUCINATIONS) == 0


def test_the_plain_process_takes_only_studies_it_reproduces():
    assert unlike_plain(compose_config().trainer) == []
    cfg = compose_config("trainer.gradient_clip_val=1", "trainer.accumulate_grad_batches=2",
                         "trainer.limit_train_batches=1.0")
    assert unlike_plain(cfg.trainer) == ["trainer.gradient_clip_val=1",
                                         "trainer.accumulate_grad_batches=2"]


@pytest.mark.slow
def test_the_plain_processes_train_exactly_the_runs_of_the_sweep(tiny_sweep, tmp_path):
    """Split over two processes on one thread each, as the sweep's jobs, the plain loop gives
    each job's recorded curves and test figures; and it loads nothing of the framework."""
    from bnstudy.bench.study import plain_commands, plain_results, plain_runs

    runs = plain_runs(tiny_sweep.dir)
    assert [run["name"] for run in runs] == [r["run_name"] for r in tiny_sweep.records.values()]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    check = ("; print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', "
             "'pytorch_lightning', 'hydra', 'omegaconf', 'tensorboard', 'torchmetrics'}))")
    for command in plain_commands(tmp_path / "runs.json", tmp_path / "out", 2, 1):
        code = f"import sys; from bnstudy.bench import plain; plain.main(sys.argv[1:]){check}"
        proc = subprocess.run([sys.executable, "-c", code, *command[4:]], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
    plain = plain_results(tmp_path / "out", 2)
    for ours, record in zip(plain, tiny_sweep.records.values(), strict=True):
        for mine, theirs in zip(ours["history"], record["history"], strict=True):
            for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
                assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (ours["name"], key)
        assert ours["test"] == pytest.approx(record["test"], abs=1e-6)


@pytest.mark.slow
def test_study_benchmark_times_a_tiny_study_against_its_plain_processes(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "study", "--repeats", "2", "dataset=mnist",
         "optim=sgd", "seed=0", "trainer.max_epochs=2", f"paths.data_dir={tiny_data}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    out, seconds = proc.stdout, r"[\d.]+ s \(CPU [\d.]+ s\)"
    assert proc.returncode == 0, proc.stderr[-3000:] + out[-3000:]
    assert re.findall(rf"^round (\d): study {seconds}, plain 2x1 {seconds}, plain 1x\d+ {seconds} "
                      r"\(load [\d.]+; order: (.*)\)$", out, re.M) == [
        ("1", f"study > plain 2x1 > plain 1x{os.cpu_count()}"),
        ("2", f"plain 2x1 > plain 1x{os.cpu_count()} > study")], out
    assert re.search(r"^  2 plain process\(es\), 1 thread each +[\d.]+ s; CPU +[\d.]+ s   study / "
                     r"it [\d.]+ \(range [\d.]+-[\d.]+\); CPU [\d.]+ \(range [\d.]+-[\d.]+\)$",
                     out, re.M), out
    assert "(former baseline)" in out and out.rstrip().endswith(
        "differ by at most 0.00 points"), out  # the very same runs


@pytest.mark.slow
def test_profile_and_epoch_benchmarks_time_every_phase(tiny_data):
    from bnstudy.bench.profile import PHASES

    args = ["trainer.max_epochs=2", f"paths.data_dir={tiny_data}"]
    profile, epochs = (subprocess.run([sys.executable, "-m", "bnstudy.bench", *command, *args],
                                      cwd=REPO, capture_output=True, text=True, timeout=600)
                       for command in (["profile", "--jobs", "2", "threads=1"],
                                       ["--repeats", "1", "--floor"]))
    assert profile.returncode == 0 and epochs.returncode == 0, profile.stderr + epochs.stderr
    assert "not timed" not in profile.stdout  # every phase found in this version of Lightning
    console = profile.stdout + profile.stderr
    assert "ok, val acc" in console and "Browse" not in console and "Report (" not in console
    for *_, label, _ in PHASES[:-1]:
        assert re.search(rf"^{re.escape(label)}\s+[\d.]+", profile.stdout, re.M), label
    assert "GPU available" not in epochs.stdout + epochs.stderr  # the benchmark's lines only
    for short in ("bnstudy", "bare"):
        assert re.search(rf"^ratio {short} / plain \(median of 2 paired epochs\): [\d.]+",
                         epochs.stdout, re.M), epochs.stdout


@pytest.mark.parametrize("module", ["epochs", "study"])
def test_no_round_to_time_is_refused_in_one_line(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"bnstudy.bench.{module}").main(["--repeats", "0"])
    assert exit_.value.code == 2
    said = capsys.readouterr().err
    assert "error: --repeats 0: it times 1 round or more, e.g. --repeats 2" in said


@pytest.mark.parametrize("args,said", [
    (["stduy"], "'stduy' is no benchmark (study, profile) and no override KEY=VALUE"),
    (["foo=1"], "foo: no such setting."),
    (["dataset=imagenet"], "dataset has no option imagenet, so nothing was run."),
    (["paths.data_dir=nowhere", "dataset.datamodule.download=false"], "files not found"),
    (["profile", "--jobs", "0"], "--jobs 0: it profiles 1 job or more"),
    (["profile", "foo=1"], "foo: no such setting."),
    (["study", "foo=1"], "foo: no such setting."),
    (["study", "outputs"], "'outputs' is no benchmark (study, profile) and no override"),
    (["profile", "dataset=imagenet"], "dataset=imagenet: dataset has no option imagenet, so "
                                      "nothing was run. Its options: cifar10, fashion_mnist,"),
    (["study", "dataset=mnist,imagenet"], "dataset has no option imagenet, so nothing was run."),
    (["study", "logger=[csv,tensorbord]"], "logger has no option tensorbord, so nothing was run. "
                                           "Did you mean tensorboard?"),
])
def test_a_benchmark_given_a_mistake_says_it_in_one_paragraph(args, said, tmp_path, monkeypatch):
    """Each before anything is timed: argparse's usage and one line or paragraph (exit 2), no
    traceback, and no benchmark's folder left in the temporary directory."""
    from helpers import run_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a benchmark's folder goes
    proc = run_module("bnstudy.bench", *args, cwd=tmp_path)  # (profile patches timers: a process)
    assert proc.returncode == 2
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("bnstudy-*"))
