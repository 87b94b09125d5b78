"""The claims registry (`bnstudy.report.claims`): C5 on records with known times, C6 from a
tuning record, the power numbers against statsmodels, a claim declared in a test, and C5's
clock (`bnstudy.report.cost`)."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
from helpers import write_job

from bnstudy.report import claims as C
from bnstudy.report.cli import main
from bnstudy.report.cost import StepCost
from bnstudy.report.runs import comparisons, group_runs, load_runs
from bnstudy.report.stats import power_of, welch_power


def cost(ratio: float) -> StepCost:
    return StepCost(ratio * 1e-3, 1e-3, ratio, ratio, ratio, ratio, 9)


def results_of(sweep_dir, ratio: float) -> dict[str, C.Result]:
    (study,) = C.settings(comparisons(group_runs(load_runs(sweep_dir)))).values()
    results, _ = C.setting_results(study, costs=lambda runs: {("mnist", "sgd"): cost(ratio)})
    return {f"{r.claim}{r.part}": r for r in results}


def write_pair(sweep_dir, bn: list[float], none: list[float], seeds=(0, 1, 2),
               spread: float = 0.004) -> None:
    """Three seeds a side whose curves are `bn` and `none` offset by −spread, 0, +spread (no
    BN: the other way round), so each side's mean is its curve."""
    for seed in seeds:
        for norm, curve in (("bn", bn), ("none", none)):
            offset = spread * (seed % 3 - 1) * (1 if norm == "bn" else -1)
            write_job(sweep_dir, [a + offset for a in curve], norm=norm, seed=seed,
                      max_epochs=len(curve))


# BN learns faster per epoch in both cases; its step costs twice no BN's.
FAST_EARLY = ([0.80, 0.90, 0.92, 0.93], [0.50, 0.60, 0.70, 0.80])  # ahead at equal time too
FAST_LATE = ([0.50, 0.60, 0.85, 0.95], [0.60, 0.70, 0.80, 0.90])   # ahead only per epoch


def test_c5_holds_when_bn_is_ahead_at_equal_time(tmp_path):
    write_pair(tmp_path, *FAST_EARLY)
    parts = results_of(tmp_path, ratio=2.0)
    full, half = parts["C5a (MNIST, SGD)"], parts["C5b (MNIST, SGD)"]
    # the no-BN runs' 4 epochs buy BN 2: 0.90 against 0.80; half of it, 1 against 2
    assert full.test.estimate == pytest.approx(0.90 - 0.80)
    assert half.test.estimate == pytest.approx(0.80 - 0.60)
    assert full.verdict == half.verdict == "holds"
    assert C.claim_verdicts(list(parts.values()))["C5"] == "holds"


def test_c5_does_not_hold_when_bn_wins_only_per_epoch(tmp_path):
    write_pair(tmp_path, *FAST_LATE)
    parts = results_of(tmp_path, ratio=2.0)
    assert parts["C5a (MNIST, SGD)"].test.estimate == pytest.approx(0.60 - 0.90)
    assert parts["C5a (MNIST, SGD)"].verdict == "does not hold"
    # at equal epochs BN ends ahead: the clock, not the curves, decides C5
    assert results_of(tmp_path, ratio=1.0)["C5a (MNIST, SGD)"].verdict == "holds"


def test_c5_at_a_budget_that_buys_bn_no_epoch_cannot_tell(tmp_path):
    write_pair(tmp_path, *FAST_EARLY)
    half = results_of(tmp_path, ratio=3.0)["C5b (MNIST, SGD)"]  # 2 no-BN epochs < 1 BN epoch
    assert math.isnan(half.test.estimate) and half.verdict == "cannot tell"


def test_power_matches_statsmodels_for_two_equal_groups():
    from statsmodels.stats.power import TTestIndPower

    a, b = [0.0, 1.0, 2.0, 3.0], [0.5, 1.5, 2.5, 3.5]  # equal spread: Welch's df = pooled df
    sd = float(np.std(a, ddof=1))
    detectable, needed = power_of([(1.0, a), (-1.0, b)])
    effect = TTestIndPower().solve_power(nobs1=4, ratio=1.0, alpha=0.05, power=0.8)
    assert detectable / sd == pytest.approx(effect, rel=1e-4)
    n = TTestIndPower().solve_power(effect_size=0.5 / sd, ratio=1.0, alpha=0.05, power=0.8)
    assert needed == math.ceil(n)
    # and the power function itself, at a known point
    assert welch_power(detectable, [sd**2, sd**2], [4, 4]) == pytest.approx(0.8, abs=1e-6)


def test_power_of_a_one_sample_part_matches_the_closed_form_for_many_seeds():
    from scipy import stats

    xs = [float(i % 7) for i in range(200)]  # large n: the t test is nearly the z test
    sd = float(np.std(xs, ddof=1))
    detectable, _ = power_of([(1.0, xs)])
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert detectable == pytest.approx(z * sd / math.sqrt(200), rel=0.01)


def test_a_cannot_tell_row_says_whether_seeds_or_size_is_missing(tmp_path):
    write_pair(tmp_path / "few", [0.5, 0.60], [0.5, 0.58], spread=0.02)  # 2 pts apart
    write_pair(tmp_path / "none", [0.5, 0.60], [0.5, 0.60], spread=0.02)  # the same means
    few = results_of(tmp_path / "few", 1.0)["C5a (MNIST, SGD)"]
    tie = results_of(tmp_path / "none", 1.0)["C5a (MNIST, SGD)"]
    assert few.verdict == tie.verdict == "cannot tell"
    assert few.note.startswith("too few seeds") and few.seeds_needed <= C.DECIDABLE
    assert f"{few.seeds_needed:.0f} seeds a side would decide" in few.note
    assert tie.note.startswith("no difference seen") and "below" in tie.note


def test_one_seed_cannot_tell_for_curve_and_rule_parts_alike(tmp_path):
    write_pair(tmp_path, *FAST_EARLY, seeds=(1,))
    assert {r.verdict for r in results_of(tmp_path, 2.0).values()} == {"cannot tell"}
    rows = [{"dataset": "mnist", "norm": "bn", "optim": "adam", "seed": 0, "noise_units": 0.1}]
    (p1c,) = C.evaluate([p for p in C.declare(["mnist"]) if p.claim + p.part == "P1c"],
                        {"pictures": rows})
    assert p1c.verdict == "cannot tell"  # a rule met by its only seed is not yet a verdict


def test_a_claim_declared_in_a_test_appears_in_claims_csv(tmp_path, monkeypatch,
                                                          figures_not_rendered):
    write_pair(tmp_path, *FAST_EARLY)
    declared = C.declare

    def with_c9(datasets):
        return [*declared(datasets), C.Part(
            "C9", "", "MNIST, SGD: BN's last epoch beats no BN's by more than nothing",
            "final val acc, BN − no BN", "final_val_acc", C._pair("mnist", "sgd"))]

    monkeypatch.setattr(C, "declare", with_c9)
    assert main([str(tmp_path)]) == 0
    with open(tmp_path / "report" / "claims.csv") as f:
        rows = {r["claim"] + r["part"]: r for r in csv.DictReader(f)}
    assert rows["C9"]["verdict"] == "holds" and rows["C9"]["claim_verdict"] == "holds"
    assert float(rows["C9"]["estimate"]) == pytest.approx(0.93 - 0.80, abs=1e-6)
    assert float(rows["C9"]["detectable_80"]) > 0 and rows["C9"]["seeds_needed"]
    assert "**C9 holds**" in (tmp_path / "report" / "report.md").read_text()


def write_tuned(sweep_dir, bn_test: list[float], none_test: list[float]) -> None:
    cells = []
    for norm, accs, lr in (("bn", bn_test, 0.1), ("none", none_test, 0.03)):
        jobs = [write_job(sweep_dir, [0.5, acc + 0.01], norm=norm, seed=seed, lr=lr).name
                for seed, acc in enumerate(accs)]
        cells.append({"dataset": "mnist", "optim": "sgd", "norm": norm,
                      "trials": [{"params": {"optim.optimizer.lr": lr}, "value": 0.9}] * 4,
                      "best_params": {"optim.optimizer.lr": lr}, "best_value": 0.9,
                      "final_jobs": jobs})
    (sweep_dir / C.TUNING_FILE).write_text(json.dumps(
        {"sampler": "TPE", "sampler_seed": 0, "n_trials": 4, "seeds": [0, 1, 2],
         "cells": cells}))


@pytest.mark.parametrize(("bn", "none", "verdict"), [
    ([0.95, 0.96, 0.955], [0.90, 0.91, 0.905], "holds"),
    ([0.90, 0.91, 0.905], [0.95, 0.96, 0.955], "does not hold"),
    ([0.93, 0.95, 0.94], [0.94, 0.93, 0.95], "cannot tell")])
def test_c6_compares_each_norms_tuned_reruns_on_the_test_split(tmp_path, bn, none, verdict,
                                                               figures_not_rendered):
    write_tuned(tmp_path, bn, none)
    assert main([str(tmp_path)]) == 0
    with open(tmp_path / "report" / "claims.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["claim"] == "C6"]
    assert row["verdict"] == verdict
    # test accuracy is val − 0.01 in write_job: the estimate is of the test split's numbers
    assert float(row["estimate"]) == pytest.approx(sum(bn) / 3 - sum(none) / 3, abs=1e-6)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| mnist | sgd | BN | 4 | lr=0.1 |" in text


def test_the_clock_takes_each_sides_fastest_block(monkeypatch):
    """BN's step burns 2 ms of CPU, no BN's 1 ms, and one block of each is slowed by 'noise'."""
    from bnstudy.report import cost

    slow = {"bn": iter([0.0] * 11 + [0.004] + [0.0] * 100),  # after the warm-up steps
            "none": iter([0.0] * 14 + [0.004] + [0.0] * 100)}

    def fake_step(cfg, norm):
        base = 0.002 if norm == "bn" else 0.001

        def step():
            end = time.thread_time() + base + next(slow[norm])
            while time.thread_time() < end:
                pass
        return step

    monkeypatch.setattr(cost, "_step_fn", fake_step)
    measured = cost.measure(None, rounds=5, steps=3)
    assert measured.ratio == pytest.approx(2.0, rel=0.15)
    assert measured.ratio_max > measured.ratio  # the noisy rounds are in the spread only
    assert measured.bn_s == pytest.approx(0.002, rel=0.3)


def test_a_time_verdict_that_the_clocks_spread_would_flip_cannot_be_told(tmp_path):
    write_pair(tmp_path, *FAST_LATE)  # BN ahead at equal epochs, behind at twice the cost
    (study,) = C.settings(comparisons(group_runs(load_runs(tmp_path)))).values()
    noisy = StepCost(1e-3, 1e-3, 1.0, 0.9, 2.0, 2.5, 9)  # fastest blocks 1.0, rounds' median 2.0
    results, _ = C.setting_results(study, costs=lambda runs: {("mnist", "sgd"): noisy})
    full = {f"{r.claim}{r.part}": r for r in results}["C5a (MNIST, SGD)"]
    assert full.verdict == "cannot tell" and "clock's spread" in full.note


def test_the_answer_opens_the_report_and_says_what_decides_it(tmp_path, figures_not_rendered):
    from bnstudy.report.answer import DECIDE

    write_pair(tmp_path / "three", *FAST_EARLY)
    write_pair(tmp_path / "one", *FAST_EARLY, seeds=(1,))
    for sweep in ("three", "one"):
        assert main([str(tmp_path / sweep)]) == 0
    three = (tmp_path / "three" / "report" / "report.md").read_text()
    assert three.index("## The answer") < three.index("## Summary")
    assert "| MNIST | SGD | 3, 3 | BN wins, +13.00 pts (" in three
    one = (tmp_path / "one" / "report" / "report.md").read_text()
    assert "| MNIST | SGD | 1, 1 | +13.00 pts: one seed a side, direction and size only |" in one
    assert DECIDE in one and DECIDE not in three


def test_accuracy_against_compute_places_each_epoch_at_steps_times_the_step_cost(tmp_path):
    from bnstudy.report.figures import time_figure

    write_pair(tmp_path, *FAST_EARLY)
    (study,) = C.settings(comparisons(group_runs(load_runs(tmp_path)))).values()
    fig = time_figure(study, {("mnist", "sgd"): StepCost(2e-3, 1e-3, 2.0, 2.0, 2.0, 2.0, 9)})
    lines = {line.get_label().split(" (")[0]: line for line in fig.axes[0].get_lines()
             if not line.get_label().startswith("_")}
    steps = np.array([10, 20, 30, 40])  # write_job: 10 steps an epoch
    assert np.allclose(lines["BatchNorm"].get_xdata(), steps * 2e-3)
    assert np.allclose(lines["No BatchNorm"].get_xdata(), steps * 1e-3)
    assert np.allclose(lines["BatchNorm"].get_ydata(), [80, 90, 92, 93])


def test_the_report_shows_the_clock_beside_the_time_claims(tmp_path, figures_not_rendered):
    from bnstudy.report.write import write_report

    write_pair(tmp_path, *FAST_EARLY)
    report = write_report(tmp_path, {}, costs=lambda runs: {("mnist", "sgd"): cost(2.0)})
    text = report.read_text()
    assert "![accuracy against compute](time_compute.png)" in text
    assert (report.parent / "time_compute.png").is_file()
    assert "| MNIST, SGD | 2000 µs | 1000 µs | **2.00** (2.00 to 2.00) |" in text


def test_the_sweeps_answer_names_only_pairs_with_both_norms(tmp_path):
    from bnstudy.report.answer import console_answer

    for seed in (0, 1):
        write_job(tmp_path, [0.5, 0.8 + seed / 100], norm="bn", seed=seed)
    assert console_answer(tmp_path) == ""  # BN alone answers nothing
    for seed in (0, 1):
        write_job(tmp_path, [0.5, 0.7 + seed / 100], norm="none", seed=seed)
    assert console_answer(tmp_path).splitlines()[1].startswith("  MNIST, SGD (2 vs 2 seeds): ")
