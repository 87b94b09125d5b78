"""The claims (`claims`, `verdicts`, `answer`, `cost`): C1–C6, their clock, the answer."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import csv_rows, read_record, write_job
from omegaconf import OmegaConf
from scipy import stats as sps

from bnstudy.records import TUNING_FILE
from bnstudy.report import answer as A
from bnstudy.report import claims as C
from bnstudy.report import cost
from bnstudy.report import verdicts as V
from bnstudy.report.cli import main
from bnstudy.report.cost import StepCost, time_table, val_acc_at
from bnstudy.report.figures import time_figure
from bnstudy.report.render import claim_rows, claims_block, deciding, estimate_text, method, note
from bnstudy.report.runs import group_keys, load_runs, quantities
from bnstudy.report.sections import claims_section, cost_table
from bnstudy.report.stats import IMAGES, PAIRED, power_of
from bnstudy.report.write import write_report


def cost_of(ratio: float) -> StepCost:
    return StepCost(ratio * 1e-3, 1e-3, ratio, ratio, ratio, ratio, ratio, 9)


def results_of(sweep_dir, step: float | StepCost | None = None) -> dict[str, V.Result]:
    """The sweep's curve and time claims, BN's step costing `step` (None: no time claims)."""
    clock = {} if step is None else {
        ("mnist", "sgd"): step if isinstance(step, StepCost) else cost_of(step)}
    results, _ = V.setting_results(load_runs(sweep_dir), costs=lambda runs: clock)
    return {f"{r.claim}{r.part}": r for r in results}


def write_pair(sweep_dir, bn: list[float], none: list[float], seeds=(0, 1, 2),
               spread: float = 0.004) -> None:
    """Three seeds a side offset by −spread, 0, +spread (no BN reversed): means `bn`, `none`."""
    for seed in seeds:
        for norm, curve in (("bn", bn), ("none", none)):
            offset = spread * (seed % 3 - 1) * (1 if norm == "bn" else -1)
            write_job(sweep_dir, [a + offset for a in curve], norm=norm, seed=seed,
                      max_epochs=len(curve))


# BN learns faster per epoch in both cases; its step costs twice no BN's.
FAST_EARLY = ([0.80, 0.90, 0.92, 0.93], [0.50, 0.60, 0.70, 0.80])  # ahead at equal time too
FAST_LATE = ([0.50, 0.60, 0.85, 0.95], [0.60, 0.70, 0.80, 0.90])   # ahead only per epoch


def test_c5_holds_when_bn_is_ahead_at_equal_time_not_only_per_epoch_beside_its_clock(
        tmp_path, figures_not_rendered):
    write_pair(tmp_path / "early", *FAST_EARLY)
    parts = results_of(tmp_path / "early", 2.0)
    full, half = parts["C5a (MNIST, SGD)"], parts["C5b (MNIST, SGD)"]
    # the no-BN runs' 4 epochs buy BN 2: 0.90 against 0.80; half of it, 1 against 2
    assert full.test.estimate == pytest.approx(0.90 - 0.80)
    assert half.test.estimate == pytest.approx(0.80 - 0.60)
    assert full.verdict == half.verdict == "holds"
    assert V.claim_verdicts(list(parts.values()))["C5"] == "holds"
    half = results_of(tmp_path / "early", 3.0)["C5b (MNIST, SGD)"]  # buys BN no epoch
    assert math.isnan(half.test.estimate) and half.verdict == "cannot tell"
    assert half.note.startswith("a side's ok runs have no ")  # not "fewer than 2 ok seeds"
    assert estimate_text(half) == "— (a side without values)"  # (its runs are ok)
    write_pair(tmp_path / "late", *FAST_LATE)
    noisy = StepCost(1e-3, 1e-3, 1.0, 0.9, 1.0, 2.0, 9.0, 9)  # charged: the bound 2.0, not 1.0
    late = results_of(tmp_path / "late", noisy)["C5a (MNIST, SGD)"]
    assert late.test.estimate == pytest.approx(0.60 - 0.90) and late.verdict == "does not hold"
    # at equal epochs BN ends ahead: the clock, not the curves, decides C5
    assert results_of(tmp_path / "late", 1.0)["C5a (MNIST, SGD)"].verdict == "holds"
    report = write_report(tmp_path / "early", {}, costs=lambda runs: {
        ("mnist", "sgd"): cost_of(2.0)})  # the report shows the clock beside the time claims
    text = " ".join(report.read_text().split())
    assert "![accuracy against compute](time_compute.png)" in text
    assert (report.parent / "time_compute.png").is_file()
    # no BN's mean ends at 0.80; BN's is 0.80 at its first epoch end, 2 no-BN epochs
    assert "| MNIST, SGD | 2000 µs | 1000 µs | **2.00** (2.00; 2.00; 2.00 to 2.00) | 1.00 | 2.0 " \
           "| 4.0 |" in text
    assert "C5 charges BN the median round ratio's 95% upper bound (of 9 rounds" in text


def test_a_cannot_tell_row_says_how_many_seeds_would_decide_and_is_written_in_its_units(
        tmp_path):
    """Never "no difference"; the estimate and claims.csv row in the part's units."""
    write_pair(tmp_path / "few", [0.5, 0.60], [0.5, 0.58], spread=0.02)  # 2 pts apart
    write_pair(tmp_path / "none", [0.5, 0.60], [0.5, 0.60], spread=0.02)  # the same means
    few = results_of(tmp_path / "few", 1.0)["C5a (MNIST, SGD)"]
    tie = results_of(tmp_path / "none", 1.0)["C5a (MNIST, SGD)"]
    assert few.verdict == tie.verdict == "cannot tell"
    assert f"; {few.seeds_needed:.0f} seeds a side would decide" in note(few)
    assert tie.would_show == "equivalence" and f"; {tie.seeds_needed:.0f} seeds a side would " \
        "show equivalence;" in note(tie)  # a mean difference of 0: TOST, not a difference
    never_few, never_tie = (note(replace(p, seeds_needed=math.inf, would_show="a difference"))
                            for p in (few, tie))  # 1000 seeds short: TOST too, in the margin
    assert "over 1000 seeds a side would decide a difference of the size observed or show it " \
        "equivalent;" in never_tie
    assert "would decide a difference of the size observed;" in never_few
    for part in (few, tie):  # wide: neither a difference nor equivalence within ±0.5 pts
        assert "not shown within ±0.50 pts either (TOST)" in note(part)
        assert "no difference" not in note(part)
    assert "observed;" in note(replace(tie, would_show="a difference"))  # seeds would decide
    assert note(replace(few, test=replace(few.test, p_value=math.nan))) == \
        "no spread over the seeds: no test"
    low, estimate, high = (100 * x for x in (few.test.ci_low, few.test.estimate,
                                             few.test.ci_high))
    assert estimate_text(few) == f"{estimate:+.2f} pts (95% CI {low:+.2f} to {high:+.2f})"
    (row,) = claim_rows([few], {})
    assert (row["dataset"], row["unit"], row["test"]) == ("mnist", "accuracy", few.test.test)
    loss = replace(few, declared=replace(few.declared, fmt="loss", quantity="final_val_loss"))
    assert claim_rows([loss], {})[0]["unit"] == "loss"
    across = replace(few, declared=replace(few.declared, terms=(
        C.Term(1.0, "mnist", "sgd", "bn"), C.Term(-1.0, "cifar10", "sgd", "bn"))))
    assert claim_rows([across], {})[0]["dataset"] == ""  # a claim across datasets: none
    same = replace(few, verdict="equivalent")
    block = claims_block([few, same])
    said = [line for line in block if line.startswith("- ")]
    assert len(said) == 2 and said[0].endswith(f"{note(few)}.")
    assert "does not hold, equivalent**" in said[1] and note(same) in said[1]


def write_tuned(sweep_dir, bn_test: list[float], none_test: list[float]) -> None:
    cells = []
    for norm, accs, lr in (("bn", bn_test, 0.1), ("none", none_test, 0.03)):
        jobs = [write_job(sweep_dir, [0.5, acc + 0.01], norm=norm, seed=seed, lr=lr).name
                for seed, acc in enumerate(accs)]
        cells.append({"dataset": "mnist", "optim": "sgd", "norm": norm,
                      "trials": [{"params": {"optim.optimizer.lr": lr}, "value": 0.9}] * 4,
                      "best_params": {"optim.optimizer.lr": lr}, "best_value": 0.9,
                      "final_jobs": jobs})
    (sweep_dir / TUNING_FILE).write_text(json.dumps(
        {"sampler": "TPE", "sampler_seed": 0, "n_trials": 4, "seeds": [0, 1, 2],
         "cells": cells}))


@pytest.mark.parametrize(("bn", "none", "verdict", "images"), [
    ([0.95, 0.96, 0.955], [0.90, 0.91, 0.905], "holds", False),
    ([0.90, 0.91, 0.905], [0.95, 0.96, 0.955], "does not hold", False),
    ([0.93, 0.95, 0.94], [0.94, 0.93, 0.95], "cannot tell", True)])
def test_c6_compares_each_norms_tuned_reruns_on_the_test_split(tmp_path, bn, none, verdict,
                                                               images, figures_not_rendered):
    """verdicts.csv's row tests as C6 does, both adding the test images' error where saved."""
    write_tuned(tmp_path, bn, none)
    rng = np.random.default_rng(0)
    for record in tmp_path.glob("*/metrics.json") if images else ():
        acc = read_record(record.parent)["test"]["acc"]
        np.save(record.parent / "test_correct.npy", rng.random(400) < acc)
    assert main([str(tmp_path)]) == 0
    (c6,) = [r for r in csv_rows(tmp_path / "report" / "claims.csv") if r["claim"] == "C6"]
    assert c6["verdict"] == verdict
    # test accuracy is val − 0.01 in write_job: the estimate is of the test split's numbers
    assert float(c6["estimate"]) == pytest.approx(sum(bn) / 3 - sum(none) / 3, abs=1e-6)
    text = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "| mnist | sgd | BN | 4 | lr=0.1 |" in text
    (row,) = csv_rows(tmp_path / "report" / "verdicts.csv")  # as C6's: not on the val accs
    test = "Welch + test images" if images else "Welch"
    assert (row["quantity"], row["test"], c6["test"], row["verdict"]) == ("test_acc", test, test, {
        "holds": "wins", "does not hold": "loses"}.get(verdict, "cannot tell"))
    assert float(row["treatment_mean"]) == pytest.approx(sum(bn) / 3, abs=1e-6)
    for column, of_row in (("estimate", "diff"), ("ci_low", "diff_ci_low"),
                           ("ci_high", "diff_ci_high"), ("p_value", "p_value")):
        assert float(row[of_row]) == pytest.approx(float(c6[column]), rel=1e-9), column
    assert " on test accuracy (Welch: its own tuned setting a side): " in text


def test_the_clock_alternates_sides_at_one_thread_and_charges_the_median_rounds_upper_bound(
        monkeypatch):
    """BN's step 2 ms, no BN's 1 ms on a fake thread clock, one block of each slowed."""
    import torch

    order, threads, config, clock = [], torch.get_num_threads(), object(), [0.0]
    slow = {"bn": iter([0.0] * 11 + [0.004] + [0.0] * 100),  # after the warm-up steps
            "none": iter([0.0] * 14 + [0.004] + [0.0] * 100)}

    def fake_step(cfg, norm):
        assert cfg is config

        def step():
            order.append((norm, torch.get_num_threads()))
            clock[0] += (0.002 if norm == "bn" else 0.001) + next(slow[norm])
        return step

    monkeypatch.setattr(cost, "_step_fn", fake_step)
    monkeypatch.setattr(cost, "time", SimpleNamespace(thread_time=lambda: clock[0]))
    measured = cost.measure(config, rounds=5, steps=3)
    blocks = ("bn", "none", "none", "bn") * 2 + ("bn", "none")
    assert order[2 * cost.WARMUP:] == [(n, 1) for n in blocks for _ in range(3)]
    assert torch.get_num_threads() == threads
    assert measured.ratio == pytest.approx(2.0)  # each side's fastest block
    assert measured.ratio_max == pytest.approx(10 / 3) and measured.ratio_min == pytest.approx(
        6 / 7)  # the slowed blocks' rounds: 3 × 2 + 4 ms against 3 × 1, 3 × 2 against 3 × 1 + 4
    assert measured.ratio_median == pytest.approx(2.0)
    assert measured.ratio_upper == measured.ratio_max and measured.rounds == 5  # 5: too few
    assert (measured.treatment_s, measured.baseline_s) == pytest.approx((0.002, 0.001))
    upper = cost.median_upper  # distribution-free 95 %: the 12th of 15 sorted, the 21st of 31
    assert upper([float(x) for x in range(15, 0, -1)]) == 12.0
    assert upper([float(x) for x in range(1, 32)]) == 21.0
    assert upper([1.1, 1.2]) == 1.2  # too few for the level: the largest
    rounds = [1.10 + 0.001 * i for i in range(30)]  # one freak round moves no bound
    assert upper([*rounds, 14.0]) == upper([*rounds, 1.13]) == pytest.approx(1.12)


def test_the_clock_is_measured_once_and_kept_for_the_next_report(tmp_path, monkeypatch):
    """A pair not kept, or kept by an older clock (other fields), is measured."""
    measured, calls = [], []

    def measure_apart(configs):
        calls.append(len(configs))
        return [measured.append(c.read_text().split()[1]) or cost_of(2.0) for c in configs]

    monkeypatch.setattr(cost, "measure_apart", measure_apart)
    rows = []
    for optim, norm in itertools.product(("sgd", "adam"), ("bn", "none")):
        job = tmp_path / f"{optim}-{norm}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"tag: {optim}-{norm}\n")
        rows.append({"dataset": "mnist", "optim": optim, "norm": norm, "path": str(job)})
    runs, kept = pd.DataFrame(rows), tmp_path / "clock.json"
    kept.write_text(json.dumps({"mnist/adam": {"ratio": 1.5}}))  # an older clock's fields
    first = cost.pair_costs(runs, kept)
    assert measured == ["sgd-bn", "adam-bn"] and first[("mnist", "sgd")] == cost_of(2.0)
    written = kept.stat().st_mtime_ns
    assert cost.pair_costs(runs, kept) == first and calls == [2]  # none again, none for nothing
    assert json.loads(kept.read_text())["mnist/sgd"]["ratio_upper"] == 2.0
    assert kept.stat().st_mtime_ns == written  # nothing new: not written again
    cost.pair_costs(runs)  # no file to keep it in: measured
    assert measured == ["sgd-bn", "adam-bn", "sgd-bn", "adam-bn"]


@pytest.mark.slow  # two fresh Python processes importing torch: 6 s
def test_the_clock_runs_in_a_fresh_process_and_says_why_it_failed(tmp_path):
    (config := tmp_path / "config.yaml").write_text(
        "dataset: {datamodule: {_target_: bnstudy.data.MNISTDataModule}, batch_size: 8}\n"
        "model: {net: {_target_: bnstudy.nets.MLP, hidden_dim: 4}}\n"
        "optim: {optimizer: {_target_: torch.optim.SGD, _partial_: true, lr: 0.1}}\n")
    (clock,) = cost.measure_apart([config], rounds=3)
    assert clock.rounds == 3 and clock.treatment_s > 0 and clock.baseline_s > 0
    assert clock.ratio_min <= clock.ratio_median <= clock.ratio_upper == clock.ratio_max
    with pytest.raises(RuntimeError, match="(?s)C5.s clock failed: .*nowhere"):
        cost.measure_apart([tmp_path / "nowhere.yaml"], rounds=3)


def accs(*xs: float) -> list[dict]:
    """A history of these val accs, one an epoch."""
    return [{"val/acc": x} for x in xs]


def test_compute_is_read_between_epoch_ends_best_so_far_each_pair_against_its_baseline():
    """10 no-BN epochs buy 10 / 1.14 = 8.77 BN epochs: 77 % of the way from epoch 8 to 9."""
    history = accs(*[i / 100 for i in range(1, 11)])  # epoch e: e % (already best so far)
    assert val_acc_at(history, 1.14, 10) == pytest.approx(10 / 1.14 / 100)
    assert val_acc_at(history, 1.0, 10) == pytest.approx(0.10)
    assert val_acc_at(history, 2.0, 5) == pytest.approx(0.025)  # between epochs 2 and 3
    assert math.isnan(val_acc_at(history, 2.0, 1.9))  # before the first epoch end: nothing yet
    assert val_acc_at(history, 0.5, 10) == pytest.approx(0.10)  # past the end: its last best
    history = accs(0.5, 0.8, 0.6, 0.4)  # a drop at the end never lowers a larger budget's
    values = [val_acc_at(history, 1.0, b) for b in np.linspace(1, 6, 51)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert val_acc_at(history, 1.0, 4) == val_acc_at(history, 1.0, 2) == pytest.approx(0.8)
    assert val_acc_at(history, 1.0, 1.5) == pytest.approx(0.65)
    compute, acc = np.array([2.0, 4.0, 6.0]), np.array([0.5, 0.7, 0.9])  # a target's compute
    assert cost.compute_to_reach(compute, acc, 0.8) == pytest.approx(5.0)
    assert cost.compute_to_reach(compute, acc, 0.4) == 2.0  # reached at the first epoch end
    assert math.isnan(cost.compute_to_reach(compute, acc, 0.95))
    runs = pd.DataFrame({"dataset": ["mnist", "mnist", "mnist", "cifar10"],  # the time table
                         "optim": ["sgd", "sgd", "adam", "sgd"],
                         "norm": ["bn", "none", "bn", "bn"],
                         "history": [accs(.5, .6, .7, .8), accs(.1, .2, .3, .4, .5, .6),
                                     accs(.9), accs(.9)]})
    table = time_table(runs, {("mnist", "sgd"): 2.0, ("cifar10", "sgd"): 1.0})
    assert list(table.index) == [0, 1, 3]  # mnist-adam has no ratio
    assert table["val_acc_at_1"].tolist()[:2] == pytest.approx([.7, .6])  # 6 no-BN epochs: 3
    assert table["val_acc_at_0.5"].tolist()[:2] == pytest.approx([.55, .3])  # BN at 1.5 epochs
    assert math.isnan(table.loc[3, "val_acc_at_1"])  # cifar10: no baseline, no budget
    assert time_table(runs, {}).empty


def test_tuned_runs_are_the_ones_tuning_json_lists(tmp_path):
    """Their searched settings one value ("tuned"): one comparison, not one per norm."""
    runs = pd.DataFrame({"job": ["0_a", "1_b", "2_c"], "lr": [0.5, 0.01, 0.1],
                         "optim.optimizer.momentum": [0.1, 0.9, 0.0], "seed": [0, 0, 0]})
    assert V.tuned_runs(tmp_path, runs)[0].empty  # no tuning.json: no C6
    tuning = {"cells": [{"dataset": "cifar10"}, {
        "final_jobs": ["1_b", "2_c"],
        "best_params": {"optim.optimizer.lr": 0.01, "optim.optimizer.momentum": 0.9}}]}
    (tmp_path / TUNING_FILE).write_text(json.dumps(tuning))
    chosen, read = V.tuned_runs(tmp_path, runs)
    assert chosen["job"].tolist() == ["1_b", "2_c"] and read == tuning
    assert set(chosen["lr"]) == set(chosen["optim.optimizer.momentum"]) == {"tuned"}
    assert chosen["seed"].tolist() == [0, 0]
    (tmp_path / TUNING_FILE).write_text("{}")  # a search that wrote no cells yet
    assert V.tuned_runs(tmp_path, runs)[0].empty


def test_accuracy_against_compute_is_the_best_so_far_at_the_charged_cost(tmp_path):
    write_pair(tmp_path, [0.80, 0.90, 0.85, 0.93], FAST_EARLY[1])  # BN drops at epoch 3
    fig = time_figure(load_runs(tmp_path),  # fastest blocks 1.5, the bound 2.0, max 2.5
                      {("mnist", "sgd"): StepCost(2e-3, 1e-3, 1.5, 1.2, 1.5, 2.0, 2.5, 9)})
    lines = {line.get_label().split(" (")[0]: line for line in fig.axes[0].get_lines()
             if not line.get_label().startswith("_")}
    assert np.allclose(lines["BatchNorm"].get_xdata(), [2, 4, 6, 8])
    assert np.allclose(lines["No BatchNorm"].get_xdata(), [1, 2, 3, 4])
    assert np.allclose(lines["BatchNorm"].get_ydata(), [80, 90, 90, 93])
    assert "×2.00" in fig.axes[0].get_title()
    budgets = [line.get_xdata()[0] for line in fig.axes[0].get_lines()
               if line.get_linestyle() == ":"]
    assert budgets == [4, 2]  # C5's: no BN's full compute (4 epochs) and half of it


def test_the_clock_table_checks_the_runs_own_epoch_seconds_per_epoch(tmp_path):
    """BN's epochs take 4, 2, 2 s, no BN's 1.5 each: 1.33 (cumulative `time_s` would give 2)."""
    for seed in (0, 1):
        job = write_job(tmp_path, [0.8, 0.9, 0.95], norm="bn", seed=seed)
        record = read_record(job)
        for h, t in zip(record["history"], (4.0, 6.0, 8.0), strict=True):
            h["time_s"] = t
        (job / "metrics.json").write_text(json.dumps(record))
        write_job(tmp_path, [0.6, 0.75, 0.85], norm="none", seed=seed)
    clock = StepCost(0.002, 0.001, 2.0, 1.9, 2.05, 2.1, 2.3, 20)
    row = cost_table(load_runs(tmp_path), {("mnist", "sgd"): clock}).splitlines()[-1]
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "MNIST, SGD", "2000 µs", "1000 µs", "**2.10** (2.00; 2.05; 1.90 to 2.30)", "1.33",
        "3.1", "3.0"]  # BN reaches 0.85 halfway between 2.1 and 4.2


# --- C1–C4 on hand-made records -------------------------------------------------------------

# Validation accuracy per epoch of each (dataset, optim, norm) where every claim C1–C4 holds.
HOLDS = {
    ("mnist", "sgd", "bn"): [0.90, 0.95, 0.96], ("mnist", "sgd", "none"): [0.60, 0.80, 0.90],
    ("mnist", "adam", "bn"): [0.95, 0.96, 0.97], ("mnist", "adam", "none"): [0.94, 0.95, 0.96],
    ("cifar10", "sgd", "bn"): [0.40, 0.45, 0.50], ("cifar10", "sgd", "none"): [0.10, 0.20, 0.30],
    ("cifar10", "adam", "bn"): [0.45, 0.50, 0.52], ("cifar10", "adam", "none"): [0.40, 0.45, 0.48],
}
# Curves that make one part false, and the parts that share its numbers (C4b: C3b's gap).
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


def write_claims_sweep(sweep_dir, curves: dict, seeds=(0, 1, 2)):
    """Each curve at each seed, spread per epoch and optimizer (paired gaps must vary)."""
    for (dataset, optim, norm), accs in curves.items():
        sign = (1 if norm == "bn" else -1) * (1 if optim == "sgd" else 0.8)
        for seed in seeds:
            write_job(sweep_dir, [acc + sign * 0.003 * seed * (e + 1) for e, acc in
                                  enumerate(accs)], dataset=dataset, optim=optim, norm=norm,
                      seed=seed)
    return sweep_dir


@pytest.mark.parametrize("flip", [None, *FLIPS])
def test_each_claim_holds_and_flips_when_its_records_flip(tmp_path, flip):
    curves, flipped = ({**HOLDS, **FLIPS[flip][0]}, FLIPS[flip][1]) if flip else (HOLDS, set())
    parts = results_of(write_claims_sweep(tmp_path, curves))
    assert {name: p.verdict for name, p in parts.items()} == {
        name: "does not hold" if name in flipped else "holds" for name in PARTS}
    assert V.claim_verdicts(list(parts.values())) == {
        c: "does not hold" if any(f.startswith(c) for f in flipped) else "holds"
        for c in ("C1", "C2", "C3", "C4")}


def test_claim_statistics_are_recomputed_from_the_records(tmp_path):
    sweep_dir = write_claims_sweep(tmp_path, HOLDS)
    parts = results_of(sweep_dir)
    recs = sorted((read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")),
                  key=lambda r: r["hparams"]["seed"])

    def get(dataset, optim, norm, of):
        return [of(r["history"]) for r in recs if (r["hparams"]["dataset"], r["hparams"][
            "optim"], r["hparams"]["norm"]) == (dataset, optim, norm)]

    def final(h):
        return h[-1]["val/acc"]

    for name, dataset, optim, of in (
            ("C1a", "mnist", "sgd", lambda h: h[0]["val/loss"]),
            ("C3a", "cifar10", "sgd", lambda h: np.mean([row["val/acc"] for row in h])),
            ("C3b", "cifar10", "sgd", final), ("C4a", "cifar10", "adam", final)):
        bn, none = get(dataset, optim, "bn", of), get(dataset, optim, "none", of)
        test = sps.ttest_rel(bn, none)  # same seeds: paired
        got = parts[name].test
        assert (got.test, got.n_paired) == ("paired t", 3)
        assert (got.estimate, got.ci_low, got.ci_high, got.p_value) == (
            pytest.approx(np.mean(bn) - np.mean(none)),
            *map(pytest.approx, test.confidence_interval()), pytest.approx(test.pvalue))
    # C1b: no BN's validation loss at epoch ⌊E/2⌋ (the first of 3) minus at the last epoch
    drops = get("mnist", "sgd", "none", lambda h: h[0]["val/loss"] - h[-1]["val/loss"])
    assert parts["C1b"].test.estimate == pytest.approx(np.mean(drops))
    assert parts["C1b"].test.p_value == pytest.approx(sps.ttest_1samp(drops, 0).pvalue)
    for name, dataset in (("C2", "mnist"), ("C4b", "cifar10")):  # the SGD gap − the Adam gap
        gap = {o: np.mean(get(dataset, o, "bn", final)) - np.mean(get(dataset, o, "none", final))
               for o in ("sgd", "adam")}
        assert parts[name].test.estimate == pytest.approx(gap["sgd"] - gap["adam"])
    ten = [{"val/loss": float(10 - e)} for e in range(10)]  # epochs 1..10: 10, 9, …, 1
    assert quantities(ten, None)["late_val_loss_drop"] == 6 - 1  # the middle is the fifth


def test_a_claim_within_the_spread_with_one_seed_or_without_its_runs_cannot_be_told(tmp_path):
    same = {**HOLDS, ("cifar10", "adam", "none"): HOLDS["cifar10", "adam", "bn"]}
    c4a = results_of(write_claims_sweep(tmp_path / "same", same))["C4a"]  # jitters only
    assert c4a.verdict == "cannot tell" and c4a.test.ci_low < 0 < c4a.test.ci_high
    one = results_of(write_claims_sweep(tmp_path / "one", HOLDS, seeds=(0,)))
    assert {p.verdict for p in one.values()} == {"cannot tell"}
    assert math.isnan(one["C3b"].test.p_value)
    assert one["C3b"].test.estimate == pytest.approx(0.20)
    mnist_sgd = {k: v for k, v in HOLDS.items() if k[:2] == ("mnist", "sgd")}
    assert list(results_of(write_claims_sweep(tmp_path / "a", mnist_sgd))) == ["C1a", "C1b"]
    cifar = {k: v for k, v in HOLDS.items() if k[0] == "cifar10"}
    assert list(results_of(write_claims_sweep(tmp_path / "b", cifar))) == [
        "C3a", "C3b", "C4a", "C4b"]


def test_the_claims_of_several_settings_in_numeric_order_and_none_where_none_apply(tmp_path):
    """lr 2 before 10 (by number), the claims stated once, none taken as the answer's."""
    for lr, seed in itertools.product((10.0, 2.0), range(3)):
        write_job(tmp_path / "lrs", [0.6 + seed / 100, 0.9], norm="bn", lr=lr, seed=seed)
        write_job(tmp_path / "lrs", [0.5 + seed / 50, 0.8], norm="none", lr=lr, seed=seed)
        write_job(tmp_path / "svhn", [0.5 + seed / 50, 0.8], dataset="svhn", seed=seed, lr=lr)
    runs = load_runs(tmp_path / "lrs")
    text, rows, first, _ = claims_section(runs, group_keys(runs), tmp_path, lambda r: {})
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert [line for line in lines if line.startswith(("###", "| lr", "- **"))] == [
        f"- **C1**: {C.CLAIMS['C1']}", "| lr=2.0 | holds |", "| lr=10.0 | holds |",
        "### lr=2.0", "### lr=10.0"]
    assert first == [] and len(rows) == 4
    svhn = load_runs(tmp_path / "svhn")
    assert claims_section(svhn, group_keys(svhn), tmp_path, lambda r: {}) == ("", [], [], {})


def test_report_md_opens_with_the_answer_states_the_claims_and_claims_csv_holds_them(
        tmp_path, monkeypatch, figures_not_rendered):
    """A claim declared in a test (C9) too; a one-seed sweep's answer says how to decide."""
    declared = C.declare

    def with_c9(datasets):
        return [*declared(datasets), C.Part(
            "C9", "", "MNIST, SGD: BN's last epoch beats no BN's by more than nothing",
            "final val acc, BN − no BN", "final_val_acc", C.pair("mnist", "sgd"))]

    monkeypatch.setattr(V, "declare", with_c9)
    sweep_dir = write_claims_sweep(tmp_path / "sweep", {**HOLDS, **FLIPS["C2"][0]})
    write_pair(tmp_path / "one", *FAST_EARLY, seeds=(1,))
    for sweep in (sweep_dir, tmp_path / "one"):
        assert main([str(sweep)]) == 0
    text, one = (" ".join((s / "report" / "report.md").read_text().split())
                 for s in (sweep_dir, tmp_path / "one"))
    assert text.index("## The answer") < text.index("## Summary")
    assert text.index("## Claims") < text.index("## mnist, sgd")
    assert "| MNIST | SGD | 3, 3 | BN wins, +7.80 pts (" in text
    assert "| MNIST | SGD | 1, 1 | +13.00 pts: one seed a side, direction and size only |" in one
    assert A.DECIDE in one and A.DECIDE not in text
    assert "Verdicts: **C1 holds**; **C2 does not hold**; **C3 holds**; **C4 holds**; " \
           "**C9 holds**." in text
    parts = results_of(sweep_dir)
    c1a = parts["C1a"]
    assert "| C1a | MNIST, SGD: BN starts at a lower loss | first-epoch val loss, BN − no BN " \
           f"| BN {np.mean(c1a.groups[0]):.3f} ± {np.std(c1a.groups[0], ddof=1):.3f} (3); " in text
    assert f"| {c1a.test.estimate:+.3f} (95% CI {c1a.test.ci_low:+.3f} to " in text
    rows = csv_rows(sweep_dir / "report" / "claims.csv")
    assert [r["claim"] + r["part"] for r in rows] == [*PARTS, "C9"]
    for row in rows:
        part = parts[row["claim"] + row["part"]]
        assert float(row["estimate"]) == pytest.approx(part.test.estimate, abs=1e-6)
        assert float(row["p_value"]) == pytest.approx(part.test.p_value, abs=1e-6)
        assert row["verdict"] == part.verdict
    assert {r["claim_verdict"] for r in rows if r["claim"] == "C2"} == {"does not hold"}
    c9 = rows[-1]  # BN's final 0.96 against 0.90, each side's seeds ±0.009 on average
    assert (c9["verdict"], c9["claim_verdict"]) == ("holds", "holds")
    assert float(c9["estimate"]) == pytest.approx(0.96 - 0.90 + 0.018, abs=1e-6)
    assert float(c9["detectable_80"]) > 0 and c9["seeds_needed"]


REGISTRY = Path(__file__).with_name("claims_registry.txt")


def registry_lines() -> list[str]:
    """Every claim and declared part as a line: what claims.csv shows and what decides it."""
    def term(t: C.Term) -> str:
        return f"{t.weight:+g} {t.dataset}/{t.optim}/{t.norm}"

    lines = [f"{claim}: {text}" for claim, text in C.CLAIMS.items()]
    for p in C.declare(["mnist", "cifar10"]):
        rule = "" if p.rule is None else f" | rule {p.rule_words!r} at 0/.49/.5/.79/.8: " + \
            "".join("1" if p.rule(x) else "0" for x in (0, 0.49, 0.5, 0.79, 0.8))
        lines.append(f"{p.claim}{p.part} | {p.statement} | {p.statistic} | {p.quantity} | "
                     f"{', '.join(map(term, p.terms))} | sign {p.sign}, {p.source}, {p.fmt}, "
                     f"{p.family}, paired {p.paired}{rule}")
    return lines


def test_every_claim_reads_as_pinned_in_the_registry_file():
    """A deliberate edit: `BNSTUDY_PIN_CLAIMS=1 pytest -k registry` rewrites the file."""
    if os.environ.get("BNSTUDY_PIN_CLAIMS"):
        REGISTRY.write_text("\n".join(registry_lines()) + "\n")
    assert registry_lines() == REGISTRY.read_text().splitlines()


def test_a_term_selects_ok_runs_in_seed_then_job_order_nothing_on_a_key_the_table_lacks():
    """And a new claim is its own family; a term's label names its norm and optimizer."""
    def values(table, term, quantity):
        return V.chosen(table, term, quantity)[quantity].tolist()

    two = pd.DataFrame({"norm": ["bn", "none"], "optim": ["sgd", "sgd"]})
    assert C.Term(1.0, optim="sgd", norm="bn").selects(two).tolist() == [True, False]
    assert C.Term(1.0, dataset="mnist", norm="bn").selects(two).tolist() == [False, False]
    part = C.Part("X1", "", "", "", "acc", (C.Term(1.0),))
    assert (part.family, C.Part("C3", "", "", "", "acc", (C.Term(1.0),)).family) == (
        "X1", "curves")
    assert C.Term(1.0, "mnist", "sgd", "bn").label() == "BN + SGD"
    assert C.Term(-1.0, "mnist", "adam", "none").label(with_optim=False) == "no BN"
    assert C.Term(1.0, optim="rmsprop", norm="layer").label() == "LayerNorm + rmsprop"
    assert C.Term(1.0, optim="adam").label() == "Adam" and C.Term(1.0).label() == "all"
    table = pd.DataFrame({"norm": ["bn"] * 5 + ["none"], "seed": [2, "x", 0, 0, 1, 0],
                          "job": ["a", "b", "d", "c", "e", "f"],
                          "outcome": ["ok", "ok", "ok", "ok", "diverged", "ok"],
                          "acc": [0.2, 0.9, 0.4, 0.3, 0.1, 0.5]})
    assert values(table, C.Term(1.0, norm="bn"), "acc") == [0.3, 0.4, 0.2, 0.9]
    bare = table.drop(columns=["outcome", "job"]).iloc[::-1]  # no outcome, no job: seed alone
    assert values(bare, C.Term(1.0, norm="bn"), "acc") == [0.3, 0.4, 0.1, 0.2, 0.9]
    assert values(table.drop(columns="seed"), C.Term(1.0, norm="none"), "acc") == [0.5]
    assert values(pd.DataFrame({"acc": [0.5, "n/a"]}), C.Term(1.0), "acc") == [0.5]
    assert values(table, C.Term(1.0, norm="bn"), "sharpness") == []  # a column no run has
    many = pd.DataFrame({"seed": np.random.default_rng(0).integers(0, 3, 200),
                         "acc": np.arange(200) / 200})  # ties kept in table order (stable)
    assert values(many, C.Term(1.0), "acc") == many.sort_values("seed", kind="stable")[
        "acc"].tolist()


def declared(name: str) -> C.Part:
    """The MNIST part of this claim and part name."""
    (part,) = [p for p in C.declare(["mnist"]) if p.claim + p.part == name]
    return part


def cannot_tell_parts() -> list[V.Result]:
    """C5a and C6 (MNIST, SGD) on three seeds a side within the seed spread: cannot tell."""
    return [V.run_part(p, paired_table(p.quantity, [0.90, 0.91, 0.92], [0.89, 0.915, 0.905]))
            for p in map(declared, ("C5a (MNIST, SGD)", "C6 (MNIST, SGD)"))]


WIN = {"dataset": "mnist", "optim": "sgd", "treatment": "bn", "baseline": "none",
       "quantity": "final_val_acc", "n_treatment": 3, "n_baseline": 3, "diff": 0.05,
       "test": PAIRED, "p_value": 0.01, "verdict": "wins", "diff_ci_low": 0.02,
       "diff_ci_high": 0.08, "margin": 0.005, "seeds_needed": 3.0}


def test_a_part_alone_decides_on_its_sign_a_margin_on_one_datasets_accuracy_or_says_what_lacks():
    """Lacking its quantity: not "fewer than 2 ok seeds"; "at a share of compute" for time only."""
    lower = C.Part("L", "", "BN lower", "diff", "loss", (C.Term(1.0, "mnist", norm="bn"),
                                                         C.Term(-1.0, "mnist", norm="none")),
                   sign=-1, fmt="loss")
    table = paired_table("loss", [.1, .12, .11], [.5, .52, .49])
    assert V.run_part(lower, table).verdict == "holds"
    assert math.isnan(V.run_part(lower, table).test.margin)  # a loss has no margin
    acc = replace(lower, quantity="loss", fmt="acc", sign=1)
    assert V.run_part(acc, table).test.margin == 0.005  # MNIST's default, on accuracy
    both = replace(acc, terms=(C.Term(1.0, "mnist", norm="bn"), C.Term(-1.0, "svhn", norm="none")))
    assert math.isnan(V.part_test(both, table.assign(
        dataset=["mnist"] * 3 + ["svhn"] * 3))[1].margin)  # two datasets: no one margin
    unseeded = V.run_part(acc, table.drop(columns="seed"))
    assert unseeded.test.test.startswith("Welch") and unseeded.test.n_paired == 0  # no seeds
    nan = [math.nan, math.nan]  # two ok seeds a side without the value
    p1a = V.run_part(declared("P1a (SGD)"), paired_table("pc_alignment", nan, nan))
    assert p1a.note == "a side's ok runs have no pc_alignment"
    c5a = V.run_part(declared("C5a (MNIST, SGD)"), paired_table("val_acc_at_1", nan, nan))
    assert c5a.note == ("a side's ok runs have no val_acc_at_1 (at a share of compute: no "
                        "epoch of theirs had ended)")


def test_holm_leaves_rule_and_short_parts_as_decided_and_a_lone_win_cannot_tell_in_a_family():
    """Holm neither counts nor re-decides a rule part or one with a side under 2 seeds."""
    verdicts = [V.every_seed(f) for f in ([True], [True, True], [False, False], [True, False])]
    assert verdicts == ["cannot tell", "holds", "does not hold", "cannot tell"]
    rule = C.Part("R", "", "above a half", "rule", "acc", (C.Term(1.0, norm="bn"),),
                  rule=lambda x: x > 0.5, family="F")
    pair = C.Part("Q", "", "BN ahead", "diff", "acc", (C.Term(1.0, norm="bn"),
                                                        C.Term(-1.0, norm="none")), family="F")
    table = paired_table("acc", [.9, .1, .8], [.5, -.28, .41])  # BN − no BN: .4, .38, .39
    assert V.run_part(pair, table[table["seed"] < 2]).verdict == "holds"
    short = V.run_part(pair, table[table["seed"] == 0])
    met, tested, short = V.adjust([V.run_part(rule, table), V.run_part(pair, table), short])
    assert (met.part, met.verdict, met.extra) == ("", "cannot tell", {"met": 2, "of": 3})
    assert met.groups == ([.9, .1, .8],) and not math.isnan(met.test.estimate)
    assert met.test.p_value > tested.test.p_value  # counted, the rule would double tested's p
    assert tested.test.p_holm == tested.test.p_value  # the only tested part of its family
    assert (short.verdict, short.note) == ("cannot tell", "fewer than 2 ok seeds on a side")
    assert [r["test"] for r in claim_rows([met, tested], {})] == ["every seed", tested.test.test]
    assert V.combine(["holds", "cannot tell"]) == "cannot tell"
    assert V.combine(["holds", "does not hold", "cannot tell"]) == "does not hold"
    assert V.combine(["holds", "equivalent"]) == "does not hold"  # within the margin: not ahead
    # four parts in one family, each p in (0.05 / 4, 0.05): seeds counted at 0.05 / 4
    four = paired_table("final_val_acc", [0.90, 0.91, 0.93, 0.92], [0.88, 0.90, 0.90, 0.90])
    part = C.Part("Q", "", "BN ahead", "final val acc", "final_val_acc", C.pair("mnist", "sgd"),
                  family="f")
    (alone,) = V.evaluate([part], {"curves": four})
    assert alone.verdict == "holds" and alone.test.p_holm == alone.test.p_value < 0.05
    family = V.evaluate([part] * 4, {"curves": four})
    assert {r.verdict for r in family} == {"cannot tell"}
    assert family[0].test.p_holm == pytest.approx(4 * alone.test.p_value)
    assert power_of(alone.test)[1] <= 4  # the unadjusted count: the seeds already run
    for r in family:
        assert (r.detectable, r.seeds_needed, r.would_show) == power_of(r.test, alpha=0.05 / 4)
        assert r.seeds_needed > 4
    apart = [part, *(C.Part("R", str(i), "", "", "final_val_acc", C.pair("mnist", "sgd"))
                     for i in range(3))]  # other families leave Q's adjustment alone
    assert V.evaluate(apart, {"curves": four})[0].verdict == "holds"


def paired_table(quantity: str, bn: list[float], none: list[float]) -> pd.DataFrame:
    """MNIST/SGD runs, seed i on each side, with these values of `quantity`."""
    return pd.DataFrame([{"dataset": "mnist", "optim": "sgd", "norm": n, "seed": s,
                          "job": f"{n}{s}", quantity: x}
                         for n, xs in (("bn", bn), ("none", none)) for s, x in enumerate(xs)])


def test_c6_adds_the_test_images_error_where_runs_saved_it_and_says_seeds_only_where_not():
    c6 = declared("C6 (MNIST, SGD)")
    rng = np.random.default_rng(1)
    correct = {(n, s): rng.random(100) < (0.9 if n == "bn" else 0.85)
               for n in ("bn", "none") for s in range(3)}
    table = paired_table("test_acc", *[[float(correct[n, s].mean()) for s in range(3)]
                                       for n in ("bn", "none")])
    seeds_only = V.run_part(c6, table)
    assert seeds_only.test.test == "Welch"  # each norm at its own setting: never paired
    assert method(seeds_only).endswith("(seeds only: no run saved per-image test results)")
    table["test_correct"] = [correct[n, s] for n, s in zip(table["norm"], table["seed"],
                                                           strict=True)]
    assert method(V.run_part(c6, table)) == "Welch + test images over 3 vs 3 seeds"


ONE_SEED = {**WIN, "optim": "adam", "n_treatment": 1, "n_baseline": 2, "diff": -0.01,
            "test": "Welch", "p_value": math.nan, "verdict": "no test", "diff_ci_low": math.nan,
            "diff_ci_high": math.nan, "seeds_needed": math.nan}
ANSWER = """## The answer

Is BatchNorm worth it? BN − no BN in validation accuracy, per dataset × optimizer (95% interval; \
validation split, final epoch; paired t over the seeds both norms ran; p Holm-adjusted over the \
1 comparison tested (the intervals are not), p < 0.05; \
*equivalent* by TOST within ±0.5 pts for MNIST): at equal epochs, at equal training time (C5a: \
the best val acc so far at the no-BN runs' full compute, BN's step charged the 95% upper bound \
of the clock's median round; paired, Holm over the C5 parts) and at each one's own tuned \
settings (C6, test split, Welch, Holm over the C6 parts), where the sweep has them. *Cannot \
tell* says how many seeds a side would decide.

| dataset | optimizer | seeds (BN, no BN) | at equal epochs | at equal training time |
|:-|:-|:-|:-|:-|
| MNIST | SGD | 3, 3 | BN wins, +5.00 pts (+2.00 to +8.00) | cannot tell, +0.67 pts (-1.92 to \
+3.25): 22 seeds a side would decide |
| MNIST | Adam | 1, 2 | -1.00 pts: one seed a side, direction and size only | — |

One seed a side shows the direction and size of each difference, not whether it is larger than \
the seed-to-seed spread. To decide, run 3 or more seeds (`seed=0,1,2`), or the study at 20 seeds \
a side:

    python -m bnstudy.train -m experiment=decisive hydra/launcher=parallel
"""
TUNED_ANSWER = """## The answer

Is BatchNorm worth it at each one's best? Each norm's own tuned setting, re-run over seeds, BN \
− no BN in test accuracy (95% interval, not Holm-adjusted; Welch over seeds only, Holm over \
the 1 C6 parts; *equivalent* by TOST within ±0.5 pts for MNIST; claim C6 below); at a small \
budget, the expected best validation accuracy after one trial of each search (C7).

| dataset | optimizer | seeds (BN, no BN) | at each one's best |
|:-|:-|:-|:-|
| MNIST | SGD | 3, 3 | cannot tell, +0.67 pts (-1.96 to +3.30): 47 seeds a side would decide |
"""


def squeezed(markdown: str) -> str:
    """A Markdown table without its padding."""
    return re.sub(r"\|:-+", "|:-", re.sub(r" +\|", " |", markdown))


def test_the_answer_section_word_for_word():
    """At equal epochs and time, or a tuned sweep's at each one's best; none without pairs."""
    answer_section = A.answer_section
    c5a, c6 = cannot_tell_parts()
    table = pd.DataFrame([WIN, ONE_SEED])
    assert squeezed(answer_section(table, [c5a])) == ANSWER
    best = {**WIN, "quantity": "test_acc", "test": "Welch"}  # a tuned sweep's verdicts.csv row
    assert squeezed(answer_section(pd.DataFrame([best]), [c6])) == TUNED_ANSWER
    layer = squeezed(answer_section(pd.DataFrame([best, {**best, "treatment": "layer"}]), [c6],
                                    {("mnist", "sgd", "layer", "none"): "LayerNorm ahead"}))
    assert "Is each norm worth it at each one's best? " in layer
    assert "; other pairs: Welch over seeds only, Holm over the report's 2 comparisons tested; " \
        in layer
    assert layer.splitlines()[-2:] == [
        "| MNIST | SGD | BN − no BN | 3, 3 | — | cannot tell, +0.67 pts (-1.96 to +3.30): 47 "
        "seeds a side would decide |",
        "| MNIST | SGD | LayerNorm − no norm | 3, 3 | LayerNorm ahead | LayerNorm wins, +5.00 "
        "pts (+2.00 to +8.00) |"]
    alone = answer_section(pd.DataFrame([{**best, "treatment": "layer"}]), [])
    assert alone.splitlines()[2].startswith(
        "Is LayerNorm worth it at each one's best? Each norm's own tuned setting, re-run over "
        "seeds, LayerNorm − no norm in test accuracy (95% interval, not Holm-adjusted; Welch "
        "over seeds only, Holm over the report's 1 comparison tested; ")
    assert "C6" not in alone and "C7" not in alone  # BN's claims
    asked = answer_section(pd.DataFrame([{**best, "baseline": "layer"},  # --compare bn:layer
                                         {**best, "treatment": "layer"}]), [c6])
    assert "no BN" not in asked and "C6" not in asked and "C7" not in asked
    assert answer_section(table.iloc[:0], []) == ""
    missing = {**WIN, "n_baseline": 0, "diff": math.nan}  # a pair one norm never ran
    assert "One seed a side" in answer_section(pd.DataFrame([missing, ONE_SEED]), [])
    assert "(95% interval; validation split, final epoch; no test: fewer than 2 seeds a side): " \
        in " ".join(answer_section(pd.DataFrame([ONE_SEED]), []).split())


def test_the_sweeps_answer_word_for_word_for_each_pair_against_its_baseline(tmp_path):
    """Nothing for BN alone; the study's header for BN and no BN; more pairs word for word."""
    console_answer = A.console_answer
    for seed in (0, 1):
        write_job(tmp_path, [0.5, 0.8 + seed / 100], norm="bn", seed=seed)
    assert console_answer(tmp_path) == ""  # BN alone answers nothing
    for seed in (0, 1):
        write_job(tmp_path, [0.5, 0.7 + seed / 50], norm="none", seed=seed)
    head, line = console_answer(tmp_path).splitlines()
    assert head.startswith("Is BatchNorm worth it? BN − no BN in final validation accuracy (95% "
                           "interval; validation split, final epoch; paired t over the seeds "
                           "both norms ran; p Holm-adjusted over the 1 comparison tested")
    assert line.startswith("  MNIST, SGD (2 vs 2 seeds): ")
    layer = tmp_path / "layer"  # one other pair: its own question, its rows as the study's
    for norm, seed in itertools.product(("layer", "none"), (0, 1)):
        write_job(layer, [0.5, 0.75 if norm == "layer" else 0.7 + seed / 50], norm=norm,
                  seed=seed)
    head, line = console_answer(layer).splitlines()
    assert head.startswith("Is LayerNorm worth it? LayerNorm − no norm in final validation")
    assert line.startswith("  MNIST, SGD (2 vs 2 seeds): ")
    for seed in (0, 1):
        write_job(tmp_path, [0.5, 0.75], norm="layer", seed=seed)
    for norm, acc in (("bn", 0.8), ("none", 0.7)):  # a dataset and optimizer without labels
        write_job(tmp_path, [0.5, acc], norm=norm, seed=0, dataset="svhn", optim="rmsprop")
    assert console_answer(tmp_path).splitlines() == [
        "Each norm against its baseline in final validation accuracy (95% interval; validation "
        "split, final epoch; paired t over the seeds both norms ran; p Holm-adjusted over the 2 "
        "comparisons tested (the intervals are not), "
        "p < 0.05; equivalent by TOST within ±0.5 pts for MNIST):",
        "  MNIST, SGD, BN − no BN (2 vs 2 seeds): cannot tell, +9.50 pts (+3.15 to +15.85): 3 "
        "seeds a side would decide",
        "  MNIST, SGD, LayerNorm − no norm (2 vs 2 seeds): cannot tell, +4.00 pts (-8.71 to "
        "+16.71): 4 seeds a side would decide",
        "  svhn, rmsprop, BN − no BN (1 vs 1 seeds): +10.00 pts: one seed a side, direction and "
        "size only",
        "One seed a side shows direction and size only; to decide: python -m bnstudy.train -m "
        "experiment=decisive hydra/launcher=parallel"]
    plan = {"runtime": {"choices": {"hydra/launcher": "slurm"}}, "overrides": {  # as Hydra saves
        "task": ["dataset=mnist", "seed=0,1", "paths.data_dir=/my data", "logger=csv"],
        "hydra": ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.mode=MULTIRUN"]}}
    for task, command in (  # on the sweep's launcher, with its settings, paths, as a shell reads
            ([], "experiment=decisive 'paths.data_dir=/my data' logger=csv hydra/launcher=slurm "
                 "hydra.launcher.partition=gpu"),
            (["experiment=lr_sweep"], "dataset=mnist 'paths.data_dir=/my data' logger=csv "
                                      "experiment=lr_sweep hydra/launcher=slurm "
                                      "hydra.launcher.partition=gpu 'seed=range(0,20)'")):
        plan["overrides"]["task"] += task
        OmegaConf.save({"hydra": plan}, tmp_path / "multirun.yaml")
        assert console_answer(tmp_path).splitlines()[-1] == "One seed a side shows direction " \
            f"and size only; to decide: python -m bnstudy.train -m {command}"


def test_the_answers_words_without_spread_margin_or_part_with_images_a_budget_or_a_tie():
    """Equivalent only from TOST; issue #36: a time or tuned cannot tell is a tie, never a win."""
    def moved(result: V.Result, **change) -> V.Result:  # to a dataset without labels
        declared = replace(result.declared, terms=C.pair("svhn", "rmsprop"))
        return replace(result, declared=replace(declared, **change))

    words, part_words = A.words, A.part_words
    ci = (-0.0033, 0.0002)
    assert words("equivalent", -0.0016, ci, 40.0, 20, margin=0.005) == \
        "equivalent within ±0.5 pts, -0.16 pts (-0.33 to +0.02)"
    assert words("cannot tell", -0.0016, ci, 40.0, 20, margin=0.005) == \
        "cannot tell, -0.16 pts (-0.33 to +0.02): 40 seeds a side would decide"
    assert words("cannot tell", 0.0, ci, math.inf, 20).endswith(
        "over 1000 seeds a side would decide")
    assert deciding(40.0, IMAGES) == "40 seeds a side would decide"
    assert words("no test", 0.01, (math.nan,) * 2, math.nan, 3) == \
        "+1.00 pts: no spread over the seeds, no test"
    assert words("wins", math.nan, (0, 1), 2.0) == part_words(None) == "—"
    assert words("cannot tell", 0.01, (-0.01, 0.03), math.nan) == \
        "cannot tell, +1.00 pts (-1.00 to +3.00)"  # no power computed: no seeds promised
    assert A.margin_words({"mnist": math.nan}) == "none declared"
    assert A.margin_words({"mnist": 0.005, "cifar10": 0.01}) == \
        "±0.5 pts for MNIST, ±1 pts for CIFAR-10"
    time_part = declared("C5a (MNIST, SGD)")
    level = [0.970, 0.972, 0.968, 0.971, 0.969, 0.970]
    table = paired_table("val_acc_at_1", level, [x + 0.0004 * (-1) ** i
                                                 for i, x in enumerate(level)])
    (result,) = V.evaluate([time_part], {"time": table})  # the margin: conf/dataset's 0.005
    assert result.verdict == "equivalent" and result.test.margin == 0.005
    assert part_words(result).startswith("equivalent within ±0.5 pts, ")
    assert V.claim_verdicts([result]) == {"C5": "does not hold"}
    two = V.run_part(time_part, paired_table("val_acc_at_1", [0.9, 0.92], [0.8, 0.81]))
    assert part_words(two).startswith("BN wins, +10.50 pts (")  # two seeds a side: a test
    one = V.run_part(time_part, paired_table("val_acc_at_1", [0.9], [0.8]))
    assert part_words(one) == "+10.00 pts: one seed a side, direction and size only"
    c5a, c6 = cannot_tell_parts()
    assert [r.verdict for r in (c5a, c6)] == ["cannot tell", "cannot tell"]
    never = ("no number of seeds a side would decide: the test images' own sampling error is "
             "too large (a larger test split would)")
    assert part_words(replace(c6, test=replace(c6.test, test=IMAGES), seeds_needed=math.inf)) \
        .endswith(never)
    assert A.row_words({**WIN, "verdict": "cannot tell", "test": IMAGES,  # a tuned verdicts row
                      "seeds_needed": math.inf}).endswith(never)
    seen = replace(moved(c6), test=replace(c6.test, test=IMAGES))
    assert A.tuned_words([seen]) == ("Welch + the test images' sampling error, Holm over the 1 C6 "
                                   "parts; *equivalent* by TOST within ±0.5 pts for svhn")
    row = {**WIN, "dataset": "svhn", "optim": "rmsprop", "quantity": "test_acc"}
    small = {("mnist", "sgd", "bn", "none"): "BN ahead"}
    assert squeezed(A.tuned_table(pd.DataFrame([row]), [seen], small)).splitlines()[::2] == [
        "| dataset | optimizer | seeds (BN, no BN) | at a small budget (k=1) | at each one's "
        "best |", "| svhn | rmsprop | 3, 3 | — | cannot tell, +0.67 pts (-1.96 to +3.30): 47 "
        "seeds a side would decide |"]
    c5b = replace(moved(c5a, part="b (svhn)"), seeds_needed=99.0)  # C5a (not C5b) and C6 shown
    rows = [{**WIN, "dataset": "svhn", "optim": "rmsprop", "lr": 0.1},
            {**WIN, "dataset": "svhn", "optim": "rmsprop", "lr": 0.1, "treatment": "layer"}]
    table = squeezed(A.answer_table(pd.DataFrame(rows), [c5b, moved(c5a), moved(c6)]))
    cannot = "cannot tell, +0.67 pts ({}): {} seeds a side would decide"
    assert table.splitlines()[::2] == [
        "| dataset | optimizer | lr | compared | seeds (treatment, baseline) | at equal epochs | "
        "at equal training time | at each one's best |",
        "| svhn | rmsprop | 0.1 | BN − no BN | 3, 3 | BN wins, +5.00 pts (+2.00 to +8.00) | "
        f"{cannot.format('-1.92 to +3.25', 22)} | {cannot.format('-1.96 to +3.30', 47)} |"]
    assert table.splitlines()[3] == ("| svhn | rmsprop | 0.1 | LayerNorm − no norm | 3, 3 | "
                                     "LayerNorm wins, +5.00 pts (+2.00 to +8.00) | — | — |")
