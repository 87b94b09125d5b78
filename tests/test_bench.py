"""The benchmarks of `python -m bnstudy.bench`: per epoch (a fit against a plain loop), the
study benchmark (`study`) and its plain PyTorch process, and the profile of a job
(`profile`)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys

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
    cfg = compose_config()
    assert unlike_plain(cfg.trainer) == []
    cfg = compose_config("trainer.gradient_clip_val=1", "trainer.accumulate_grad_batches=2",
                         "trainer.limit_train_batches=1.0")
    assert unlike_plain(cfg.trainer) == ["trainer.gradient_clip_val=1",
                                         "trainer.accumulate_grad_batches=2"]


@pytest.mark.slow
def test_the_plain_process_trains_exactly_the_runs_of_the_sweep(tiny_sweep, tmp_path):
    """The plain loop, on one thread as the sweep's jobs, gives each job's recorded curves and
    test figures: the same data, split, initialisation, batches and updates."""
    from bnstudy.bench.plain import train
    from bnstudy.bench.study import plain_runs

    runs = plain_runs(tiny_sweep.dir)
    assert [run["name"] for run in runs] == [r["run_name"] for r in tiny_sweep.records.values()]
    for run, record in zip(runs, tiny_sweep.records.values(), strict=True):
        plain = train(run)
        for ours, theirs in zip(plain["history"], record["history"], strict=True):
            for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
                assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (run["name"], key)
        assert plain["test"] == pytest.approx(record["test"], abs=1e-6)

    # and it loads nothing of the framework: its time is PyTorch's
    (tmp_path / "runs.json").write_text(json.dumps(runs[:1]))
    code = ("import sys; from bnstudy.bench import plain; plain.main(sys.argv[1:]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', "
            "'pytorch_lightning', 'hydra', 'omegaconf', 'tensorboard', 'torchmetrics'}))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs.json"),
                           str(tmp_path / "out.json"), "--threads", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


@pytest.mark.slow
def test_study_benchmark_times_a_tiny_study_and_the_same_runs_alternately(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "study", "--repeats", "2", "--threads", "1",
         "dataset=mnist", "optim=sgd", "seed=0", "trainer.max_epochs=2", "hydra/launcher=basic",
         "threads=1", f"paths.data_dir={tiny_data}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    assert out.startswith("study: python -m bnstudy.train -m norm=bn,none dataset=mnist "
                          "optim=sgd seed=0 trainer.max_epochs=2 hydra/launcher=basic threads=1 "
                          f"paths.data_dir={tiny_data} {NO_HALLUCINATIONS}\n"), out
    assert "plain: the same runs in one PyTorch process, 1 torch thread(s)\n" in out
    assert re.search(r"^machine: \d+-core CPU \(.*\), (no GPU|.+)$", out, re.M), out
    rounds = re.findall(r"^round (\d) \((study then plain|plain then study)\): study ([\d.]+) s, "
                        r"plain ([\d.]+) s, ratio ([\d.]+) \(load [\d.]+\)$", out, re.M)
    assert [(n, order) for n, order, *_ in rounds] == [("1", "study then plain"),
                                                       ("2", "plain then study")]
    study, plain = [float(r[2]) for r in rounds], [float(r[3]) for r in rounds]
    for (*_, s, p, ratio) in rounds:
        assert float(ratio) == pytest.approx(float(s) / float(p), rel=0.05)  # s, p rounded
    ratios = [float(r[4]) for r in rounds]  # each printed from the unrounded seconds
    summary = re.search(r"^2 runs: study ([\d.]+) s, plain ([\d.]+) s \(medians of 2\); ratio "
                        r"study / plain ([\d.]+) \(range ([\d.]+)-([\d.]+)\)$", out, re.M)
    assert summary, out
    assert float(summary[1]) == pytest.approx(statistics.median(study), abs=0.06)
    assert float(summary[2]) == pytest.approx(statistics.median(plain), abs=0.06)
    assert float(summary[3]) == pytest.approx(statistics.median(ratios), abs=0.02)
    assert float(summary[4]) == pytest.approx(min(ratios), abs=0.02)
    assert float(summary[5]) == pytest.approx(max(ratios), abs=0.02)
    # one torch thread on both sides: the very same runs, to the last digit
    assert out.rstrip().endswith("same runs: final val acc, study vs plain, differ by at most "
                                 "0.00 points"), out


@pytest.mark.slow
def test_profile_times_every_phase_of_a_job(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "profile", "--jobs", "2", "trainer.max_epochs=2",
         "threads=1", "callbacks.hallucinations.steps=5", f"paths.data_dir={tiny_data}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^2 job\(s\) of 2 epoch\(s\) in [\d.]+ s .*imports: the entry point "
                     r"[\d.]+ s, then .* [\d.]+ s \(once per process\)$", out, re.M), out
    assert "not timed" not in out  # every phase found in this version of the libraries
    rows = {m[1].strip(): [float(v) for v in m[2].split()]
            for m in re.finditer(r"^(\s*\S.*?)\s{2,}([\d.]+(?:\s+[\d.]+){1,2})$", out, re.M)}
    from bnstudy.bench.profile import PHASES

    assert [label.strip() for *_, label, _ in PHASES] == list(rows)
    job, fit = rows["Hydra's job (all of the above but the compose)"], rows["Trainer.fit"]
    assert 0 < fit[0] < job[0] and rows["epoch end: checkpoint"][0] > 0
    assert rows["compose the job's config (Hydra's launcher)"][0] > 0  # counted in its job
    assert re.search(r"^the sweeper composes every job's config first: [\d.]+ s for the 2 "
                     r"job\(s\), before the first \(main process\)$", out, re.M), out
    assert rows["epoch: training steps and validation"][1] == pytest.approx(
        1000 * rows["epoch: training steps and validation"][0] / 2, rel=0.01)  # ms an epoch


@pytest.mark.slow
def test_the_epoch_benchmark_prints_its_figures(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "--repeats", "2", "--floor", "trainer.max_epochs=2",
         f"paths.data_dir={tiny_data}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "GPU available" not in out + proc.stderr  # the benchmark's lines, not Lightning's
    assert re.search(r"start-up: imports [\d.]+ s, config [\d.]+ s, data [\d.]+ s, "
                     r"fit set-up [\d.]+ s", out)
    assert "2 epoch(s) x 2 fit(s)" in out
    assert re.search(r"^bnstudy \(Lightning\): Classifier, TensorBoardLogger, callbacks: "
                     r"MetricsHistory, .*Hallucinations, StudyCheckpoint$", out, re.M), out
    assert "\nbare Lightning loop: BareClassifier, no logger, callbacks: none\n" in out
    for fits, short in (("bnstudy \\(Lightning\\)", "bnstudy"), ("bare Lightning loop", "bare")):
        check_pairs(out, fits, short)


def check_pairs(out: str, name: str, short: str) -> None:
    """The plain loop's and the fits' lines (each median of its 4 epochs) and the ratio line
    that follow them in the benchmark's output, the ratio the median of the pairs' ratios."""
    found = re.search(r"plain PyTorch loop\s+([\d.]+) s/epoch\s+\d+ samples/s\s+"
                      r"\(epochs: ([\d., ]+)\)\n" + name + r"\s+([\d.]+) s/epoch\s+\d+ "
                      r"samples/s\s+\(epochs: ([\d., ]+)\)\nratio " + short +
                      r" / plain \(median of 4 paired epochs\): ([\d.]+)  "
                      r"\(range ([\d.]+)-([\d.]+)\)", out)
    assert found, out
    epochs = []
    for median, listed in (found.group(1, 2), found.group(3, 4)):
        epochs.append([float(v) for v in listed.split(", ")])
        assert len(epochs[-1]) == 4  # paired: one per epoch of each fit
        assert float(median) == pytest.approx(statistics.median(epochs[-1]), abs=1e-3)
    ratio, low, high = map(float, found.group(5, 6, 7))
    # from the printed (rounded) epochs: the ratio of each pair, fit over plain
    ratios = [b / a for a, b in zip(*epochs, strict=True)]
    assert low <= ratio <= high and ratio == pytest.approx(statistics.median(ratios), rel=0.2)
