"""`python -m bnstudy.report`: on a real 4-job sweep (tiny MNIST, 2 epochs), run once per module."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, run_train
from PIL import Image

from bnstudy import report

TARGET = 0.5  # reached in 1–2 epochs on the tiny data, so the column is filled


@pytest.fixture(scope="module")
def sweep(tiny_data, tmp_path_factory) -> Path:
    """A finished multirun: mnist × {bn, none} × sgd × seeds {0, 1}, 2 epochs each."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    done = run_train("-m", "dataset=mnist", "norm=bn,none", "optim=sgd", "seed=0,1",
                     f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.fixture
def copy_of(sweep, tmp_path):
    """A fresh copy of the sweep, for tests that add, break or remove jobs."""
    def make() -> Path:
        return Path(shutil.copytree(sweep, tmp_path / "sweep", ignore=shutil.ignore_patterns(
            "report", "checkpoints")))
    return make


def run_report(sweep_dir: Path) -> Path:
    assert report.main([str(sweep_dir), "--target-acc", f"mnist={TARGET}"]) == 0
    return sweep_dir / "report"


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as f:
        return {row["norm"]: row for row in csv.DictReader(f)}


def records(sweep_dir: Path, norm: str) -> list[dict]:
    """The ok records of one norm, straight from the jobs' metrics.json."""
    found = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    return [r for r in found if r["hparams"]["norm"] == norm and r["status"] == "ok"]


def cell(row: dict, key: str) -> float:
    return math.nan if row[key] == "" else float(row[key])


@pytest.fixture(scope="module")
def built(sweep) -> Path:
    """The report of the untouched sweep."""
    return run_report(sweep)


def test_summary_numbers_equal_those_recomputed_from_metrics_json(sweep, built):
    rows = read_summary(built)
    assert set(rows) == {"bn", "none"}
    for norm, row in rows.items():
        recs = records(sweep, norm)
        final = [r["history"][-1]["val/acc"] for r in recs]
        expected = {
            "final_val_acc_mean": np.mean(final),
            "final_val_acc_std": np.std(final, ddof=1),
            "best_val_acc_mean": np.mean([max(h["val/acc"] for h in r["history"]) for r in recs]),
            "final_val_loss_mean": np.mean([r["history"][-1]["val/loss"] for r in recs]),
            "test_acc_mean": np.mean([r["test"]["acc"] for r in recs]),
            "test_acc_std": np.std([r["test"]["acc"] for r in recs], ddof=1),
            "first_epoch_train_loss_mean": np.mean([r["history"][0]["train/loss"] for r in recs]),
            "wall_time_s_mean": np.mean([r["wall_time_s"] for r in recs]),
        }
        for key, value in expected.items():
            assert cell(row, key) == pytest.approx(value, abs=2e-6), key
        reached = [next((h["epoch"] + 1 for h in r["history"] if h["val/acc"] >= TARGET), None)
                   for r in recs]
        reached = [e for e in reached if e is not None]
        assert int(row["n_reached_target"]) == len(reached)
        if reached:
            assert cell(row, "epochs_to_target_mean") == pytest.approx(np.mean(reached))
        assert cell(row, "target_val_acc") == TARGET


def test_groups_by_everything_but_the_seed(built):
    rows = read_summary(built)
    for row in rows.values():
        assert (row["dataset"], row["optim"]) == ("mnist", "sgd")
        assert int(row["n_seeds"]) == 2
        assert [row[f"n_{c}"] for c in ("diverged", "failed", "unfinished", "missing")] == ["0"] * 4
    assert "seed" not in next(iter(rows.values()))


def test_report_md_holds_table_verdict_and_figures(built):
    text = (built / "report.md").read_text()
    assert "| mnist | sgd | bn | 2 |" in text and "| mnist | sgd | none | 2 |" in text
    assert "**Verdict.** BatchNorm " in text
    assert "](curves_mnist_sgd.png)" in text
    assert "Every job finished ok." in text


def test_figures_decode_and_overlay_both_norms(sweep, built):
    with Image.open(built / "curves_mnist_sgd.png") as image:
        assert image.size[0] > 500 and image.size[1] > 400
    groups = report.group_runs(report.load_runs(sweep))
    (ckey, by_norm), = report.comparisons(groups).items()
    fig = report.curves_figure(report.describe(ckey), by_norm)
    assert "Training Curves (mnist, sgd)" in fig._suptitle.get_text()
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["No BatchNorm (2 seeds)", "BatchNorm (2 seeds)"]
        assert len(ax.collections) == 2  # the ± std bands


def test_figures_are_logged_to_tensorboard(built):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(built), size_guidance={"images": 0}).Reload()
    assert "curves/mnist_sgd" in events.Tags()["images"]


def test_images_side_by_side_or_skipped_with_a_note(copy_of):
    sweep_dir = copy_of()
    for job in sweep_dir.glob("*_mnist-*"):
        (job / "images").mkdir(exist_ok=True)
        Image.new("RGB", (40, 40), "white").save(job / "images" / "weights_final.png")
        (job / "images" / "hallucinations_final.png").unlink(missing_ok=True)
    out = run_report(sweep_dir)
    with Image.open(out / "weights_mnist_sgd.png") as image:
        image.load()
    text = (out / "report.md").read_text()
    assert "](weights_mnist_sgd.png)" in text
    assert "Final hallucinations figure skipped" in text
    assert not (out / "hallucinations_mnist_sgd.png").exists()
    (ckey, by_norm), = report.comparisons(report.group_runs(report.load_runs(sweep_dir))).items()
    figure = report.comparison(ckey, by_norm, None)[1]["weights_mnist_sgd"]
    assert [ax.get_title() for ax in figure.axes] == ["No BatchNorm (seed 0)", "BatchNorm (seed 0)"]

    for job in sweep_dir.glob("*_mnist-bn-*"):
        (job / "images" / "weights_final.png").unlink()
    out = run_report(sweep_dir)
    assert "no ok job has images/weights_final.png on the BatchNorm side" in (
        out / "report.md").read_text()
    assert not (out / "weights_mnist_sgd.png").exists()  # the earlier report's is gone


def test_failed_unfinished_and_never_started_jobs_are_reported(copy_of):
    sweep_dir = copy_of()
    failed = shutil.copytree(sweep_dir / "0_mnist-bn-sgd-seed0", sweep_dir / "4_mnist-bn-sgd-seed2")
    record = json.loads((failed / "metrics.json").read_text())
    record["hparams"]["seed"] = 2
    record.update(status="failed", error="RuntimeError: boom | bang", test=None)
    (failed / "metrics.json").write_text(json.dumps(record))
    unfinished = shutil.copytree(sweep_dir / "0_mnist-bn-sgd-seed0", sweep_dir / "5_unfinished")
    (unfinished / "metrics.json").unlink()  # grouped from its .hydra/config.yaml (bn, seed 0)
    shutil.rmtree(sweep_dir / "3_mnist-none-sgd-seed1")

    out = run_report(sweep_dir)
    rows = read_summary(out)
    assert (rows["bn"]["n_seeds"], rows["bn"]["n_failed"], rows["bn"]["n_unfinished"]) == (
        "2", "1", "1")
    assert (rows["none"]["n_seeds"], rows["none"]["n_missing"]) == ("1", "2")  # seeds 1 and 2
    text = (out / "report.md").read_text()
    assert "| `4_mnist-bn-sgd-seed2` | failed | RuntimeError: boom \\| bang |" in text
    assert "| `5_unfinished` | no metrics.json |" in text
    assert "| norm=none seed=1 | never started" in text  # the swept overrides of the job
    assert "With one seed on a side, no significance can be claimed." in text


@pytest.mark.parametrize("better", ["bn", "none"])
def test_verdict_flips_when_the_numbers_flip(better):
    high, low = [0.95, 0.96, 0.955], [0.90, 0.91, 0.905]
    bn, none = (high, low) if better == "bn" else (low, high)
    text = report.verdict(bn, none, bn_loss0=[0.4, 0.5], none_loss0=[1.0, 1.1])
    assert ("BatchNorm wins" in text) == (better == "bn")
    assert ("BatchNorm loses" in text) == (better == "none")
    assert ("+5.00 percentage points" if better == "bn" else "-5.00 percentage points") in text
    assert "larger than the seed-to-seed spread" in text
    assert "first-epoch training loss is lower (0.450 vs 1.050" in text
    swapped = report.verdict(bn, none, bn_loss0=[1.0, 1.1], none_loss0=[0.4, 0.5])
    assert "first-epoch training loss is higher (1.050 vs 0.450" in swapped


def test_verdict_within_the_spread_and_with_one_seed():
    noisy = report.verdict([0.90, 0.99, 0.93], [0.92, 0.95, 0.91], [1.0], [1.0])
    assert "BatchNorm wins" in noisy and "within the seed-to-seed spread" in noisy
    assert "not significant" in noisy
    flat = report.verdict([1.0, 1.0], [1.0, 1.0], [0.5], [0.5])
    assert "ties" in flat and "no spread" in flat and "the same" in flat
    single = report.verdict([0.95], [0.90], [0.5], [1.0])
    assert "BatchNorm wins" in single and "no significance can be claimed" in single
    assert "Welch" not in single
    assert "No verdict" in report.verdict([], [0.9], [], [1.0])


def test_cli_on_a_missing_or_empty_dir_exits_2_with_a_clear_message(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "bnstudy.report", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "hydra.sweep.dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert report.main([str(tmp_path)]) == 2
    assert "holds no jobs" in capsys.readouterr().err


def test_another_varying_hparam_splits_groups_and_names_figures():
    def run(norm, seed, lr):
        hparams = {"dataset": "mnist", "norm": norm, "optim": "sgd", "seed": seed, "lr": lr,
                   "batch_size": 64}
        return report.Run(job=f"{norm}{seed}{lr}", path=Path("."), status="ok", hparams=hparams,
                          history=[], test_acc=None, wall_time_s=None, error=None)

    runs = [run(n, s, lr) for n in ("bn", "none") for s in (0, 1) for lr in (0.1, 0.01)]
    assert report.group_keys(runs) == ["dataset", "optim", "norm", "lr"]
    groups = report.group_runs(runs)
    assert len(groups) == 4 and all(len(g) == 2 for g in groups.values())
    assert [report.slug(k) for k in report.comparisons(groups)] == [
        "mnist_sgd_lr0.1", "mnist_sgd_lr0.01"]


def test_layernorm_gets_its_own_label_and_colour_in_the_curves():
    def run(norm):
        history = [{"epoch": e, "train/loss": 1.0 / (e + 1), "val/loss": 1.0, "train/acc": 0.5,
                    "val/acc": 0.5 + e / 10} for e in range(3)]
        return report.Run(job=norm, path=Path("."), status="ok", hparams={"norm": norm},
                          history=history, test_acc=None, wall_time_s=None, error=None)

    fig = report.curves_figure("mnist, sgd", {n: [run(n)] for n in ("layer", "bn", "none")})
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == [
        "No BatchNorm (1 seed)", "BatchNorm (1 seed)", "LayerNorm (1 seed)"]
    assert len({line.get_color() for line in lines}) == 3
