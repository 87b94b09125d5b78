"""`python -m bnstudy.report`: on hand-made sweeps (fast), and on a real 4-job sweep (tiny
MNIST, 2 epochs, run once per module; marked slow)."""

from __future__ import annotations

import csv
import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, read_record, run_train, write_job
from matplotlib.colors import same_color
from PIL import Image

from bnstudy.report import main
from bnstudy.report.figures import PROBE_FIGURES, curves_figure, norm_color
from bnstudy.report.runs import (
    PROBE_SERIES,
    comparisons,
    describe,
    group_keys,
    group_runs,
    hparams_from_config,
    load_runs,
    norm_label,
    slug,
)
from bnstudy.report.stats import power_of, verdict
from bnstudy.report.write import comparison

TARGET = 0.5  # reached in 1–2 epochs on the tiny data, so the column is filled


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as f:
        return {row["norm"]: row for row in csv.DictReader(f)}


def records(sweep_dir: Path, norm: str) -> list[dict]:
    """The ok records of one norm, straight from the jobs' metrics.json, in seed order."""
    found = [read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")]
    return sorted((r for r in found if r["hparams"]["norm"] == norm and r["status"] == "ok"),
                  key=lambda r: r["hparams"]["seed"])


def cell(row: dict, key: str) -> float:
    return math.nan if row[key] == "" else float(row[key])


def check_summary(row: dict, recs: list[dict], target: float) -> None:
    """The summary.csv row holds the means and sample stds (ddof=1) of the records' numbers."""
    final = [r["history"][-1]["val/acc"] for r in recs]
    expected = {
        "final_val_acc_mean": np.mean(final),
        "final_val_acc_std": np.std(final, ddof=1),
        "best_val_acc_mean": np.mean([max(h["val/acc"] for h in r["history"]) for r in recs]),
        "best_val_acc_std": np.std([max(h["val/acc"] for h in r["history"]) for r in recs],
                                   ddof=1),
        "final_val_loss_mean": np.mean([r["history"][-1]["val/loss"] for r in recs]),
        "test_acc_mean": np.mean([r["test"]["acc"] for r in recs]),
        "test_acc_std": np.std([r["test"]["acc"] for r in recs], ddof=1),
        "first_epoch_train_loss_mean": np.mean([r["history"][0]["train/loss"] for r in recs]),
        "wall_time_s_mean": np.mean([r["wall_time_s"] for r in recs]),
    }
    for key, value in expected.items():
        assert cell(row, key) == pytest.approx(value, abs=2e-6), key
    reached = [next((h["epoch"] + 1 for h in r["history"] if h["val/acc"] >= target), None)
               for r in recs]
    reached = [e for e in reached if e is not None]
    assert int(row["n_seeds"]) == len(recs)
    assert int(row["n_reached_target"]) == len(reached)
    if reached:
        assert cell(row, "epochs_to_target_mean") == pytest.approx(np.mean(reached))
    assert cell(row, "target_val_acc") == target


def the_comparison(sweep_dir: Path) -> tuple[tuple, dict]:
    """The sweep's one comparison: its key and its runs by norm."""
    ((ckey, by_norm),) = comparisons(group_runs(load_runs(sweep_dir))).items()
    return ckey, by_norm


# --- hand-made sweeps ---------------------------------------------------------------------

# Validation accuracy per epoch, by seed: BN clearly ahead, the seeds spread, and none seed 2
# peaks before its last epoch (best ≠ final).
BN = {0: [0.80, 0.90, 0.95], 1: [0.78, 0.88, 0.93], 2: [0.82, 0.91, 0.96]}
NONE = {0: [0.60, 0.75, 0.85], 1: [0.55, 0.72, 0.83], 2: [0.65, 0.90, 0.88]}
HAND_TARGET = 0.85


def write_sweep(sweep_dir: Path, bn: dict, none: dict) -> Path:
    """Both norms' ok seeds, as mnist × sgd jobs."""
    for norm, by_seed in (("bn", bn), ("none", none)):
        for seed, accs in by_seed.items():
            write_job(sweep_dir, accs, norm=norm, seed=seed)
    return sweep_dir


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory) -> Path:
    """BN and NONE, plus a diverged BN seed 3, a failed and an unfinished (still running) no-BN
    job at seeds 3 and 4, whose numbers would drag the means down if pooled; reported once."""
    sweep_dir = write_sweep(tmp_path_factory.mktemp("hand_made") / "multirun", BN, NONE)
    write_job(sweep_dir, [0.70, 0.10], "diverged", norm="bn", seed=3)
    write_job(sweep_dir, [0.20], "failed", "RuntimeError: boom | bang\nmore", norm="none", seed=3)
    write_job(sweep_dir, [0.50], "running", norm="none", seed=4)
    assert main([str(sweep_dir), "--target-acc", f"mnist={HAND_TARGET}"]) == 0
    return sweep_dir


def test_summary_csv_is_recomputed_from_the_records(hand_made):
    rows = read_summary(hand_made / "report")
    assert set(rows) == {"bn", "none"}
    for norm, row in rows.items():
        recs = records(hand_made, norm)
        assert [r["hparams"]["seed"] for r in recs] == [0, 1, 2]
        check_summary(row, recs, HAND_TARGET)
    assert cell(rows["none"], "epochs_to_target_mean") == 2.5  # seed 1 never reaches 0.85
    assert rows["none"]["n_reached_target"] == "2"


def test_diverged_failed_and_unfinished_runs_are_counted_not_pooled(hand_made):
    rows = read_summary(hand_made / "report")
    counts = ("n_seeds", "n_diverged", "n_failed", "n_unfinished", "n_missing")
    assert [rows["bn"][c] for c in counts] == ["3", "1", "0", "0", "1"]  # no seed 4
    assert [rows["none"][c] for c in counts] == ["3", "0", "1", "1", "0"]
    assert cell(rows["bn"], "final_val_acc_mean") == pytest.approx(np.mean([0.95, 0.93, 0.96]))
    assert cell(rows["none"], "final_val_acc_mean") == pytest.approx(np.mean([0.85, 0.83, 0.88]))
    text = (hand_made / "report" / "report.md").read_text()
    assert "9 job directories: 6 ok, 1 diverged, 1 failed, 1 unfinished." in text
    assert "| `6_mnist-bn-sgd-seed3` | diverged |  |" in text
    assert "| `7_mnist-none-sgd-seed3` | failed | RuntimeError: boom \\| bang |" in text
    assert "| `8_mnist-none-sgd-seed4` | running |  |" in text
    assert "mean over 3 seeds each" in text


@pytest.mark.parametrize("case", ["bn", "none", "tie", "overlap"])
def test_the_verdict_names_the_winner_and_weighs_the_spread(tmp_path, case):
    finals = [0.85, 0.90, 0.95]
    bn, none = {  # validation accuracy per epoch, by seed
        "bn": (BN, NONE),
        "none": (NONE, BN),
        "tie": ({s: [0.5, f] for s, f in enumerate(finals)},) * 2,
        "overlap": ({0: [0.6, 0.91], 1: [0.7, 0.96], 2: [0.8, 0.86]},
                   {0: [0.9, 0.88], 1: [0.8, 0.93], 2: [0.7, 0.89]}),
    }[case]
    ckey, by_norm = the_comparison(write_sweep(tmp_path, bn, none))
    text = comparison(ckey, by_norm, None)[0]
    bn_acc, none_acc = ([accs[-1] for accs in side.values()] for side in (bn, none))
    bn_loss0, none_loss0 = ([1 - accs[0] for accs in side.values()] for side in (bn, none))
    diff = 100 * (np.mean(bn_acc) - np.mean(none_acc))
    result = {"bn": "wins", "none": "loses", "tie": "ties", "overlap": "wins"}[case]
    assert (f"**Verdict.** BatchNorm {result} on final validation accuracy: "
            f"{np.mean(bn_acc):.2%} vs {np.mean(none_acc):.2%} without it "
            f"({diff:+.2f} percentage points, mean over 3 seeds each).") in text
    if case in ("bn", "none"):
        assert "The difference is larger than the seed-to-seed spread" in text
    else:
        assert "within the seed-to-seed spread" in text and "not significant" in text
    start = {"bn": "lower", "none": "higher", "tie": "the same", "overlap": "higher"}[case]
    assert (f"Its first-epoch training loss is {start} "
            f"({np.mean(bn_loss0):.3f} vs {np.mean(none_loss0):.3f} without BatchNorm).") in text


def test_curves_draw_each_metric_of_the_ok_records_per_panel(hand_made):
    ckey, by_norm = the_comparison(hand_made)
    fig = curves_figure(describe(ckey), by_norm)
    metrics = {"Training loss": "train/loss", "Validation loss": "val/loss",
               "Training accuracy": "train/acc", "Validation accuracy": "val/acc"}
    assert [ax.get_title() for ax in fig.axes] == list(metrics)
    for ax in fig.axes:
        lines, bands = ax.get_lines(), ax.collections
        assert [line.get_label() for line in lines] == [
            "No BatchNorm (3 seeds)", "BatchNorm (3 seeds)"]
        for norm, line, band in zip(("none", "bn"), lines, bands, strict=True):
            values = np.array([[h[metrics[ax.get_title()]] for h in r["history"]]
                               for r in records(hand_made, norm)])  # seed × epoch
            mean, std = values.mean(0), values.std(0, ddof=1)
            assert list(line.get_xdata()) == [1, 2, 3]
            assert np.allclose(line.get_ydata(), mean), (ax.get_title(), norm)
            assert same_color(line.get_color(), {"bn": "tab:blue", "none": "tab:orange"}[norm])
            corners = band.get_paths()[0].vertices
            for epoch, low, high in zip((1, 2, 3), mean - std, mean + std, strict=True):
                ys = corners[np.isclose(corners[:, 0], epoch), 1]
                assert (ys.min(), ys.max()) == (pytest.approx(low), pytest.approx(high))


def test_norm_labels_colours_and_order_come_from_the_registry(tmp_path):
    for norm in ("layer", "bn", "none", "weird"):
        write_job(tmp_path, [0.5, 0.6, 0.7], norm=norm)
    _, by_norm = the_comparison(tmp_path)
    lines = curves_figure("mnist, sgd", by_norm).axes[0].get_lines()
    assert [line.get_label() for line in lines] == [
        "No BatchNorm (1 seed)", "BatchNorm (1 seed)", "LayerNorm (1 seed)", "weird (1 seed)"]
    assert [same_color(line.get_color(), c) for line, c in zip(
        lines[:3], ("tab:orange", "tab:blue", "tab:green"), strict=True)] == [True] * 3
    assert (norm_label("weird"), norm_color("weird")) == ("weird", None)  # matplotlib's cycle


def test_every_recorded_probe_series_has_a_figure():
    assert set(PROBE_FIGURES) == set(PROBE_SERIES)


def test_another_varying_hparam_splits_groups_and_names_figures(tmp_path):
    for norm in ("bn", "none"):
        for seed in (0, 1):
            for lr in (0.1, 0.01):
                write_job(tmp_path, [0.9], norm=norm, seed=seed, lr=lr)
    runs = load_runs(tmp_path)
    assert group_keys(runs) == ["dataset", "optim", "norm", "lr"]
    groups = group_runs(runs)
    assert len(groups) == 4 and all(len(g) == 2 for g in groups.values())
    assert [slug(k) for k in comparisons(groups)] == ["mnist_sgd_lr0.1", "mnist_sgd_lr0.01"]


@pytest.mark.parametrize("better", ["bn", "none"])
def test_verdict_flips_when_the_numbers_flip(better):
    high, low = [0.95, 0.96, 0.955], [0.90, 0.91, 0.905]
    bn, none = (high, low) if better == "bn" else (low, high)
    text = verdict(bn, none, bn_loss0=[0.4, 0.5], none_loss0=[1.0, 1.1])
    assert ("BatchNorm wins" in text) == (better == "bn")
    assert ("BatchNorm loses" in text) == (better == "none")
    assert ("+5.00 percentage points" if better == "bn" else "-5.00 percentage points") in text
    assert "larger than the seed-to-seed spread" in text
    assert "first-epoch training loss is lower (0.450 vs 1.050" in text
    swapped = verdict(bn, none, bn_loss0=[1.0, 1.1], none_loss0=[0.4, 0.5])
    assert "first-epoch training loss is higher (1.050 vs 0.450" in swapped


def test_verdict_within_the_spread_and_with_one_seed():
    noisy = verdict([0.90, 0.99, 0.93], [0.92, 0.95, 0.91], [1.0], [1.0])
    assert "BatchNorm wins" in noisy and "within the seed-to-seed spread" in noisy
    assert "not significant" in noisy
    flat = verdict([1.0, 1.0], [1.0, 1.0], [0.5], [0.5])
    assert "ties" in flat and "no spread" in flat and "the same" in flat
    single = verdict([0.95], [0.90], [0.5], [1.0])
    assert "BatchNorm wins" in single and "no significance can be claimed" in single
    assert "Welch" not in single
    assert "No verdict" in verdict([], [0.9], [], [1.0])


def test_cli_on_a_missing_or_empty_dir_exits_2_with_a_clear_message(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m bnstudy.report", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("bnstudy.report", run_name="__main__")  # as `python -m` runs it
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "hydra.sweep.dir" in err and "Traceback" not in err
    assert main([str(tmp_path)]) == 2
    assert "holds no jobs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "SWEEP_DIR`: the BN-vs-no-BN report of a finished multirun." in help_text


# --- a real sweep (slow) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tiny_data, tmp_path_factory) -> Path:
    """A finished multirun: mnist × {bn, none} × sgd × seeds {0, 1}, 2 epochs each, with a
    setting outside the study's (recorded in each job's hparams, the same for all)."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    done = run_train("-m", "dataset=mnist", "norm=bn,none", "optim=sgd", "seed=0,1",
                     f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "callbacks.hallucinations.steps=5",
                     *FAST, f"hydra.sweep.dir={sweep_dir}")
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
    assert main([str(sweep_dir), "--target-acc", f"mnist={TARGET}"]) == 0
    return sweep_dir / "report"


@pytest.fixture(scope="module")
def built(sweep) -> Path:
    """The report of the untouched sweep."""
    return run_report(sweep)


@pytest.mark.slow
def test_summary_numbers_equal_those_recomputed_from_metrics_json(sweep, built):
    rows = read_summary(built)
    assert set(rows) == {"bn", "none"}
    for norm, row in rows.items():
        check_summary(row, records(sweep, norm), TARGET)


@pytest.mark.slow
def test_groups_by_everything_but_the_seed(built):
    rows = read_summary(built)
    for row in rows.values():
        assert (row["dataset"], row["optim"]) == ("mnist", "sgd")
        assert int(row["n_seeds"]) == 2
        assert [row[f"n_{c}"] for c in ("diverged", "failed", "unfinished", "missing")] == ["0"] * 4
    assert "seed" not in next(iter(rows.values()))


@pytest.mark.slow
def test_report_md_holds_table_verdict_and_figures(built):
    text = (built / "report.md").read_text()
    assert "| mnist | sgd | bn | 2 |" in text and "| mnist | sgd | none | 2 |" in text
    assert "**Verdict.** BatchNorm " in text
    assert "](curves_mnist_sgd.png)" in text
    assert "Every job finished ok." in text


@pytest.mark.slow
def test_figures_decode_and_overlay_both_norms(sweep, built):
    with Image.open(built / "curves_mnist_sgd.png") as image:
        assert image.size[0] > 500 and image.size[1] > 400
    ckey, by_norm = the_comparison(sweep)
    fig = curves_figure(describe(ckey), by_norm)
    assert "Training Curves (mnist, sgd)" in fig._suptitle.get_text()
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["No BatchNorm (2 seeds)", "BatchNorm (2 seeds)"]
        assert len(ax.collections) == 2  # the ± std bands


@pytest.mark.slow
def test_figures_are_logged_to_tensorboard(built):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(built), size_guidance={"images": 0}).Reload()
    assert "curves/mnist_sgd" in events.Tags()["images"]


@pytest.mark.slow
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
    ckey, by_norm = the_comparison(sweep_dir)
    figure = comparison(ckey, by_norm, None)[1]["weights_mnist_sgd"]
    assert [ax.get_title() for ax in figure.axes] == ["No BatchNorm (seed 0)", "BatchNorm (seed 0)"]

    for job in sweep_dir.glob("*_mnist-bn-*"):
        (job / "images" / "weights_final.png").unlink()
    out = run_report(sweep_dir)
    assert "no ok job has images/weights_final.png on the BatchNorm side" in (
        out / "report.md").read_text()
    assert not (out / "weights_mnist_sgd.png").exists()  # the earlier report's is gone


def test_a_job_without_record_gets_the_hparams_its_record_would_hold(tiny_sweep, tmp_path):
    # The sweep sets callbacks.hallucinations.steps=5 (and more) for every job: read from the
    # job's .hydra/ files they must be in the hparams, or the job groups apart from its siblings.
    for name in [*tiny_sweep.records][::4]:  # an mnist and a cifar10 job
        assert hparams_from_config(tiny_sweep.dir / name) == tiny_sweep.records[name]["hparams"]
    job = shutil.copytree(tiny_sweep.dir / name / ".hydra", tmp_path / "job" / ".hydra")
    (job / "hydra.yaml").write_text((job / "hydra.yaml").read_text().replace(
        "dataset: cifar10", "dataset: since_removed"))  # conf/ no longer has the choice
    assert hparams_from_config(job.parent) == {k: tiny_sweep.records[name]["hparams"][k] for k in (
        "dataset", "model", "depth", "norm", "optim", "seed", "lr", "batch_size", "hidden_dim",
        "max_epochs")}


@pytest.mark.slow
def test_failed_unfinished_and_never_started_jobs_are_reported(copy_of):
    sweep_dir = copy_of()
    (first,) = sweep_dir.glob("0_mnist-bn-sgd-seed0*")
    (gone,) = sweep_dir.glob("3_mnist-none-sgd-seed1*")
    failed = shutil.copytree(first, sweep_dir / "4_mnist-bn-sgd-seed2")
    record = json.loads((failed / "metrics.json").read_text())
    record["hparams"]["seed"] = 2
    record.update(status="failed", error="RuntimeError: boom | bang", test=None)
    (failed / "metrics.json").write_text(json.dumps(record))
    unfinished = shutil.copytree(first, sweep_dir / "5_unfinished")
    (unfinished / "metrics.json").unlink()  # grouped from its .hydra/ files (bn, seed 0, and
    # the sweep's other setting, as in its siblings' records)
    shutil.rmtree(gone)

    out = run_report(sweep_dir)
    rows = read_summary(out)
    assert (rows["bn"]["n_seeds"], rows["bn"]["n_failed"], rows["bn"]["n_unfinished"]) == (
        "2", "1", "1")
    assert (rows["none"]["n_seeds"], rows["none"]["n_missing"]) == ("1", "2")  # seeds 1 and 2
    text = (out / "report.md").read_text()
    assert "| `4_mnist-bn-sgd-seed2` | failed | RuntimeError: boom \\| bang |" in text
    assert "| `5_unfinished` | no metrics.json |" in text
    assert "| seed=1 norm=none | never started" in text  # the swept overrides of the job
    assert "With one seed on a side, no significance can be claimed." in text


# --- claims C1–C4 and verdicts.csv on hand-made records -------------------------------------


# Validation accuracy per epoch of each (dataset, optim, norm) where every claim holds: BN starts
# lower in loss and no BN keeps improving on MNIST/SGD (C1); BN's final edge is 6 points with SGD,
# 1 with Adam on MNIST (C2); BN is ahead all along on CIFAR-10/SGD (C3) and ends 4 points ahead
# with Adam, by less than with SGD (C4).
HOLDS = {
    ("mnist", "sgd", "bn"): [0.90, 0.95, 0.96], ("mnist", "sgd", "none"): [0.60, 0.80, 0.90],
    ("mnist", "adam", "bn"): [0.95, 0.96, 0.97], ("mnist", "adam", "none"): [0.94, 0.95, 0.96],
    ("cifar10", "sgd", "bn"): [0.40, 0.45, 0.50], ("cifar10", "sgd", "none"): [0.10, 0.20, 0.30],
    ("cifar10", "adam", "bn"): [0.45, 0.50, 0.52], ("cifar10", "adam", "none"): [0.40, 0.45, 0.48],
}
# Each flip replaces some curves so that one part's statement is false, and the parts that
# share its numbers with it (C4b uses CIFAR-10/SGD's final gap) flip with it.
FLIPS = {
    "C1a": ({("mnist", "sgd", "bn"): [0.50, 0.95, 0.96]}, {"C1a"}),  # BN starts higher
    "C1b": ({("mnist", "sgd", "none"): [0.60, 0.80, 0.55]}, {"C1b"}),  # no BN gets worse
    "C2": ({("mnist", "adam", "none"): [0.80, 0.85, 0.86]}, {"C2"}),  # Adam gap 11 > SGD gap 6
    "C3a": ({("cifar10", "sgd", "bn"): [0.10, 0.20, 0.50],
             ("cifar10", "sgd", "none"): [0.30, 0.40, 0.30]}, {"C3a"}),  # late but ahead
    "C3b": ({("cifar10", "sgd", "bn"): [0.40, 0.45, 0.30],
             ("cifar10", "sgd", "none"): [0.10, 0.20, 0.50]}, {"C3b", "C4b"}),  # early only
    "C4a": ({("cifar10", "adam", "none"): [0.40, 0.50, 0.60]}, {"C4a"}),  # no BN ends ahead
    "C4b": ({("cifar10", "adam", "none"): [0.05, 0.10, 0.10]}, {"C4b"}),  # Adam gap 42 > 20
}
PARTS = ("C1a", "C1b", "C2", "C3a", "C3b", "C4a", "C4b")


def jitter(accs: list[float], norm: str, seed: int) -> list[float]:
    """Seed-to-seed spread that differs per epoch, so every statistic has one."""
    sign = 1 if norm == "bn" else -1
    return [acc + sign * 0.003 * seed * (e + 1) for e, acc in enumerate(accs)]


def write_claims_sweep(sweep_dir: Path, curves: dict, seeds=(0, 1, 2), **hparams) -> Path:
    for (dataset, optim, norm), accs in curves.items():
        for seed in seeds:
            write_job(sweep_dir, jitter(accs, norm, seed), dataset=dataset, optim=optim,
                      norm=norm, seed=seed, **hparams)
    return sweep_dir


def parts_of(sweep_dir: Path) -> dict[str, object]:
    from bnstudy.report.claims import setting_results, settings

    (study,) = settings(comparisons(group_runs(load_runs(sweep_dir)))).values()
    results, _ = setting_results(study, costs=lambda runs: {})  # no clock: no time claims
    return {f"{p.claim}{p.part}": p for p in results}


def side_values(sweep_dir: Path, dataset: str, optim: str, norm: str, of) -> list[float]:
    """`of(history)` of each ok record of the group, straight from metrics.json."""
    recs = [read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")]
    return [of(r["history"]) for r in sorted(recs, key=lambda r: r["hparams"]["seed"])
            if (r["hparams"]["dataset"], r["hparams"]["optim"], r["hparams"]["norm"])
            == (dataset, optim, norm) and r["status"] == "ok"]


@pytest.mark.parametrize("flip", [None, *FLIPS])
def test_each_claim_holds_and_flips_when_its_records_flip(tmp_path, flip):
    curves, flipped = ({**HOLDS, **FLIPS[flip][0]}, FLIPS[flip][1]) if flip else (HOLDS, set())
    parts = parts_of(write_claims_sweep(tmp_path, curves))
    assert list(parts) == list(PARTS)
    assert {name: p.verdict for name, p in parts.items()} == {
        name: "does not hold" if name in flipped else "holds" for name in PARTS}
    from bnstudy.report.claims import claim_verdicts

    verdicts = claim_verdicts(list(parts.values()))
    assert verdicts == {c: "does not hold" if any(f.startswith(c) for f in flipped) else "holds"
                        for c in ("C1", "C2", "C3", "C4")}


def test_claim_statistics_are_recomputed_from_the_records(tmp_path):
    from scipy import stats as sps

    sweep_dir = write_claims_sweep(tmp_path, HOLDS)
    parts = parts_of(sweep_dir)

    def get(dataset, optim, norm, of):
        return side_values(sweep_dir, dataset, optim, norm, of)

    def welch(a, b):
        return np.mean(a) - np.mean(b), sps.ttest_ind(a, b, equal_var=False)

    def first_loss(h):
        return h[0]["val/loss"]

    def final(h):
        return h[-1]["val/acc"]

    def area(h):
        return np.mean([row["val/acc"] for row in h])

    expect = {name: welch(get(dataset, optim, "bn", of), get(dataset, optim, "none", of))
              for name, dataset, optim, of in (("C1a", "mnist", "sgd", first_loss),
                                               ("C3a", "cifar10", "sgd", area),
                                               ("C3b", "cifar10", "sgd", final),
                                               ("C4a", "cifar10", "adam", final))}
    for name, (diff, test) in expect.items():
        part = parts[name]
        assert part.test.estimate == pytest.approx(diff)
        assert part.test.p_value == pytest.approx(test.pvalue)
        low, high = test.confidence_interval()
        assert (part.test.ci_low, part.test.ci_high) == (pytest.approx(low), pytest.approx(high))
    # C1b: no BN's validation loss at epoch ⌊E/2⌋ (the first of 3) minus at the last epoch
    drops = get("mnist", "sgd", "none", lambda h: h[0]["val/loss"] - h[-1]["val/loss"])
    assert parts["C1b"].test.estimate == pytest.approx(np.mean(drops))
    assert parts["C1b"].test.p_value == pytest.approx(sps.ttest_1samp(drops, 0).pvalue)
    # C2 and C4b: the SGD gap minus the Adam gap
    for name, dataset in (("C2", "mnist"), ("C4b", "cifar10")):
        gap = {o: np.mean(get(dataset, o, "bn", final)) - np.mean(get(dataset, o, "none", final))
               for o in ("sgd", "adam")}
        assert parts[name].test.estimate == pytest.approx(gap["sgd"] - gap["adam"])
        assert 0 < parts[name].test.p_value < 0.05


def test_the_middle_epoch_of_a_ten_epoch_run_is_the_fifth():
    from bnstudy.report.claims import late_val_loss_drop

    history = [{"val/loss": float(10 - e)} for e in range(10)]  # epochs 1..10: 10, 9, …, 1
    assert late_val_loss_drop(history) == 6 - 1


def test_a_claim_within_the_spread_or_with_one_seed_cannot_be_told(tmp_path):
    same = {**HOLDS, ("cifar10", "adam", "none"): HOLDS["cifar10", "adam", "bn"]}
    parts = parts_of(write_claims_sweep(tmp_path / "same", same))  # only the jitters differ
    assert parts["C4a"].verdict == "cannot tell" and parts["C4a"].test.p_value >= 0.05
    assert parts["C4a"].test.ci_low < 0 < parts["C4a"].test.ci_high
    one = parts_of(write_claims_sweep(tmp_path / "one", HOLDS, seeds=(0,)))
    assert {p.verdict for p in one.values()} == {"cannot tell"}
    assert math.isnan(one["C3b"].test.p_value)
    assert one["C3b"].test.estimate == pytest.approx(0.20)


def test_only_the_claims_a_sweep_allows_are_stated(tmp_path):
    mnist_sgd = {k: v for k, v in HOLDS.items() if k[:2] == ("mnist", "sgd")}
    assert list(parts_of(write_claims_sweep(tmp_path / "a", mnist_sgd))) == ["C1a", "C1b"]
    cifar = {k: v for k, v in HOLDS.items() if k[0] == "cifar10"}
    assert list(parts_of(write_claims_sweep(tmp_path / "b", cifar))) == [
        "C3a", "C3b", "C4a", "C4b"]


def test_report_md_states_the_claims_and_claims_csv_holds_them(tmp_path,
                                                               figures_not_rendered):
    sweep_dir = write_claims_sweep(tmp_path / "sweep", {**HOLDS, **FLIPS["C2"][0]})
    assert main([str(sweep_dir)]) == 0
    text = (sweep_dir / "report" / "report.md").read_text()
    assert text.index("## Claims") < text.index("## mnist, sgd")
    assert ("Verdicts: **C1 holds**; **C2 does not hold**; **C3 holds**; **C4 holds**."
            in text)
    parts = parts_of(sweep_dir)
    c1a = parts["C1a"]
    bn_loss = side_values(sweep_dir, "mnist", "sgd", "bn", lambda h: h[0]["val/loss"])
    assert (f"| C1a | MNIST, SGD: BN starts at a lower loss | first-epoch val loss, BN − no BN | "
            f"BN {np.mean(bn_loss):.3f} ± {np.std(bn_loss, ddof=1):.3f} (3); ") in text
    assert f"| {c1a.test.estimate:+.3f} (95% CI {c1a.test.ci_low:+.3f} to " in text
    with open(sweep_dir / "report" / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["claim"] + r["part"] for r in rows] == list(PARTS)
    for row in rows:
        part = parts[row["claim"] + row["part"]]
        assert float(row["estimate"]) == pytest.approx(part.test.estimate, abs=1e-6)
        assert float(row["p_value"]) == pytest.approx(part.test.p_value, abs=1e-6)
        assert row["verdict"] == part.verdict
    assert {r["claim_verdict"] for r in rows if r["claim"] == "C2"} == {"does not hold"}


def read_verdicts(out: Path) -> list[dict]:
    with open(out / "verdicts.csv") as f:
        return list(csv.DictReader(f))


def test_verdicts_csv_rows_are_recomputed_from_the_records(tmp_path, figures_not_rendered):
    """One report whose learning rates give each verdict: BN ahead at lr 0.01, behind at 0.1
    (the same numbers, swapped), level within the spread at 0.001."""
    from scipy import stats as sps

    high, low = [0.90, 0.91, 0.93], [0.80, 0.82, 0.81]
    cases = {0.001: ({"bn": [0.85, 0.90, 0.80], "none": [0.86, 0.81, 0.88]}, "ties"),
             0.01: ({"bn": high, "none": low}, "wins"),
             0.1: ({"bn": low, "none": high}, "loses")}
    for lr, (finals, _) in cases.items():
        for norm, accs in finals.items():
            for seed, acc in enumerate(accs):
                write_job(tmp_path, [0.5, acc + lr / 10], norm=norm, seed=seed, lr=lr)
    write_job(tmp_path, [0.5, 0.1], "diverged", norm="bn", seed=3, lr=0.1)  # not pooled
    assert main([str(tmp_path)]) == 0
    rows = read_verdicts(tmp_path / "report")
    assert list(rows[0]) == ["dataset", "optim", "lr", "n_bn", "n_none", "bn_mean", "none_mean",
                             "diff", "p_value", "verdict", "diff_ci_low", "diff_ci_high",
                             "bn_diverged", "none_diverged", "detectable_80", "seeds_needed"]
    assert [(r["dataset"], r["optim"], float(r["lr"])) for r in rows] == [
        ("mnist", "sgd", lr) for lr in cases]
    for row in rows:
        finals, verdict = cases[float(row["lr"])]
        bn, none = ([acc + float(row["lr"]) / 10 for acc in finals[n]] for n in ("bn", "none"))
        test = sps.ttest_ind(bn, none, equal_var=False)
        assert (row["n_bn"], row["n_none"]) == ("3", "3")
        assert float(row["bn_mean"]) == pytest.approx(np.mean(bn), abs=1e-6)
        assert float(row["none_mean"]) == pytest.approx(np.mean(none), abs=1e-6)
        assert float(row["diff"]) == pytest.approx(np.mean(bn) - np.mean(none), abs=1e-6)
        assert float(row["p_value"]) == pytest.approx(test.pvalue, abs=1e-6)
        low, high = test.confidence_interval()
        assert float(row["diff_ci_low"]) == pytest.approx(low, abs=1e-6)
        assert float(row["diff_ci_high"]) == pytest.approx(high, abs=1e-6)
        assert row["verdict"] == verdict
        assert (row["bn_diverged"], row["none_diverged"]) == (
            "1" if row["lr"] == "0.1" else "0", "0")
        detectable, needed = power_of([(1.0, bn), (-1.0, none)])
        assert float(row["detectable_80"]) == pytest.approx(detectable, abs=1e-6)
        assert float(row["seeds_needed"]) == needed


def test_a_verdict_without_two_ok_seeds_a_side_is_no_test(tmp_path):
    from bnstudy.report.stats import verdict_rows

    write_job(tmp_path, [0.9], norm="bn", seed=0)
    write_job(tmp_path, [0.9], norm="bn", seed=1)
    write_job(tmp_path, [0.5], "diverged", norm="none", seed=0)
    write_job(tmp_path, [0.8], norm="none", seed=1)
    (row,) = verdict_rows(comparisons(group_runs(load_runs(tmp_path))))
    assert (row["n_bn"], row["n_none"], row["verdict"]) == (2, 1, "no test")
    assert row["diff"] == pytest.approx(0.1) and math.isnan(row["p_value"])
