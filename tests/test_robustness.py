"""Learning-rate and batch-size robustness and the regime: the experiment configs, one real
tiny lr sweep, and the report's usable-range and regime figures and sentences."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    FAST,
    assert_images_are_the_png_files,
    compose_config,
    csv_rows,
    run_train,
    sweep_jobs,
    write_job,
)
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image
from scipy import stats as sps

from bnstudy.report.cli import main
from bnstudy.report.figures import regime_figure, robustness_figure
from bnstudy.report.runs import compared, group_keys, load_runs, never_started
from bnstudy.report.sections import regime_section, robustness_section, robustness_text
from bnstudy.report.stats import sweep_panels, usable_values, verdicts
from bnstudy.report.write import write_figures

TINY_LRS = (0.01, 3, 1e9)  # 1e9 makes plain SGD without BatchNorm diverge on the tiny data
LR_NAMES = ("0.01", "3", "1000000000.0")  # as the run name shows them (the override's text)


def panels(sweep_dir: Path, hparam: str = "lr") -> dict:
    runs = load_runs(sweep_dir)
    return sweep_panels(runs, group_keys(runs), hparam)


def verdict_rows(sweep_dir: Path) -> list[dict]:
    runs = load_runs(sweep_dir)
    return verdicts(runs, compared(runs)).to_dict("records")


def swept(cfg, key: str) -> list[float]:
    """The values `hydra.sweeper.params` sweeps `key` over, as the basic sweeper parses them."""
    (override,) = OverridesParser.create().parse_overrides(
        [f"{key}={cfg.hydra.sweeper.params[key]}"])
    return [float(v) for v in override.sweep_string_iterator()]


# --- configs ------------------------------------------------------------------------------


def half_decades(lrs: list[float], low: float, high: float) -> None:
    """A log grid from `low` to `high` in half decades, holding the study's lr and the old one."""
    assert lrs[0] == pytest.approx(low) and lrs[-1] == high
    assert np.allclose(np.diff(np.log10(lrs)), 0.5, atol=0.03) and {1e-3, 1e-2} <= set(lrs)


def test_the_experiments_sweep_their_grids_the_command_line_wins_and_lr0_01_is_the_old_lr():
    sweeps = {name: compose_config(f"experiment={name}") for name in ("lr_sweep", "batch_sweep")}
    for cfg in sweeps.values():  # their hparam by norm by optim, one seed, 3 epochs
        params = cfg.hydra.sweeper.params
        assert (params.norm, params.optim, str(params.seed)) == ("bn,none", "sgd,adam", "0")
        assert (cfg.dataset.name, cfg.trainer.max_epochs) == ("mnist", 3)
        assert cfg.run_name == "mnist-bn-sgd-seed0"
    assert swept(sweeps["batch_sweep"], "dataset.batch_size") == [8, 32, 128, 512]
    half_decades(swept(sweeps["lr_sweep"], "dataset.lr"), 1e-4, 10)
    cfg = compose_config("experiment=regime")  # both datasets, 3 seeds, the default epochs
    params = cfg.hydra.sweeper.params
    assert (params.dataset, params.norm, params.optim, str(params.seed)) == (
        "mnist,cifar10", "bn,none", "sgd,adam", "0,1,2")
    half_decades(swept(cfg, "dataset.lr"), 1e-4, 1)
    assert cfg.trainer.max_epochs == 10
    cfg = compose_config("experiment=lr_sweep", "dataset=cifar10", "dataset.max_epochs=5",
                         "seed=2", "hydra.sweeper.params.seed='0,1,2'")
    assert cfg.hydra.sweeper.params.seed == "0,1,2"
    assert (cfg.dataset.name, cfg.trainer.max_epochs) == ("cifar10", 5)
    assert cfg.run_name == "cifar10-bn-sgd-seed2-max_epochs=5"
    plain = compose_config()
    assert dict(plain.hydra.sweeper.params) == {"seed": "0,1,2"}  # a sweep's default seeds
    assert (plain.run_name, plain.trainer.max_epochs) == ("mnist-bn-sgd-seed0", 10)
    for dataset in ("mnist", "cifar10"):  # the study's lr, the old default one override away
        assert compose_config(f"dataset={dataset}").dataset.lr == 0.001
        old = compose_config(f"dataset={dataset}", "experiment=lr0.01")
        assert old.dataset.lr == 0.01 and dict(old.hydra.sweeper.params) == {"seed": "0,1,2"}
        assert old.trainer.max_epochs == 10 and old.dataset.batch_size == 64


# --- a real tiny lr sweep (slow) ----------------------------------------------------------


@pytest.fixture(scope="module")
def lr_sweep(tiny_data, tmp_path_factory) -> Path:
    """experiment=lr_sweep cut to sgd × TINY_LRS × seeds 0, 1, 1 epoch, no images: 12 runs."""
    sweep_dir = tmp_path_factory.mktemp("lr_sweep") / "multirun"
    done = run_train("-m", "experiment=lr_sweep", f"dataset.lr={','.join(map(str, TINY_LRS))}",
                     "optim=sgd", "seed=0,1", "dataset.max_epochs=1",
                     f"paths.data_dir={tiny_data}",
                     "~callbacks.weight_grid", "~callbacks.hallucinations",
                     *FAST, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is a sweep, but without -m" not in done.stderr and "Files: " not in done.stderr
    return sweep_dir  # (the jobs' own lines: their folders are in the summary)


def finals(sweep_dir: Path) -> dict[tuple[str, float], list[tuple[str, float]]]:
    """(norm, lr) → each seed's (status, final val acc, NaN if not ok), in job order."""
    found: dict[tuple, list] = {}
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        record = json.loads(path.read_text())
        acc = record["history"][-1]["val/acc"] if record["status"] == "ok" else math.nan
        found.setdefault((record["hparams"]["norm"], record["hparams"]["lr"]), []).append(
            (record["status"], acc))
    return found


@pytest.mark.slow
def test_a_real_lr_sweep_runs_its_grid_and_its_report_states_robustness_and_regime(
        lr_sweep, tmp_path):
    """The grid, what never started, the figures (in TensorBoard too) and report.md from the
    records' numbers (one test: the sweep is trained once per pytest worker)."""
    jobs = [p.name for p in sweep_jobs(lr_sweep)]
    assert len(jobs) == 4 * len(TINY_LRS)
    assert {name.split("_", 1)[1] for name in jobs} == {
        f"mnist-{norm}-sgd-seed{seed}-lr={lr}" for norm in ("bn", "none")  # only what varies
        for lr in LR_NAMES for seed in (0, 1)}
    assert set(load_runs(lr_sweep)["max_epochs"]) == {1}
    assert never_started(lr_sweep, load_runs(lr_sweep)) == []  # the plan: the sweeper's params
    copy = Path(shutil.copytree(lr_sweep, tmp_path / "sweep",
                                ignore=shutil.ignore_patterns("checkpoints")))
    shutil.rmtree(next(copy.glob("*_mnist-none-sgd-seed0-lr=3")))
    assert never_started(copy, load_runs(copy)) == ["seed=0 dataset.lr=3 norm=none"]

    assert main([str(lr_sweep)]) == 0
    out = lr_sweep / "report"
    for name in ("lr_mnist", "regime_lr"):
        with Image.open(out / f"{name}.png") as image:
            assert image.size[0] > 400 and image.size[1] > 300
    runs = finals(lr_sweep)
    truth = {key: ("ok" if all(s == "ok" for s, _ in seeds) else "diverged",
                   float(np.mean([a for _, a in seeds]))) for key, seeds in runs.items()}
    assert truth["none", 1e9][0] == "diverged"
    (ax,) = robustness_figure("lr", "mnist", panels(lr_sweep)["mnist"]).axes
    assert ax.get_title() == "sgd" and ax.get_xscale() == "log"
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert list(lines) == ["No BatchNorm", "BatchNorm"]
    for norm, label in (("none", "No BatchNorm"), ("bn", "BatchNorm")):
        assert list(lines[label].get_xdata()) == list(TINY_LRS)
        expected = [truth[norm, lr][1] for lr in TINY_LRS]
        assert np.allclose(lines[label].get_ydata(), expected, equal_nan=True)
    marks = {line.get_label(): line for line in ax.get_lines() if line.get_marker() == "x"}
    x, y = marks["No BatchNorm: diverged (2)"].get_data()
    assert x[0] == pytest.approx(1e9, rel=0.1) and y[0] == 0
    (threshold,) = [line for line in ax.get_lines() if line.get_label().startswith("usable")]
    best = max(acc for status, acc in truth.values() if status == "ok")
    assert threshold.get_ydata()[0] == pytest.approx(best - 0.05)
    usable = {norm: [lr for lr in TINY_LRS if truth[norm, lr][0] == "ok"
                     and truth[norm, lr][1] >= best - 0.05 - 1e-9] for norm in ("bn", "none")}
    assert usable_values(one_panel(lr_sweep)) == (pytest.approx(best), usable)
    text = (out / "report.md").read_text()
    assert "## Learning-rate robustness" in text and "![learning rate mnist](lr_mnist.png)" in text
    assert "at most 5 percentage points below the best" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("- **mnist, sgd**")]
    assert f"(best {best:.2%}: " in line
    (no_bn,) = [part for part in line.split("; ") if "No BatchNorm " in part]
    assert "diverged at lr 1e+09" in no_bn
    counts = {norm: len(lrs) for norm, lrs in usable.items()}
    if counts["bn"] == counts["none"]:
        assert "equally wide" in line
    else:
        wider = "BatchNorm" if counts["bn"] > counts["none"] else "No BatchNorm"
        assert f". {wider} has the wider usable range" in line
    assert "never started" not in text
    assert {"lr/mnist", "regime/lr"} <= assert_images_are_the_png_files(out)

    rows = csv_rows(out / "verdicts.csv")  # the regime: BN − no BN at each lr
    assert [(r["dataset"], r["optim"], float(r["lr"])) for r in rows] == [
        ("mnist", "sgd", lr) for lr in TINY_LRS]
    for row in rows[:2]:  # at 1e9 no BN diverged: no test
        bn, none = ([a for s, a in runs[norm, float(row["lr"])] if s == "ok"]
                    for norm in ("bn", "none"))
        assert float(row["diff"]) == pytest.approx(np.mean(bn) - np.mean(none), abs=1e-6)
        if np.ptp(bn) or np.ptp(none):
            p = (sps.ttest_rel(bn, none) if row["test"] == "paired t"  # same seeds, job order
                 else sps.ttest_ind(bn, none, equal_var=False)).pvalue
            assert float(row["p_value"]) == pytest.approx(p, abs=1e-6)
    (ax,) = regime_figure("lr", pd.DataFrame(verdict_rows(lr_sweep))).axes
    (bars,) = ax.containers
    assert list(bars.lines[0].get_xdata()) == list(TINY_LRS)
    assert np.allclose(bars.lines[0].get_ydata()[:2], [100 * float(r["diff"]) for r in rows[:2]],
                       atol=1e-3)
    assert "## Is BatchNorm worth it across the learning rate?" in text
    assert "![BN − no BN vs learning rate](regime_lr.png)" in text
    for row in rows:
        assert f"- mnist, sgd, lr={row['lr']}: BN {row['verdict']} (" in text
    assert "## Claims" in text and "### lr=0.01" in text and "### lr=3" in text
    assert "| setting | C1 |" in " ".join(text.split())  # one claim per setting: MNIST/SGD


# --- the usable range on hand-made runs ---------------------------------------------------


GRID = (1e-3, 1e-2, 1e-1, 1.0)


def one_panel(sweep_dir: Path, hparam: str = "lr") -> dict[str, dict]:
    """The hand-made sweep's one panel (mnist, sgd): by norm, by value of `hparam`."""
    return panels(sweep_dir, hparam)["mnist"][(("optim", "sgd"),)]


def by_norm(sweep_dir: Path, accs: dict[str, list[float]],
            statuses: dict | None = None) -> dict[str, dict]:
    """One panel: per norm a job for each GRID lr, of that accuracy and `statuses[norm, lr]`."""
    for norm, values in accs.items():
        for lr, acc in zip(GRID, values, strict=True):
            write_job(sweep_dir, [acc], (statuses or {}).get((norm, lr), "ok"), norm=norm, lr=lr)
    return one_panel(sweep_dir)


@pytest.mark.parametrize("better", ["bn", "none"])
def test_usable_range_and_the_wider_norm_flip_when_the_numbers_flip(tmp_path, better):
    wide, narrow = [0.93, 0.97, 0.96, 0.95], [0.50, 0.96, 0.90, 0.10]
    accs = {"bn": wide, "none": narrow} if better == "bn" else {"bn": narrow, "none": wide}
    panel = by_norm(tmp_path, accs)
    best, usable = usable_values(panel)
    assert best == pytest.approx(0.97)
    assert usable[better] == list(GRID)  # 0.93 is 4 points below 0.97: still usable
    assert usable["none" if better == "bn" else "bn"] == [1e-2]
    text = robustness_text("lr", "mnist, sgd", panel)
    winner = "BatchNorm" if better == "bn" else "No BatchNorm"
    assert f". {winner} has the wider usable range (4 vs 1 values)." in text
    assert f"{winner} 0.001 to 1 (4 of 4 values)" in text
    assert "0.01 only (1 of 4 values)" in text
    assert f"(best 97.00%: {winner} at lr=0.01)" in text


def test_diverged_failed_and_far_points_are_not_usable(tmp_path):
    accs = {"bn": [0.97, 0.90, 0.97, 0.97], "none": [0.97, 0.97, 0.97, 0.97]}
    panel = by_norm(tmp_path, accs, {("none", 0.1): "diverged", ("none", 1.0): "failed"})
    _, usable = usable_values(panel)
    assert usable == {"bn": [1e-3, 1e-1, 1.0], "none": [1e-3, 1e-2]}
    text = robustness_text("lr", "mnist, sgd", panel)
    assert "BatchNorm 0.001, 0.1, 1 (3 of 4 values, not adjacent in the grid)" in text
    assert "No BatchNorm 0.001 to 0.01 (2 of 4 values), diverged at lr 0.1, failed at lr 1" in text
    assert usable_values(panel, within=0.08)[1]["bn"] == list(GRID)
    (ax,) = robustness_figure("lr", "mnist", {(("optim", "sgd"),): panel}).axes
    assert [t.get_text() for t in ax.texts] == ["No BatchNorm: 1 failed (not drawn)"]
    assert [line.get_label() for line in ax.get_lines() if line.get_marker() == "x"] == [
        "No BatchNorm: diverged (1)"]  # the failed run is not marked as diverged
    late = by_norm(tmp_path / "unfinished", accs, {("none", 1.0): "still running"})
    (ax,) = robustness_figure("lr", "mnist", {(("optim", "sgd"),): late}).axes
    assert [t.get_text() for t in ax.texts] == ["No BatchNorm: 1 unfinished (not drawn)"]
    assert "accuracy after 3 epoch(s) vs" in " ".join(ax.figure._suptitle.get_text().split())
    for (optim, epochs), norm, lr in itertools.product(  # the title names no one run length
            (("sgd", 3), ("adam", 5)), ("bn", "none"), (0.01, 0.1)):
        write_job(tmp_path / "lengths", [0.9], norm=norm, optim=optim, lr=lr, max_epochs=epochs)
    fig = robustness_figure("lr", "mnist", panels(tmp_path / "lengths", "lr")["mnist"])
    assert "final validation accuracy vs" in " ".join(fig._suptitle.get_text().split())
    nothing = by_norm(tmp_path / "all_diverged", {"bn": [0.9] * 4},
                      {("bn", lr): "diverged" for lr in GRID})
    assert "none is usable" in robustness_text("lr", "mnist, sgd", nothing)


def test_three_norms_name_the_widest_ranges(tmp_path):
    """Two of three norms tied widest: both named, "have", "widest", the counts largest first."""
    panel = by_norm(tmp_path, {"bn": [0.97] * 4, "layer": [0.97] * 4,
                               "none": [0.5, 0.97, 0.5, 0.5]})
    assert robustness_text("lr", "mnist, sgd", panel).endswith(
        " BatchNorm and LayerNorm have the widest usable range (4 vs 4 vs 1 values).")


def test_seeds_are_averaged_and_a_diverged_seed_spoils_its_point(tmp_path):
    for lr, seed, acc, status in ((0.1, 0, 0.96, "ok"), (0.1, 1, 0.90, "ok"),
                                  (1.0, 0, 0.97, "ok"), (1.0, 1, 0.0, "diverged"),
                                  (0.01, 0, 0.95, "ok"), (0.01, 1, 0.95, "ok")):
        write_job(tmp_path, [acc], status, lr=lr, seed=seed)
    panel = one_panel(tmp_path)
    best, usable = usable_values(panel)
    assert best == pytest.approx(0.95)  # lr=1 has a diverged seed, so it is not a candidate
    assert usable == {"bn": [0.01, 0.1]}  # mean 0.93 at lr=0.1
    assert "BatchNorm 0.01 to 0.1 (2 of 3 values), diverged at lr 1." in \
        robustness_text("lr", "mnist, sgd", panel)  # one seed of two diverged there
    fig = robustness_figure("lr", "mnist", {(("optim", "sgd"),): panel})
    (container,) = fig.axes[0].containers
    assert np.allclose(container.lines[0].get_ydata(), [0.95, 0.93, 0.97])
    segments = container.lines[2][0].get_segments()  # the error bars: ± the sample std
    assert segments[1][1][1] - segments[1][0][1] == pytest.approx(2 * np.std([0.96, 0.90], ddof=1))


def test_batch_size_section_figure_and_tensorboard_tag(tmp_path):
    sweep_dir, out = tmp_path / "sweep", tmp_path / "report"
    for norm, accs in (("bn", (0.97, 0.96, 0.95, 0.90)), ("none", (0.90, 0.96, 0.93, 0.5))):
        for bs, acc in zip((8, 32, 128, 512), accs, strict=True):
            write_job(sweep_dir, [acc], norm=norm, batch_size=bs)
    runs = load_runs(sweep_dir)
    text, figures = robustness_section("batch_size", runs, group_keys(runs))
    assert text.startswith("## Batch-size sensitivity")
    assert "BatchNorm 8 to 128 (3 of 4 values)" in text and "No BatchNorm 32 to 128" in text
    assert "BatchNorm has the wider usable range (3 vs 2 values)." in text
    (ax,) = figures["batch_size_mnist"].axes
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == [
        "8", "32", "128", "512"]
    out.mkdir()
    write_figures(figures, text, out)
    assert assert_images_are_the_png_files(out) == {"batch_size/mnist"}


# --- the verdict across the study's regime (experiment=regime) ---------------------------


def test_regime_figure_fills_the_significant_points_and_flips_with_the_records(tmp_path):
    high, low, mixed = [0.90, 0.92, 0.91], [0.80, 0.81, 0.83], [0.84, 0.90, 0.82]
    for (optim, lr, norm), accs in {
            ("sgd", 0.01, "bn"): high, ("sgd", 0.01, "none"): low,     # BN wins
            ("sgd", 0.1, "bn"): low, ("sgd", 0.1, "none"): high,       # BN loses
            ("adam", 0.01, "bn"): mixed, ("adam", 0.01, "none"): low,  # within the spread
            ("adam", 0.1, "bn"): [0.9], ("adam", 0.1, "none"): low}.items():  # 1 seed: no test
        for seed, acc in enumerate(accs):
            write_job(tmp_path, [acc], optim=optim, lr=lr, norm=norm, seed=seed)
    rows = verdict_rows(tmp_path)
    assert [(r["optim"], r["lr"], r["verdict"]) for r in rows] == [
        ("sgd", 0.01, "wins"), ("sgd", 0.1, "loses"), ("adam", 0.01, "cannot tell"),
        ("adam", 0.1, "no test")]
    assert (rows[3]["n_treatment"], rows[3]["n_baseline"], math.isnan(rows[3]["p_value"])) == (
        1, 3, True)  # no test, yet the difference of the means is there
    assert rows[3]["diff"] == pytest.approx(0.9 - np.mean(low))
    (ax,) = regime_figure("lr", pd.DataFrame(rows)).axes
    assert ax.get_title() == "mnist" and ax.get_xscale() == "log"
    bars = {c.get_label(): c for c in ax.containers}
    assert list(bars) == ["sgd", "adam"]
    diff = 100 * (np.mean(high) - np.mean(low))
    assert np.allclose(bars["sgd"].lines[0].get_ydata(), [diff, -diff])
    (segments,) = [bars["sgd"].lines[2][0].get_segments()]
    low_ci, high_ci = (100 * rows[0][k] for k in ("diff_ci_low", "diff_ci_high"))
    assert (segments[0][0][1], segments[0][1][1]) == (pytest.approx(low_ci), pytest.approx(high_ci))
    dots = [line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata())]
    filled = {(float(x), line.get_markerfacecolor() != "white") for line in dots
              for x in line.get_xdata()}
    assert filled == {(0.01, True), (0.1, True), (0.01, False), (0.1, False)}
    assert [t.get_text() for t in ax.texts] == ["adam: no test at lr 0.1 (1 ok BN)"]
    rows[0]["p_holm"] = 0.2  # p < 0.05 alone, not among the comparisons: hollow
    (ax,) = regime_figure("lr", pd.DataFrame(rows)).axes
    assert (0.01, True) not in {(float(x), line.get_markerfacecolor() != "white")
                                for line in ax.get_lines() if line.get_marker() == "o"
                                and line.get_color() == "C0" for x in line.get_xdata()}


def test_never_started_reads_an_interpolated_override_as_typed(tmp_path):
    """multirun.yaml holds `run_name=${...}` as typed, each job's overrides.yaml escaped."""
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      norm: bn,none\n  overrides:\n    task:\n"
        "    - run_name=${dataset.name}-x\n")
    for norm in ("bn", "none"):
        job = write_job(tmp_path, [0.9], norm=norm)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- norm={norm}\n- run_name=$\\{{dataset.name\\}}-x\n")
    assert never_started(tmp_path, load_runs(tmp_path)) == []
    runs = load_runs(tmp_path)
    assert never_started(tmp_path, runs.iloc[:1]) == ["norm=none"]  # the runs read, not the folders
    shutil.rmtree(job)
    assert never_started(tmp_path, load_runs(tmp_path)) == ["norm=none"]


def test_a_side_that_diverged_everywhere_is_marked_not_dropped(tmp_path):
    for seed in (0, 1):
        write_job(tmp_path, [0.9 + seed / 100], norm="bn", seed=seed, lr=0.01)
        write_job(tmp_path, [0.8 + seed / 50], norm="none", seed=seed, lr=0.01)  # paired: spread
        write_job(tmp_path, [0.7 + seed / 100], norm="bn", seed=seed, lr=1.0)
        write_job(tmp_path, [0.1, 0.1], "diverged", norm="none", seed=seed, lr=1.0)
        for norm in ("bn", "none"):  # both sides diverged: no arrow
            write_job(tmp_path, [0.1, 0.1], "diverged", norm=norm, seed=seed, lr=10.0)
    rows = verdict_rows(tmp_path)
    assert [(r["lr"], r["n_treatment"], r["n_baseline"], r["baseline_diverged"], r["verdict"])
            for r in rows] == [
        (0.01, 2, 2, 0, "wins"), (1.0, 2, 0, 2, "no test"), (10.0, 0, 0, 2, "no test")]
    (ax,) = regime_figure("lr", pd.DataFrame(rows)).axes
    (arrow,) = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert list(arrow.get_xdata()) == [1.0] and arrow.get_label() == (
        "sgd: only BatchNorm finished ok")
    assert [line.get_marker() for line in ax.get_lines()].count("v") == 0
    assert [" ".join(t.get_text().split()) for t in ax.texts] == [
        "sgd: no test at lr 1 (0 ok no BN, 2 diverged) sgd: no test at lr 10 (0 ok BN, 2 "
        "diverged; 0 ok no BN, 2 diverged)"]
    text = regime_section("lr", pd.DataFrame(rows))[0]
    assert ("- mnist, sgd, lr=1.0: BN no test (a side has no ok run: BN 2 ok, 0 diverged; "
            "no BN 0 ok, 2 diverged" in text)


def test_the_regime_figure_at_one_seed_says_once_a_line_why_no_point_is_tested(tmp_path):
    for optim, lr in itertools.product(("sgd", "adam"), (0.0001, 0.001, 0.01, 0.1, 1.0)):
        write_job(tmp_path, [0.8], dataset="mnist", optim=optim, norm="bn", lr=lr, seed=0)
        write_job(tmp_path, [0.75], dataset="mnist", optim=optim, norm="none", lr=lr, seed=0)
    fig = regime_figure("lr", pd.DataFrame(verdict_rows(tmp_path)))
    [note] = fig.axes[0].texts  # (each value's reason listed ran off the panel)
    assert note.get_text() == "\n".join(f"{optim}: no test at any lr (1 ok BN; 1 ok no BN)"
                                        for optim in ("sgd", "adam"))
    assert note.get_window_extent().x1 <= fig.axes[0].get_window_extent().x1
    assert "bar: 95% interval;" in " ".join(fig._suptitle.get_text().split())  # no test named


@pytest.mark.parametrize("datasets", [["mnist"], ["mnist", "cifar10", "fashion_mnist", "a", "b"]])
def test_the_regime_figure_is_laid_out_for_any_number_of_datasets(tmp_path, datasets):
    """One dataset: the whole title inside the figure; five: at most three panels a row."""
    for dataset, optim, batch_size, (seed, acc) in itertools.product(
            datasets, ("sgd", "adam"), (8, 512), enumerate([0.80, 0.82, 0.81])):
        write_job(tmp_path, [acc], dataset=dataset, optim=optim, norm="bn",
                  batch_size=batch_size, seed=seed)
        write_job(tmp_path, [acc - 0.05 + 0.01 * seed], dataset=dataset, optim=optim,
                  norm="none", batch_size=batch_size, seed=seed)
    rows = verdict_rows(tmp_path)
    fig = regime_figure("batch_size", pd.DataFrame(rows))
    inside = fig.bbox.padded(1)  # (pixels)
    title = fig._suptitle.get_window_extent()
    assert inside.x0 <= title.x0 and title.x1 <= inside.x1 and title.y1 <= inside.y1
    assert "bar: 95% paired t interval;" in " ".join(fig._suptitle.get_text().split())  # as
    # verdicts.csv's test: the seeds pair
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == datasets
    assert panels[0].xaxis.get_transform().base == 2  # batch sizes: powers of two
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == -(-len(datasets) // 3)
    for ax in panels:
        box = ax.get_tightbbox()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0


def test_the_regime_figure_and_section_name_the_pairs_compared(tmp_path):
    """LayerNorm − no norm reads as such (it read "BN − no BN"); two: treatment − baseline."""
    for lr, (seed, acc), (norm, shift) in itertools.product(
            (0.01, 0.1), enumerate([0.80, 0.82, 0.81]),
            (("layer", 0.0), ("bn", 0.02), ("none", -0.05))):
        write_job(tmp_path, [acc + shift + 0.01 * seed * (norm == "none")],
                  norm=norm, lr=lr, seed=seed)
        if lr == 0.1:  # and jobs that record no lr: no row of theirs here
            write_job(tmp_path, [0.5 + 0.01 * seed], norm=norm, seed=seed, lr=None)
    runs = load_runs(tmp_path)
    for pairs, question, difference in (
            ([("layer", "none")], "Is LayerNorm worth it", "LayerNorm − no norm"),
            ([("bn", "none")], "Is BatchNorm worth it", "BN − no BN"),
            (compared(runs), "Is each norm worth it", "treatment − baseline")):
        rows = verdicts(runs, pairs)
        (ax,) = regime_figure("lr", rows).axes
        assert ax.get_ylabel() == f"{difference}, final val acc (points)"
        title = " ".join(ax.figure._suptitle.get_text().split())
        assert title.startswith(f"{question}? {difference} vs learning rate")
        text = regime_section("lr", rows)[0]
        assert text.startswith(f"## {question} across the learning rate?\n\n{difference} in ")
        assert f"![{difference} vs learning rate](regime_lr.png)" in text
        assert text.count("\n- ") == 2 * len(pairs)  # not the jobs without an lr
        line = "- mnist, sgd, lr=0.01: LayerNorm {}wins (+4.00 pts, 81.00% vs 77.00%, p = 0.02"
        assert line.format("against no norm " if len(pairs) > 1 else "") in text \
            or pairs == [("bn", "none")]
