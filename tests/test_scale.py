"""Sweeps beyond one process (joblib, SLURM config) and the benchmark's command."""

import json
import re
import subprocess
import sys

from tests.conftest import FAST, REPO, run_train


def test_parallel_launcher_runs_jobs_without_oversubscribing(tiny_data, tmp_path):
    proc = run_train(
        "-m",
        "hydra/launcher=parallel",
        "norm=bn,none",
        *FAST,
        f"paths.data_dir={tiny_data}",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path}",
    )
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


def test_benchmark_prints_its_figures(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "--repeats", "1", f"paths.data_dir={tiny_data}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"start-up: imports [\d.]+ s, config [\d.]+ s, data [\d.]+ s", out)
    for name in ("plain PyTorch loop", "bnstudy \\(Lightning\\)"):
        assert re.search(name + r"\s+[\d.]+ s/epoch\s+\d+ samples/s", out), out
    ratio = float(re.search(r"ratio bnstudy / plain \(median\): ([\d.]+)", out).group(1))
    assert ratio > 0
