"""Sweeps beyond one process (joblib, SLURM config) and the benchmark's command."""

import json
import re
import statistics
import subprocess
import sys

import pytest
from helpers import REPO, run_sweep, run_train


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_without_oversubscribing(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "hydra/launcher=parallel", "norm=bn,none",
                     "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")]
    assert sorted(r["hparams"]["norm"] for r in records) == ["bn", "none"]
    assert all(r["status"] == "ok" for r in records)
    cores = __import__("os").cpu_count()
    assert all(r["torch_threads"] == max(1, cores // 2) for r in records)


def test_slurm_launcher_config_composes():
    proc = run_train(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=120",
        "trainer=gpu",
        "--cfg",
        "hydra",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "submitit_launcher.SlurmLauncher" in proc.stdout
    assert "partition: gpu" in proc.stdout and "timeout_min: 120" in proc.stdout
    assert "gpus_per_node: 1" in proc.stdout


@pytest.mark.slow
def test_benchmark_prints_its_figures(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "--repeats", "2", "trainer.max_epochs=2",
         f"paths.data_dir={tiny_data}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"start-up: imports [\d.]+ s, config [\d.]+ s, data [\d.]+ s, "
                     r"fit set-up [\d.]+ s", out)
    assert "2 epoch(s) x 2 fit(s)" in out
    epochs = {}
    for name in ("plain PyTorch loop", "bnstudy \\(Lightning\\)"):
        found = re.search(name + r"\s+([\d.]+) s/epoch\s+\d+ samples/s\s+"
                          r"\(epochs: ([\d., ]+)\)", out)
        assert found, out
        epochs[name] = [float(v) for v in found.group(2).split(", ")]
        assert len(epochs[name]) == 4  # paired: one per epoch of each fit
        assert float(found.group(1)) == pytest.approx(statistics.median(epochs[name]), abs=1e-3)
    found = re.search(r"ratio bnstudy / plain \(median of 4 paired epochs\): ([\d.]+)  "
                      r"\(range ([\d.]+)-([\d.]+)\)", out)
    assert found, out
    ratio, low, high = map(float, found.groups())
    # from the printed (rounded) epochs: the ratio of each pair, project over plain
    ratios = [b / a for a, b in zip(*epochs.values(), strict=True)]
    assert low <= ratio <= high and ratio == pytest.approx(statistics.median(ratios), rel=0.2)
