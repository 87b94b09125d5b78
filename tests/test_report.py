"""`python -m bnstudy.report` on hand-made sweeps; the session's real sweep (slow)."""

from __future__ import annotations

import itertools
import json
import math
import os
import runpy
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    assert_images_are_the_png_files,
    csv_rows,
    make_classifier,
    read_record,
    tiny_fit,
    write_job,
)
from matplotlib.colors import same_color
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats as sps

from bnstudy.jobdir import JobDirLock
from bnstudy.report import cli, write
from bnstudy.report.answer import console_answer, row_words
from bnstudy.report.cli import main
from bnstudy.report.cost import CLOCK_FILE
from bnstudy.report.figures import PROBE_FIGURES, curves_figure, norm_color
from bnstudy.report.runs import (
    PROBE_SERIES,
    ReportError,
    compared,
    describe,
    group_keys,
    groups,
    hparams_from_config,
    load_runs,
    norm_label,
    ok,
    quantities,
    settings,
    slug,
    sweep_jobs,
)
from bnstudy.report.sections import comparison, problems_table, summary_table, verdict_text
from bnstudy.report.stats import contrast, power_of, verdicts
from bnstudy.report.write import _running, report_markdown, write_report
from bnstudy.sweep import SweepSummary


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
    best = [max(h["val/acc"] for h in r["history"]) for r in recs]
    test = [r["test"]["acc"] for r in recs]
    std = (lambda xs: np.std(xs, ddof=1)) if len(recs) > 1 else (lambda xs: math.nan)
    expected = {
        "final_val_acc_mean": np.mean(final), "final_val_acc_std": std(final),
        "best_val_acc_mean": np.mean(best), "best_val_acc_std": std(best),
        "final_val_loss_mean": np.mean([r["history"][-1]["val/loss"] for r in recs]),
        "test_acc_mean": np.mean(test), "test_acc_std": std(test),
        "first_epoch_train_loss_mean": np.mean([r["history"][0]["train/loss"] for r in recs]),
        "wall_time_s_mean": np.mean([r["wall_time_s"] for r in recs]),
    }
    for key, value in expected.items():
        assert cell(row, key) == pytest.approx(value, abs=2e-6, nan_ok=True), key
    reached = [next((h["epoch"] + 1 for h in r["history"] if h["val/acc"] >= target), None)
               for r in recs]
    reached = [e for e in reached if e is not None]
    assert (int(row["n_seeds"]), int(row["n_reached_target"])) == (len(recs), len(reached))
    assert cell(row, "epochs_to_target_mean") == pytest.approx(
        np.mean(reached) if reached else math.nan, nan_ok=True)
    assert cell(row, "target_val_acc") == target


def the_comparison(sweep_dir: Path) -> tuple[tuple, dict]:
    """The sweep's one comparison: its key and its runs by norm."""
    ((ckey, by_norm),) = settings(load_runs(sweep_dir))
    return ckey, by_norm


@pytest.fixture
def refused(capsys):
    """`python -m bnstudy.report ARGS` refused: what it says on stderr as it exits with 2."""
    def report(*args) -> str:
        capsys.readouterr()
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse's
            code = exit_.code
        assert code == 2
        return capsys.readouterr().err
    return report


# Val acc per epoch, by seed: BN clearly ahead; no BN's seed 2 peaks before its last epoch.
BN = {0: [0.80, 0.90, 0.95], 1: [0.78, 0.88, 0.93], 2: [0.82, 0.91, 0.96]}
NONE = {0: [0.60, 0.75, 0.85], 1: [0.55, 0.72, 0.83], 2: [0.65, 0.90, 0.88]}
HAND_TARGET = 0.85


def write_sweep(sweep_dir: Path, **by_norm: dict) -> Path:
    """Each norm's ok seeds (`norm={seed: val accs}`), as mnist × sgd jobs."""
    for norm, by_seed in by_norm.items():
        for seed, accs in by_seed.items():
            write_job(sweep_dir, accs, norm=norm, seed=seed)
    return sweep_dir


def test_summary_csv_and_curves_are_recomputed_from_the_records_and_count_the_rest(
        tmp_path, figures_not_rendered):
    """BN and NONE, plus a diverged, a failed and an unfinished job (not pooled); reported."""
    hand_made = write_sweep(tmp_path / "multirun", bn=BN, none=NONE)
    write_job(hand_made, [0.70, 0.10], "diverged", norm="bn", seed=3)
    write_job(hand_made, [0.20], "failed", "RuntimeError: boom | bang\nmore", norm="none", seed=3)
    write_job(hand_made, [0.50], "running", norm="none", seed=4)
    assert main([str(hand_made), "--target-acc", f"mnist={HAND_TARGET}"]) == 0
    rows = {r["norm"]: r for r in csv_rows(hand_made / "report" / "summary.csv")}
    for norm, row in rows.items():
        check_summary(row, records(hand_made, norm), HAND_TARGET)
    assert cell(rows["none"], "epochs_to_target_mean") == 2.5  # seed 1 never reaches 0.85
    counts = ("n_seeds", "n_diverged", "n_failed", "n_unfinished", "n_missing")
    assert [rows["bn"][c] for c in counts] == ["3", "1", "0", "0", "1"]  # no seed 4
    assert [rows["none"][c] for c in counts] == ["3", "0", "1", "1", "0"]
    text = (hand_made / "report" / "report.md").read_text()
    assert "9 job directories: 6 ok, 1 diverged, 1 failed, 1 unfinished." in text
    jobs = [" ".join(line.split()) for line in text.split("## Jobs not in")[1].splitlines()]
    assert "| `6_mnist-bn-sgd-seed3` | diverged | |" in jobs
    assert "| `7_mnist-none-sgd-seed3` | failed | RuntimeError: boom \\| bang |" in jobs
    assert "| `8_mnist-none-sgd-seed4` | stopped while running (killed, or its machine lost) | |" \
        in jobs  # no process holds its lock
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


def test_a_report_while_the_sweep_runs_says_so_and_what_is_yet_to_start(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    for norm, status in (("bn", "ok"), ("none", "running")):
        job = write_job(sweep_dir, [0.5, 0.6], status, norm=norm)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(f"- norm={norm}\n- threads=1\n")
    (sweep_dir / "multirun.yaml").write_text(  # bookkeeping overrides: the same planned job
        "hydra:\n  sweeper:\n    params:\n      norm: bn,none,layer\n  overrides:\n    task: []\n")
    with JobDirLock(job) as lock:
        lock.acquire("the sweep's job")
        assert main([str(sweep_dir)]) == 0
        text = " ".join((sweep_dir / "report" / "report.md").read_text().split())
    assert "2 job directories: 1 ok, 0 diverged, 0 failed, 1 unfinished, 1 not started yet." in text
    assert f"| `{job.name}` | running | | | norm=layer | not started yet (the sweep is running) |" \
        in text
    assert capsys.readouterr().out.splitlines()[1] == (
        f"The sweep is still running ({job.name} training now): the report covers the jobs "
        "finished so far; run it again when the sweep ends.")
    assert main([str(sweep_dir)]) == 0  # the lock is free: the sweep stopped
    text = " ".join((sweep_dir / "report" / "report.md").read_text().split())
    assert "1 unfinished, 1 never started." in text
    assert "| norm=layer | never started (no job directory) |" in text
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize("case", ["bn", "none", "tie", "overlap", "one seed", "flat"])
def test_the_verdict_names_the_winner_and_weighs_the_spread(tmp_path, case):
    finals = [0.85, 0.90, 0.95]
    bn, none = {  # validation accuracy per epoch, by seed
        "bn": (BN, NONE), "none": (NONE, BN),
        "tie": ({s: [0.5, f] for s, f in enumerate(finals)},) * 2,
        "overlap": ({0: [0.6, 0.91], 1: [0.7, 0.96], 2: [0.8, 0.86]},
                    {0: [0.9, 0.88], 1: [0.8, 0.93], 2: [0.7, 0.89]}),
        "one seed": ({0: [0.6, 0.95]}, {0: [0.5, 0.90]}),
        "flat": ({0: [0.5, 1.0], 1: [0.5, 1.0]},) * 2,
    }[case]
    ckey, by_norm = the_comparison(write_sweep(tmp_path, bn=bn, none=none))
    text = comparison(ckey, by_norm, verdicts(load_runs(tmp_path), [("bn", "none")]))[0]
    bn_acc, none_acc = ([accs[-1] for accs in side.values()] for side in (bn, none))
    bn_loss0, none_loss0 = ([1 - accs[0] for accs in side.values()] for side in (bn, none))
    diff = 100 * (np.mean(bn_acc) - np.mean(none_acc))
    result = {"bn": "wins", "none": "loses", "tie": "ties", "flat": "ties"}.get(
        case, "ends ahead")  # no win claimed where the test does not decide
    seeds = {"one seed": "1 seed each", "flat": "2 seeds each"}.get(case, "3 seeds each")
    assert (f"**Verdict.** BatchNorm {result} on final validation accuracy: "
            f"{np.mean(bn_acc):.2%} vs {np.mean(none_acc):.2%} without it "
            f"({diff:+.2f} percentage points, mean over {seeds}).") in text
    assert {"bn": "larger than the seed-to-seed spread", "none": "larger than the seed-",
            "tie": "no spread", "overlap": "within the seed-to-seed spread",
            "one seed": "no significance can be claimed", "flat": "no spread"}[case] in text
    start = {"bn": "lower", "none": "higher", "overlap": "higher", "one seed": "lower"}.get(
        case, "the same")
    assert (f"Its first-epoch training loss is {start} "
            f"({np.mean(bn_loss0):.3f} vs {np.mean(none_loss0):.3f} without BatchNorm).") in text


def test_a_verdict_names_uneven_seeds_another_baseline_and_a_side_without_runs(tmp_path):
    row = {"treatment": "bn", "baseline": "layer", "n_treatment": 3, "n_baseline": 2,
           "diff": 0.05, "verdict": "wins", "quantity": "final_val_acc", "treatment_mean": 0.95,
           "baseline_mean": 0.9, "p_value": 0.001, "test": "Welch", "n_paired": 0,
           "p_holm": 0.002, "margin": 0.005}
    assert verdict_text(row, (0.5, 0.6)).startswith(
        "BatchNorm wins on final validation accuracy: 95.00% vs 90.00% with LayerNorm (+5.00 "
        "percentage points, mean over 3 vs 2 seeds).")
    assert verdict_text({**row, "n_treatment": 0}, (0.5, 0.6)) == \
        "No verdict: the BatchNorm side has no finished (ok) run."
    for norm in ("bn", "none"):  # no job finished ok: no curves to draw
        write_job(tmp_path, [0.2], "failed", "RuntimeError: boom", norm=norm)
    text, figures = comparison(*the_comparison(tmp_path), pd.DataFrame())
    assert "_Curves figure skipped: no job here finished ok._" in text and not figures


def test_the_summary_table_cells_and_a_sweep_without_problems():
    row = {"dataset": "mnist", "optim": "sgd", "norm": "bn", "n_seeds": 3,
           "final_val_acc_mean": 0.9, "final_val_acc_std": 0.01, "best_val_acc_mean": 0.92,
           "best_val_acc_std": 0.02, "final_val_loss_mean": 0.3, "test_acc_mean": 0.89,
           "test_acc_std": 0.005, "first_epoch_train_loss_mean": 0.7,
           "epochs_to_target_mean": 2.5, "n_reached_target": 2, "target_val_acc": 0.85,
           "wall_time_s_mean": 3.21, "n_diverged": 1, "n_failed": 0, "n_unfinished": 0,
           "n_missing": 0}
    line = summary_table(pd.DataFrame([row]), ["dataset", "optim", "norm"]).splitlines()[2]
    assert [c.strip() for c in line.strip("|").split("|")] == [
        "mnist", "sgd", "bn", "3", "90.00% ± 1.00", "92.00% ± 2.00", "0.300", "89.00% ± 0.50",
        "0.700", "2.5 (2/3 ≥ 0.85)", "3.2", "1", "0", "0", "0"]
    assert problems_table(pd.DataFrame({"outcome": ["ok"]}), []) == "Every job finished ok."


def test_the_header_counts_never_started_jobs_and_says_what_a_tuned_sweep_compares():
    runs = pd.DataFrame({"outcome": ["ok", "ok", "diverged"], "norm": ["bn", "none", "bn"],
                         "job": ["a", "b", "c"], "status": ["ok", "ok", "diverged"],
                         "error": [None] * 3})
    header = report_markdown(Path("S"), runs, "", [], ["norm=layer"]).splitlines()[2]
    assert header.startswith("3 job directories: 2 ok, 1 diverged, 0 failed, 0 unfinished, 1 "
                             "never started. Statistics are over the ok runs, grouped by ")
    assert "Verdicts compare final validation accuracy over seeds: a paired t-test" in header
    tuned = report_markdown(Path("S"), runs, "", [], [], used=4).splitlines()[2]
    assert "over the ok runs of the 4 re-runs of the cells' kept settings (the other " in tuned
    assert "Verdicts compare test accuracy over seeds (each norm's setting was chosen on its " \
        "validation accuracy): Welch's t-test, p Holm-adjusted" in tuned


def test_another_hparam_splits_groups_and_a_new_report_keeps_the_clock_and_referee(
        tmp_path, monkeypatch, figures_not_rendered):
    """Each setting its verdict; no claims.csv for svhn; another user's process runs."""
    for lr, seed, (norm, acc) in itertools.product((0.1, 0.01), (0, 1), (("bn", .9), ("none", .8))):
        write_job(tmp_path, [0.5, acc + seed / 100], dataset="svhn", norm=norm, lr=lr, seed=seed)
    runs = load_runs(tmp_path)
    assert group_keys(runs) == ["dataset", "optim", "norm", "lr"]
    found = settings(runs)  # in sweep order, not by number
    assert [slug(k) for k, _ in found] == ["svhn_sgd_lr0.1", "svhn_sgd_lr0.01"]
    assert all(len(g) == 2 for _, by_norm in found for g in by_norm.values())
    (tmp_path / "report").mkdir()
    for kept in (CLOCK_FILE, "referee_svhn.pt"):
        (tmp_path / "report" / kept).write_text("measured")
    report = write_report(tmp_path, {}, costs=lambda runs: {})
    assert [(report.parent / k).read_text() for k in (CLOCK_FILE, "referee_svhn.pt")] == [
        "measured"] * 2
    assert not (report.parent / "claims.csv").exists()
    sections = report.read_text().split("\n## ")
    for lr in ("0.01", "0.1"):
        (mine,) = [s for s in sections if s.startswith(f"svhn, sgd, lr={lr}")]
        assert mine.count("**Verdict.**") == 1
    monkeypatch.setattr("os.kill", lambda pid, signal: (_ for _ in ()).throw(PermissionError))
    assert _running("12345")


def test_the_runs_table_quantities_groups_keys_and_twins(tmp_path):
    """An ok run without history is unused; a key some jobs lack still varies."""
    history = [{"val/acc": a} for a in (0.1, 0.2, 0.6)]
    assert quantities(history, None)["mean_val_acc"] == pytest.approx(0.3)
    runs = pd.DataFrame({"outcome": ["ok", "ok"], "history": [[], history], "seed": [1, 0],
                         "norm": ["bn", "bn"], "lr": [0.1, None]})
    assert list(ok(runs)["seed"]) == [0]
    ((_, group),) = groups(runs, ["norm"])
    assert list(group["seed"]) == [0, 1]
    assert "lr" in group_keys(runs)  # 0.1 and (none): two settings
    for _ in (0, 1):
        write_job(tmp_path / "twins", [0.5, 0.1], "diverged")
    with pytest.raises(ReportError, match="holds two results of one setting and seed"):
        load_runs(tmp_path / "twins")


def test_norm_labels_colours_and_order_come_from_the_registry(tmp_path):
    for norm in ("layer", "bn", "none", "weird"):
        write_job(tmp_path, [0.5, 0.6, 0.7], norm=norm)
    _, by_norm = the_comparison(tmp_path)
    lines = curves_figure("mnist, sgd", by_norm).axes[0].get_lines()
    assert [line.get_label() for line in lines] == [
        "No norm (1 seed)", "BatchNorm (1 seed)", "LayerNorm (1 seed)", "weird (1 seed)"]
    assert [same_color(line.get_color(), c) for line, c in zip(
        lines[:3], ("tab:orange", "tab:blue", "tab:green"), strict=True)] == [True] * 3
    assert (norm_label("weird"), norm_color("weird")) == ("weird", None)  # matplotlib's cycle
    assert [norm_label("none", among) for among in (("bn", "none"), ("layer", "none"))] == [
        "No BatchNorm", "No norm"]  # beside BN alone, no norm is no BatchNorm
    assert set(PROBE_FIGURES) == set(PROBE_SERIES)  # every recorded probe series is drawn


def test_two_results_of_one_setting_and_seed_are_refused_not_counted_twice(tmp_path, refused,
                                                                          caplog):
    for norm, seed in (("bn", 0), ("none", 0), ("bn", 1), ("none", 1)):
        write_job(tmp_path, [0.9], norm=norm, seed=seed)
    write_job(tmp_path, [0.5], status="failed", norm="none", seed=0)  # no result: no matter
    load_runs(tmp_path)
    write_job(tmp_path, [0.8], norm="none", seed=0)  # numbered 5: no BN's seed 0 again
    write_job(tmp_path, [0.8], norm="bn", seed=1)  # and 6: BN's seed 1
    said = " ".join(refused(tmp_path).split())
    assert f"{tmp_path} holds two results of one setting and seed: 1_mnist-none-sgd-seed0, " \
        "5_mnist-none-sgd-seed0 (and 1 more such) (their recorded settings" in said
    assert "Each would count twice among the seeds, so nothing was reported." in said
    assert not (tmp_path / "report").exists()
    caplog.set_level("INFO", logger="bnstudy")  # the sweep's summary says it for the answer
    with pytest.raises(SystemExit):  # (for the failed job)
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {
            "dir": str(tmp_path)}}}))
    assert "holds two results of one setting and seed" in caplog.text


def test_cli_mistakes_exit_2_with_a_clear_message(tmp_path, capsys, monkeypatch, refused):
    monkeypatch.setattr(sys, "argv", ["python -m bnstudy.report", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("bnstudy.report", run_name="__main__")  # as `python -m` runs it
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "hydra.sweep.dir" in err and "Traceback" not in err
    assert "holds no jobs" in refused(tmp_path)
    for n in range(5):  # the output root: its sweeps (the latest named), not its single runs
        sweep = write_job(tmp_path / "multirun" / f"2026-01-0{n + 1}_10-00-00", [0.5]).parent
        (sweep / "multirun.yaml").write_text("{}")
    write_job(tmp_path / "runs", [0.5])
    assert f"{tmp_path} holds sweeps, not runs (5: …, multirun/2026-01-03_10-00-00, multirun/" \
        f"2026-01-04_10-00-00, multirun/2026-01-05_10-00-00). Pass one of them, e.g. " \
        f"{tmp_path}/multirun/2026-01-05_10-00-00.\n" in refused(tmp_path)
    write_job(tmp_path / "runs", [0.5], norm="none")  # single runs, each Hydra's RUN mode
    for job in (tmp_path / "runs").iterdir():
        (job / ".hydra").mkdir()
        (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    assert "runs holds single runs (`python -m bnstudy.train` without -m), not the jobs of a " \
        "sweep" in refused(tmp_path / "runs")
    (sweep := write_job(tmp_path / "runs" / "sweep", [0.5]).parent / "multirun.yaml").touch()
    assert f"runs holds sweeps, not runs (1: sweep). Pass one of them, e.g. {sweep.parent}." \
        in refused(tmp_path / "runs")  # a sweep beside the single runs: it is named
    said = refused(job)  # one run's folder: its files named, and what to run
    assert f"{job} is a single run's directory (`python -m bnstudy.train` without -m); the " \
        "report compares the runs of a sweep. This run's results are in its metrics.json and " \
        f"its TensorBoard events (tensorboard --logdir {job}). To compare, run a sweep, e.g. " \
        "python -m bnstudy.train -m norm=bn,none, and pass its folder.\n" in said
    sweep = tmp_path / "multirun" / "2026-01-05_10-00-00"
    said = refused(sweep / "0_mnist-bn-sgd-seed0")  # one job of a sweep: the sweep named
    assert f"is one job of the sweep {sweep}; the report compares the sweep's jobs. Pass the " \
        f"sweep's folder: python -m bnstudy.report {sweep}\n" in said
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")  # one a sweep's
    assert len(sweep_jobs(tmp_path / "runs")) == 2
    for bad in ("bn", "bn:bn", ":none", "bn:none:x"):
        assert "TREATMENT:BASELINE" in refused(tmp_path, "--compare", bad)
    for typed in ("mnist=90", "mnist=high"):  # a percentage for a fraction, not a number
        assert "(a fraction: 0.9 for 90 %)" in refused(tmp_path, "--target-acc", typed)
    assert refused(tmp_path, "--target-acc", "mnist=0.9,cifar10=0.4,").endswith(  # two datasets
        "'mnist=0.9,cifar10=0.4,': one dataset a flag: --target-acc mnist=0.9 --target-acc "
        "cifar10=0.4\n")
    assert "unrecognized arguments: --compar" in refused(tmp_path, "--compar", "bn")  # no prefix
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "SWEEP_DIR`: the report of a finished multirun, norm against norm." in help_text


def test_the_command_line_hands_the_report_its_targets_and_pairs(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(cli, "write_report", lambda sweep, targets, pairs, named: asked.append(
        (targets, pairs, named)) or sweep / "report")
    for args in ([], ["--target-acc", "1"], ["--target-acc", "mnist=0.95", "--compare", "bn:layer",
                                            "--compare", "layer:none"]):
        assert cli.main([str(tmp_path), *args]) == 0
    assert asked == [({"mnist": 0.9, "cifar10": 0.4}, None, []),  # the defaults; every norm
                     ({"*": 1.0}, None, []),  # a bare ACC: every dataset's, reaching 100 % too
                     ({"mnist": 0.95, "cifar10": 0.4}, [("bn", "layer"), ("layer", "none")],
                      ["mnist"])]  # (a dataset named: one the sweep must have)


def test_verdicts_csv_rows_are_recomputed_from_the_records(tmp_path, figures_not_rendered):
    """BN ahead at lr 0.01, behind at 0.1 (swapped), level within the spread at 0.001."""
    high, low = [0.90, 0.91, 0.93], [0.80, 0.82, 0.81]
    cases = {0.001: ({"bn": [0.85, 0.90, 0.80], "none": [0.86, 0.81, 0.88]}, "cannot tell"),
             0.01: ({"bn": high, "none": low}, "wins"),
             0.1: ({"bn": low, "none": high}, "loses")}
    for (lr, (finals, _)), norm, seed in itertools.product(cases.items(), ("bn", "none"), range(3)):
        write_job(tmp_path, [0.5, finals[norm][seed] + lr / 10], norm=norm, seed=seed, lr=lr)
    write_job(tmp_path, [0.5, 0.1], "diverged", norm="bn", seed=3, lr=0.1)  # not pooled
    assert main([str(tmp_path)]) == 0
    rows = csv_rows(tmp_path / "report" / "verdicts.csv")
    assert list(rows[0]) == [
        "dataset", "optim", "lr", "treatment", "baseline", "quantity", "n_treatment", "n_baseline",
        "treatment_mean", "baseline_mean", "diff", "test", "n_paired", "p_value", "p_holm",
        "verdict", "diff_ci_low", "diff_ci_high", "margin", "p_tost", "p_tost_holm",
        "treatment_diverged", "baseline_diverged", "detectable_80", "seeds_needed",
        "seeds_would_show"]
    assert [(r["optim"], float(r["lr"]), r["treatment"], r["baseline"]) for r in rows] == [
        ("sgd", lr, "bn", "none") for lr in cases]
    from statsmodels.stats.multitest import multipletests

    adjusted = multipletests([float(r["p_value"]) for r in rows], method="holm")[1]
    for row, holm in zip(rows, adjusted, strict=True):  # the table is one family
        assert float(row["p_holm"]) == pytest.approx(holm, abs=1e-5)  # of the CSV's rounded p
        finals, verdict = cases[float(row["lr"])]
        bn, none = ([acc + float(row["lr"]) / 10 for acc in finals[n]] for n in ("bn", "none"))
        test = sps.ttest_rel(bn, none)  # the same seeds: paired (BN's diverged seed 3 left out)
        low, high = test.confidence_interval()
        detectable, needed, shows = power_of(contrast(
            [(1.0, bn), (-1.0, none)], seeds=[[0, 1, 2]] * 2, margin=0.005),
            alpha=0.05 / 3)  # Holm's strictest step in a family of 3
        expected = {"treatment_mean": np.mean(bn), "baseline_mean": np.mean(none),
                    "diff": np.mean(bn) - np.mean(none), "p_value": test.pvalue,
                    "diff_ci_low": low, "diff_ci_high": high, "detectable_80": detectable,
                    "seeds_needed": needed}
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-6), key
        assert (row["n_treatment"], row["n_baseline"], row["verdict"]) == ("3", "3", verdict)
        assert row["seeds_would_show"] == shows
        assert (row["test"], row["n_paired"], row["margin"]) == ("paired t", "3", "0.005")
        assert (row["treatment_diverged"], row["baseline_diverged"]) == (
            "1" if row["lr"] == "0.1" else "0", "0")


def test_each_norm_of_a_sweep_gets_a_verdict_against_none_and_any_pair_on_request(
        tmp_path, figures_not_rendered, refused):
    """`norm=bn,layer,none`: BN and LayerNorm each against no norm; `--compare` adds a pair."""
    finals = {"bn": [0.95, 0.96, 0.955], "layer": [0.93, 0.94, 0.935], "none": [0.90, 0.91, 0.9]}
    for norm, seed in itertools.product(finals, range(3)):
        write_job(tmp_path, [0.5, finals[norm][seed]], norm=norm, seed=seed)
    runs = load_runs(tmp_path)
    assert compared(runs) == [("bn", "none"), ("layer", "none")]
    assert main([str(tmp_path), "--compare", "bn:none", "--compare", "layer:none",
                 "--compare", "bn:layer"]) == 0
    rows = csv_rows(tmp_path / "report" / "verdicts.csv")
    assert [(r["treatment"], r["baseline"], r["verdict"]) for r in rows] == [
        ("bn", "none", "wins"), ("layer", "none", "wins"), ("bn", "layer", "wins")]
    for row in rows:
        t, b = finals[row["treatment"]], finals[row["baseline"]]
        assert float(row["diff"]) == pytest.approx(np.mean(t) - np.mean(b), abs=1e-6)
    text = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "| MNIST | SGD | BN − no BN | 3, 3 | BN wins, +5.17 pts (" in text
    assert "| MNIST | SGD | LayerNorm − no norm | 3, 3 | LayerNorm wins, +3.17 pts (" in text
    assert "**Verdict.** LayerNorm wins on final validation accuracy: 93.50% vs 90.33% " \
           "without it" in text
    assert "**Verdict.** BatchNorm wins on final validation accuracy: 95.50% vs 93.50% " \
           "with LayerNorm" in text
    assert text.startswith("# BatchNorm vs LayerNorm vs No norm — report of ")
    assert "## The answer Each norm against its baseline: treatment − baseline in validation " \
        "accuracy" in text and "Is BatchNorm worth it?" not in text
    assert main([str(tmp_path)]) == 0 and len(csv_rows(tmp_path / "report" / "verdicts.csv")) == 2
    shutil.rmtree(tmp_path / "report")
    assert refused(tmp_path, "--target-acc", "mnst=0.9") == (  # a dataset misspelt
        "bnstudy.report: error: --target-acc mnst=...: the sweep has no dataset mnst, nothing "
        "was written. Its datasets: mnist.\n")
    assert refused(tmp_path, "--compare", "bn:none", "--compare", "bn:batch") == (
        "bnstudy.report: error: --compare bn:batch: the sweep has no runs of norm=batch, nothing "
        "was written. Its norms: none, bn, layer; compare two of them, e.g. --compare bn:none.\n")
    assert not (tmp_path / "report").exists()


def test_a_job_without_record_gets_the_hparams_its_record_would_hold(tiny_sweep, tmp_path):
    # read from .hydra/: the sweep's settings (steps=5…), or the job groups apart
    for name in [*tiny_sweep.records][::4]:  # an mnist and a cifar10 job
        assert hparams_from_config(tiny_sweep.dir / name) == tiny_sweep.records[name]["hparams"]
    job = shutil.copytree(tiny_sweep.dir / name / ".hydra", tmp_path / "job" / ".hydra")
    (job / "hydra.yaml").write_text((job / "hydra.yaml").read_text().replace(
        "dataset: cifar10", "dataset: since_removed"))  # conf/ no longer has the choice
    assert hparams_from_config(job.parent) == {k: tiny_sweep.records[name]["hparams"][k] for k in (
        "dataset", "model", "depth", "norm", "optim", "seed", "lr", "batch_size", "hidden_dim",
        "max_epochs")}


# --- the session's real sweep (slow) --------------------------------------------------------


@pytest.fixture(scope="module")
def built(tiny_sweep, tmp_path_factory) -> Path:
    """The real sweep with a failed job added, a record removed and a job deleted; reported."""
    sweep_dir = Path(shutil.copytree(tiny_sweep.dir, tmp_path_factory.mktemp("real") / "sweep",
                                     ignore=shutil.ignore_patterns("report")))
    (sweep_dir / "1_mnist-bn-adam-seed0" / "metrics.json").unlink()
    shutil.rmtree(sweep_dir / "7_cifar10-none-adam-seed0")
    write_job(sweep_dir, [0.2], "failed", "RuntimeError: boom", norm="bn", seed=1,
              **{k: v for k, v in tiny_sweep.records["0_mnist-bn-sgd-seed0"]["hparams"].items()
                 if k not in ("norm", "seed")})
    assert main([str(sweep_dir), "--target-acc", "0.2"]) == 0
    return sweep_dir


@pytest.mark.slow
def test_a_real_sweeps_report_holds_its_records_numbers_figures_and_left_out_jobs(built):
    out = built / "report"
    rows = csv_rows(out / "summary.csv")
    assert "seed" not in rows[0] and len(rows) == 7  # the deleted job's group: none
    for row in rows:
        recs = [r for r in records(built, row["norm"])
                if (r["hparams"]["dataset"], r["hparams"]["optim"]) == (row["dataset"],
                                                                        row["optim"])]
        check_summary(row, recs, 0.2)
    counts = {(r["dataset"], r["optim"], r["norm"]): (r["n_failed"], r["n_unfinished"],
                                                      r["n_missing"]) for r in rows}
    assert counts["mnist", "sgd", "bn"] == ("1", "0", "0")
    assert counts["mnist", "adam", "bn"] == ("0", "1", "1")  # grouped with its siblings; no seed 1
    text = " ".join((out / "report.md").read_text().split())
    assert "_mnist-bn-sgd-seed1` | failed | RuntimeError: boom |" in text
    assert "| `1_mnist-bn-adam-seed0` | no metrics.json |" in text
    assert "| dataset=cifar10 norm=none optim=adam | never started" in text
    for name in ("curves_mnist_sgd", "weights_mnist_sgd", "hallucinations_cifar10_adam"):
        assert f"]({name}.png)" in text
        with Image.open(out / f"{name}.png") as image:
            assert image.size[0] > 500 and image.size[1] > 300
    assert "_Final first-layer weights figure skipped: no ok job has images/weights_final.png " \
           "on the BatchNorm side._" in text  # mnist, adam: its bn job has no record
    assert "## Pictures" in text
    ckey, by_norm = next((k, b) for k, b in settings(load_runs(built)) if slug(k) == "mnist_sgd")
    figure = comparison(ckey, by_norm, verdicts(load_runs(built), [("bn", "none")]))[1]
    assert [ax.get_title() for ax in figure["weights_mnist_sgd"].axes] == [
        "No BatchNorm (seed 0)", "BatchNorm (seed 0)"]
    assert [line.get_label() for line in figure["curves_mnist_sgd"].axes[0].get_lines()] == [
        "No BatchNorm (1 seed)", "BatchNorm (1 seed)"]
    tags = assert_images_are_the_png_files(out)  # each figure in TensorBoard: its PNG's pixels
    assert {"curves", "weights", "hallucinations"} <= {t.split("/")[0] for t in tags}
    # the cross-model confidence: the other ok MNIST runs' trained networks, from checkpoints
    import torch

    from bnstudy.pictures.measures import predict
    from bnstudy.pictures.table import load_net

    runs = load_runs(built).set_index("job", drop=False)
    images = torch.load(built / "0_mnist-bn-sgd-seed0" / "images" / "hallucinations_final.pt",
                        weights_only=True)["images"].float()
    others = [load_net(runs.loc[job], (1, 28, 28), 10)  # (1_mnist-bn-adam: no record)
              for job in ("2_mnist-none-sgd-seed0", "3_mnist-none-adam-seed0")]
    (row,) = [r for r in csv_rows(out / "pictures.csv") if r["job"] == "0_mnist-bn-sgd-seed0"]
    assert float(row["cross_conf"]) == pytest.approx(
        float(np.mean([float(predict(net, images).diagonal().mean()) for net in others])),
        abs=1e-6)  # (the CSV's 6 digits)


def colour_share(image: np.ndarray, colour: str) -> float:
    """The share of pixels within a small distance of a matplotlib colour."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return float((np.abs(image[..., :3].astype(int) - rgb).sum(-1) < 30).mean())


@pytest.mark.slow
def test_report_of_probed_runs_draws_both_figures(tiny_data, tmp_path):
    from bnstudy.probes import ActivationPercentiles, GradientBehaviour

    sweep = tmp_path / "sweep"
    for norm in ("bn", "none"):  # each job's record with the series of a probed fit
        job = write_job(sweep, [0.8, 0.9], norm=norm, optim="sgd")
        probes = [ActivationPercentiles(every_n_steps=2),
                  GradientBehaviour(every_n_steps=2, landscape_every_n_steps=3)]
        tiny_fit(tiny_data, None, make_classifier(norm, hidden_dim=32, lr=0.1), probes,
                 max_epochs=1, limit_val_batches=0)
        record = read_record(job) | {p.record_key: p.series() for p in probes}
        (job / "metrics.json").write_text(json.dumps(record))
    out = sweep / "report"
    out.mkdir()
    (out / "activations_stale.png").write_bytes(b"")

    assert main([str(sweep)]) == 0
    assert not (out / "activations_stale.png").exists()
    markdown = (out / "report.md").read_text()
    blue, orange = "#1f77b4", "#ff7f0e"  # tab:blue (BN) and tab:orange (no BN)
    for kind, size in (("activations", (1100, 840)), ("gradients", (1100, 750))):
        with Image.open(out / f"{kind}_mnist_sgd.png") as figure:
            pixels = np.asarray(figure.convert("RGB"))
        assert pixels.shape[1::-1] == size
        assert colour_share(pixels, blue) > 5e-4 and colour_share(pixels, orange) > 5e-4
        assert f"![{kind} mnist, sgd]({kind}_mnist_sgd.png)" in markdown
    medians = [f"{np.median(records(sweep, n)[0]['gradients']['landscape']['loss_range']):.3g}"
               for n in ("none", "bn")]
    assert f"No BatchNorm {medians[0]}, " in markdown and f"; BatchNorm {medians[1]}, " in markdown
    assert {"activations/mnist_sgd", "gradients/mnist_sgd"} <= assert_images_are_the_png_files(out)


@pytest.mark.parametrize("saved", [None, 0.02])
def test_the_margin_a_run_saved_in_its_config_decides_equivalence(tmp_path, saved):
    """Level within ±0.4 pts a seed: equivalent within a saved ±2 pts, not MNIST's ±0.5."""
    diffs = [0.01, -0.01, 0.012, -0.008, 0.004, -0.006]
    for seed, d in enumerate(diffs):
        for norm, acc in (("bn", 0.9 + d), ("none", 0.9)):
            job = write_job(tmp_path, [0.5, acc], norm=norm, seed=seed)
            if saved is not None:
                (job / ".hydra").mkdir()
                OmegaConf.save({"dataset": {"equivalence_margin": saved}},
                               job / ".hydra" / "config.yaml")
    (row,) = verdicts(load_runs(tmp_path), [("bn", "none")]).to_dict("records")
    assert (row["test"], row["n_paired"], row["margin"]) == ("paired t", 6, saved or 0.005)
    assert row["p_value"] > 0.5
    if saved is None:
        assert row["p_tost"] > 0.05 and row["verdict"] == "cannot tell"
        assert row_words(row).startswith("cannot tell, +0.03 pts (")
    else:
        assert row["p_tost"] < 0.01 and row["verdict"] == "equivalent"
        assert row_words(row).startswith("equivalent within ±2 pts, +0.03 pts (")


def test_a_report_refuses_a_search_cell_and_a_broken_tuning_record_and_ctrl_c_leaves_nothing(
        tmp_path, capsys, monkeypatch, refused):
    """A cell's search, the searches, a study still searching, a `tuning.json` not JSON."""
    cell = tmp_path / "search" / "mnist-bn-sgd"
    write_job(cell, [0.5, 0.6])
    (tmp_path / "multirun.yaml").write_text("{}")
    assert f"{cell} is one cell's search in the tuned study {tmp_path}, so nothing was written." \
        in refused(cell)
    assert f"{cell.parent} is the searches' folder in the tuned study {tmp_path}, so nothing " \
        f"was written. Report the study, which covers every cell: python -m bnstudy.report " \
        f"{tmp_path}" in refused(cell.parent)
    assert f"{tmp_path} holds a tuned study whose searches did not finish (no tuning.json yet)" \
        in refused(tmp_path)
    (tmp_path / "tuning.json").write_text('{"cells": [')
    assert f"{tmp_path / 'tuning.json'} cannot be read (" in refused(tmp_path)
    assert not [*tmp_path.rglob("report")]
    sweep = write_job(tmp_path / "grid", [0.5, 0.6]).parent

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    assert main([str(sweep)]) == 0
    earlier = {p.name: p.read_bytes() for p in (sweep / "report").iterdir() if p.is_file()}
    (sweep / "report" / "report.md").write_text("the earlier report")
    earlier["report.md"] = b"the earlier report"
    monkeypatch.setattr(write, "verdicts", interrupted)
    assert main([str(sweep)]) == 1  # a Ctrl-C while the report is written again
    assert capsys.readouterr().err.endswith(
        f"bnstudy.report: interrupted; nothing was written (the earlier report in "
        f"{sweep / 'report'} is as it was).\n")
    assert {p.name: p.read_bytes() for p in (sweep / "report").iterdir() if p.is_file()} == earlier
    assert sorted(p.name for p in sweep.iterdir()) == ["0_mnist-bn-sgd-seed0", "report"]  # no
    # half-written folder left beside it
    shutil.rmtree(sweep / "report")
    assert main([str(sweep)]) == 1 and not (sweep / "report").exists()
    assert capsys.readouterr().err == "bnstudy.report: interrupted; nothing was written.\n"


def test_a_sweep_over_a_list_valued_setting_is_grouped_by_it(tmp_path, figures_not_rendered):
    """`model.net.channels=[8],[8,8]`: a list is a cell of the table, written as typed."""
    for channels, norm, seed in itertools.product(([8], [8, 8]), ("bn", "none"), (0, 1)):
        write_job(tmp_path, [0.5, 0.6 + 0.1 * (norm == "bn") + 0.01 * seed], norm=norm,
                  seed=seed, channels=channels)
    answer = console_answer(tmp_path)
    assert "MNIST, SGD, channels=[8] (2 vs 2 seeds): " in answer
    assert "MNIST, SGD, channels=[8,8] (2 vs 2 seeds): " in answer
    assert main([str(tmp_path)]) == 0
    rows = csv_rows(tmp_path / "report" / "verdicts.csv")
    assert [row["channels"] for row in rows] == ["[8]", "[8,8]"]


def test_a_report_killed_outright_leaves_a_folder_the_next_removes(tmp_path, monkeypatch,
                                                                   refused):
    """The hidden folder of this machine's process gone, not one still being written."""
    write_job(tmp_path, [0.5, 0.6])
    hidden = f".report-{socket.gethostname()}-"
    (tmp_path / f"{hidden}999999999").mkdir()  # no such process
    (tmp_path / f"{hidden}1").mkdir()  # a process that runs (init)
    (tmp_path / f"{hidden}{os.getpid()}").mkdir()  # this process's id, from another before it
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [f"{hidden}1"]
    mkdir = Path.mkdir

    def read_only(path, *args, **kwargs):
        if path.name.startswith(hidden):
            raise OSError(30, "Read-only file system")
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert refused(tmp_path).endswith(  # one paragraph, not a traceback
        f"{tmp_path} cannot be written (Read-only file system), so nothing was written. Copy the "
        "sweep to a folder you can write to and report the copy.\n")
