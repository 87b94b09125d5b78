"""Claim C7, the budget curve (`bnstudy.report.budget`): the expected-best estimator, the
bootstrap band, the words on a crossover, budget.csv, the report and the printed answer."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from helpers import csv_rows, scalar_tags, scalars, write_job
from matplotlib.colors import to_rgba

from bnstudy.records import TUNING_FILE
from bnstudy.report import budget as B
from bnstudy.report.answer import console_answer
from bnstudy.report.budget import BUDGET_FILE, budgets, expected_best, words
from bnstudy.report.cli import main as report
from bnstudy.report.figures import norm_color
from bnstudy.report.render import tuning_table

N = 200  # trials a side in the hand-made searches: bands narrow enough to place a crossover


@pytest.mark.parametrize("values", [[0.3], [0.5, 0.1], [0.2, 0.9, 0.4, 0.4],
                                    [0.0, 0.7, 0.1, 0.65, 0.3, 0.9, 0.9]])
def test_the_expected_best_of_k_is_the_mean_best_of_every_k_subset(values):
    """Tang et al.'s estimator, ties included; it takes many searches at once (a row each)."""
    curve = expected_best(values)
    for k in range(1, len(values) + 1):
        subsets = list(itertools.combinations(values, k))
        assert curve[k - 1] == pytest.approx(np.mean([max(s) for s in subsets]), abs=1e-12)
    assert curve[0] == pytest.approx(np.mean(values)) and curve[-1] == max(values)
    assert np.allclose(expected_best([values, np.divide(values, 2)]), [curve, curve / 2])


def cell(norm: str, values, seconds: float | None, dataset="mnist", optim="sgd", failed=0
         ) -> dict:
    trials = [{"params": {"optim.optimizer.lr": 0.01}, "value": float(v), "state": "COMPLETE",
               "seconds": seconds} for v in values]
    trials += [{"params": {}, "value": None, "state": "FAIL", "seconds": None}] * failed
    return {"dataset": dataset, "optim": optim, "norm": norm, "trials": trials}


def crossover(bn_value: float = 0.87, **where) -> list[dict]:
    """BN's search scores `bn_value` (10 s a trial); no BN's spreads over 0.5 to 1.0 (8 s): its
    expected best ≈ 0.5 + 0.5 k / (k + 1), 0.75, 0.83, 0.875, …: BN ahead at 1, 2, level at 3,
    behind at 4."""
    return [cell("bn", [bn_value] * N, 10.0, **where),
            cell("none", 0.5 + 0.5 * np.arange(N) / N, 8.0, failed=3, **where)]


def bn_budget(*cells: dict):
    """The one BN − no BN budget of these cells."""
    (budget,) = budgets({"cells": list(cells)}, [("bn", "none")])
    return budget


def test_the_band_holds_the_estimate_and_repeats_itself_and_seconds_charge_each_norms_time():
    first = bn_budget(*crossover())
    assert first.rows() == bn_budget(*crossover()).rows()  # a fixed numpy seed
    for row in first.rows():
        for arm in ("treatment", "baseline"):
            assert row[f"{arm}_low"] - 1e-12 <= row[f"{arm}_best"] <= row[f"{arm}_high"] + 1e-12
        assert row["diff_low"] - 1e-12 <= row["diff"] <= row["diff_high"] + 1e-12
    k1 = first.rows()[0]
    assert k1["baseline_high"] - k1["baseline_low"] > 0.01  # a band, not a point
    assert k1["diff"] == pytest.approx(0.87 - np.mean(0.5 + 0.5 * np.arange(N) / N))
    seconds = [r for r in first.rows() if r["budget"] == "seconds"]
    assert seconds[0]["seconds"] == 10.0  # the first budget both afford a trial
    at = {r["seconds"]: (r["treatment_k"], r["baseline_k"]) for r in seconds}
    assert at[40.0] == (4, 5) and at[24.0] == (2, 3)
    assert seconds[-1]["seconds"] == N * 8.0  # no BN's search ends first


def test_a_crossover_at_3_trials_is_said_as_worth_it_below_3_trials():
    assert words(bn_budget(*crossover())) == "BN is worth it below 3 trials / 24 s of search " \
        "here: at 3 trials the difference vanishes; no BN is ahead from 4 trials."  # 2 BN, 3 no BN
    assert words(bn_budget(*crossover(0.999))) == \
        f"BN is ahead at every budget up to {N} trials / {8 * N} s."
    assert words(bn_budget(*crossover(0.6))) == f"BN is not shown ahead at any budget up to {N} " \
        "trials; no BN is ahead from 1 trial."
    untimed = [cell(c["norm"], [t["value"] for t in c["trials"] if t["value"]], math.nan)
               for c in crossover(0.999) + crossover()]  # no trial seconds: trials only
    assert [words(bn_budget(*untimed[:2])), words(bn_budget(*untimed[2:]))] == [
        f"BN is ahead at every budget up to {N} trials.", "BN is worth it below 3 trials here: "
        "at 3 trials the difference vanishes; no BN is ahead from 4 trials."]
    flipped = bn_budget(cell("bn", [0.6] * N, 10.0), cell("none", [0.0, 1.0] * (N // 2), 10.0))
    assert words(flipped) == "BN is worth it below 2 trials / 20 s of search here: at 2 " \
        "trials the difference reverses; no BN is ahead from 2 trials."  # 0.5, then 0.75
    level = bn_budget(cell("bn", [0.8] * N, 10.0),  # no BN's best is BN's: no reversal
                      cell("none", 0.5 + 0.3 * np.arange(N) / (N - 1), 10.0))
    assert words(level) == "BN is worth it below 198 trials / 1980 s of search here: at 198 " \
        "trials the difference vanishes."
    later = bn_budget(cell("bn", 0.5 + 0.5 * np.arange(N) / N, 8.0), cell("none", [0.8] * N, 10.0))
    assert words(later) == "BN is not shown ahead at a small budget; it is ahead at 2 trials."


def test_one_trial_a_side_is_direction_and_size_only():
    """A bootstrap of one trial has no spread: its p would 'decide' anything; no test."""
    single = bn_budget(cell("bn", [0.80], 1.0), cell("none", [0.81], 1.0))
    (row,) = B.claim_rows([single])
    assert math.isnan(row["p_value"]) and row["verdict"] == row["claim_verdict"] == "cannot tell"
    assert row["note"].startswith("one trial on a side: a bootstrap of one has no spread")
    assert words(single) == ("One trial on a side: BN − no BN -1.00 pts, direction and size only "
                             "(a bootstrap of one trial has no spread).")
    two = bn_budget(cell("bn", [0.8, 0.9], 1.0), cell("none", [0.5, 0.6], 1.0))
    assert all(r["p_value"] < 0.05 for r in B.claim_rows([two]))  # two trials a side: tested


def write_tuned_sweep(sweep_dir, cells: list[dict]) -> None:
    """A tuned sweep: the cells' searches in tuning.json and two re-runs per cell."""
    for c in cells:
        c["final_jobs"] = [write_job(sweep_dir, [0.5, 0.9], dataset=c["dataset"], optim=c["optim"],
                                     norm=c["norm"], seed=s).name for s in (0, 1)]
        c.update(best_params={"optim.optimizer.lr": 0.01}, best_value=0.9)
    (sweep_dir / TUNING_FILE).write_text(json.dumps(
        {"sampler": "RandomSampler", "sampler_seed": 0, "n_trials": N, "rerun_top": 1,
         "seeds": [0, 1], "cells": cells}))


@pytest.mark.slow
def test_the_report_of_a_tuned_sweep_draws_the_budget(tmp_path, figures_not_rendered):
    """budget.csv, a figure and a chart per pair, C7's parts (k = 1, 2) and words in report.md."""
    write_tuned_sweep(tmp_path, crossover() + crossover(0.6, optim="adam"))
    assert report([str(tmp_path)]) == 0
    out = tmp_path / "report"
    rows = csv_rows(out / BUDGET_FILE)
    assert list(rows[0]) == [
        "dataset", "optim", "treatment", "baseline", "budget", "k", "seconds", "treatment_k",
        "baseline_k", "treatment_seconds", "baseline_seconds", "treatment_best",
        "treatment_low", "treatment_high", "baseline_best", "baseline_low", "baseline_high",
        "diff", "diff_low", "diff_high"]
    assert {(r["optim"], r["treatment"], r["baseline"]) for r in rows} == {
        ("sgd", "bn", "none"), ("adam", "bn", "none")}
    assert [r["k"] for r in rows if r["budget"] == "trials"] == list(map(str, range(1, N + 1))) * 2
    assert {r["k"] for r in rows if r["budget"] == "seconds"} == {""}
    assert all((out / f"budget_mnist-{optim}-bn-none.png").is_file() for optim in ("sgd", "adam"))
    c7 = {r["part"]: r for r in csv_rows(out / "claims.csv") if r["claim"] == "C7"}
    assert {p: r["verdict"] for p, r in c7.items()} == {
        " (MNIST, SGD, k=1)": "holds", " (MNIST, SGD, k=2)": "holds",
        " (MNIST, Adam, k=1)": "does not hold", " (MNIST, Adam, k=2)": "does not hold"}
    assert {r["claim_verdict"] for r in c7.values()} == {"does not hold"}
    assert {r["family"] for r in c7.values()} == {"tuned"}
    text = " ".join((out / "report.md").read_text().split())
    assert "**MNIST, SGD**: BN is worth it below 3 trials" in text
    assert "![expected best against the budget](budget_mnist-sgd-bn-none.png)" in text
    assert "Verdict: **C7 does not hold**" in text
    assert "### tuned=each norm at its best Verdicts: **C6 " in text  # C6's part, the re-runs
    assert "| MNIST | SGD | 2, 2 | BN ahead, +12.12 pts (+10.22 to +14.14) |" in text
    assert "at a small budget (k=1)" in text
    printed = console_answer(tmp_path).splitlines()  # as it ends; word for word: a test below
    assert printed[2].startswith("  MNIST, Adam: after one trial no BN ahead, ")
    assert {f"budget/mnist-sgd/{t}" for t in ("bn", "none", "bn-none")} <= scalar_tags(out)
    assert scalars(out, "budget/mnist-sgd/bn")[:2] == [(k, pytest.approx(87.0)) for k in (1, 2)]
    write_tuned_sweep(tmp_path, [])  # a report without a search: no budget.csv left behind
    assert report([str(tmp_path)]) == 0 and not (out / BUDGET_FILE).exists()


def test_c7_parts_are_decided_on_bootstrap_p_holm_adjusted_over_the_claim():
    """p: twice the smaller side's share ((count + 1) / (B + 1)); verdicts on Holm, not bands."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    tuning = {"cells": [c for d, shift in (("mnist", 0.0), ("cifar10", 0.02))
                        for c in (cell("bn", rng.normal(0.6 + shift, 0.05, 12), 1.0, dataset=d),
                                  cell("none", rng.normal(0.6, 0.05, 12), 1.0, dataset=d))]}
    found = budgets(tuning, [("bn", "none")])
    rows = B.claim_rows(found)
    for row, budget in zip(rows, [b for b in found for _ in (1, 2)], strict=True):
        k = int(row["part"].rsplit("k=", 1)[1].rstrip(")"))
        d = budget.treatment.boots[:, k - 1] - budget.baseline.boots[:, k - 1]
        side = min((d <= 0).sum(), (d >= 0).sum())
        assert row["p_value"] == pytest.approx(min(1.0, 2 * (side + 1) / (len(d) + 1)))
    expected = multipletests([r["p_value"] for r in rows], method="holm")[1]
    assert [r["p_holm"] for r in rows] == pytest.approx(list(expected))
    for r in rows:
        assert r["verdict"] == ("cannot tell" if r["p_holm"] >= 0.05 else
                                "holds" if r["estimate"] > 0 else "does not hold")


def test_the_tuned_sweeps_printed_answer_word_for_word(tmp_path):
    """A line per dataset × optimizer; a dash for a cell without a search; nothing with neither."""
    write_job(tmp_path, [0.5])
    write_tuned_sweep(tmp_path, [])
    assert console_answer(tmp_path) == ""
    write_tuned_sweep(tmp_path, crossover(dataset="svhn", optim="rmsprop"))
    ahead, same = "BN ahead, +12.12 pts (+10.22 to +14.14)", \
        "+0.00 pts: no spread over the seeds, no test"  # the re-runs: 0.9 each
    assert console_answer(tmp_path).splitlines() == [
        "Is BatchNorm worth it at your tuning budget? BN − no BN in the expected best val acc "
        "after one trial of each search (C7, bootstrap, Holm), and in test acc at each one's best "
        "(C6, Welch + the test images' error, Holm):",
        f"  svhn, rmsprop: after one trial {ahead}; at each one's best {same}"]
    write_tuned_sweep(tmp_path, crossover() + [cell(n, [], 1.0, optim="adam", failed=2)
                                               for n in ("bn", "none")])
    assert console_answer(tmp_path).splitlines()[1:] == [
        f"  MNIST, SGD: after one trial {ahead}; at each one's best {same}",
        f"  MNIST, Adam: after one trial —; at each one's best {same}"]


def test_c7_is_bns_claim_and_another_pair_is_decided_alike_outside_it(tmp_path):
    """LayerNorm − no norm is decided alike (Holm within its pair); without BN no claim."""
    layer = cell("layer", [0.6] * N, 10.0)  # behind no BN's search from the first trial
    write_tuned_sweep(tmp_path, crossover() + [layer])
    out = tmp_path / "out"
    out.mkdir()
    both = B.budget_section(tmp_path, [("bn", "none"), ("layer", "none")], out)
    assert {r["claim"] for r in both.rows} == {"C7"}
    assert [r["statement"] for r in both.rows] == [
        "MNIST, SGD: after 1 trial of search BN is ahead",
        "MNIST, SGD: after 2 trials of search BN is ahead"]
    assert both.text.startswith(f"### The tuning budget (C7)\n\n**C7**: {B.CLAIMS['C7']}.\n")
    assert "Verdict: **C7 holds**." in both.text and "(C7's, for BN − no BN)" in both.text
    assert "**MNIST, SGD, LayerNorm − no norm**: LayerNorm is not shown ahead" in both.text
    assert set(both.figures) == {"budget_mnist-sgd-bn-none", "budget_mnist-sgd-layer-none"} and \
        all(figure.axes for figure in both.figures.values())
    assert set(both.scalars) == {f"budget/mnist-sgd/{chart}" for chart in (
        "bn", "none", "layer", "bn-none", "layer-none")}  # % at each k, from k = 1
    assert both.scalars["budget/mnist-sgd/bn"][:2] == [(k, pytest.approx(87.0)) for k in (1, 2)]
    written = (out / BUDGET_FILE).read_bytes().decode()  # as every CSV: no index, CRLF, 6 places
    assert written.startswith("dataset,optim,treatment,baseline,budget,k,") and \
        written.count("\r\n") == written.count("\n") == 1 + len(csv_rows(out / BUDGET_FILE))
    assert max(len(v.split(".")[1]) for v in written.replace("\r\n", ",").split(",") if
               v.replace(".", "").replace("-", "").isdigit() and "." in v) == 6
    assert both.small[("mnist", "sgd", "layer", "none")].startswith("no norm ahead, -14.87 pts")
    assert both.small[("mnist", "sgd", "bn", "none")].startswith("BN ahead, +12.12")
    alone = B.budget_section(tmp_path, [("layer", "none")], out)
    assert alone.rows == [] and "C7" not in alone.text
    assert alone.text.startswith("### The tuning budget\n") and "**MNIST, SGD**: " in alone.text
    assert console_answer(tmp_path).splitlines()[:2] == [
        "Is each norm worth it at your tuning budget? treatment − baseline in the expected best "
        "val acc after one trial of each search (C7 for BN − no BN, bootstrap, Holm), and in "
        "test acc at each one's best (C6 for BN − no BN, Welch + the test images' error, Holm):",
        "  MNIST, SGD, BN − no BN: after one trial BN ahead, +12.12 pts (+10.22 to +14.14); at "
        "each one's best +0.00 pts: no spread over the seeds, no test"]
    write_tuned_sweep(tmp_path, [cell("none", 0.5 + 0.5 * np.arange(N) / N, 8.0), layer])
    head, line = console_answer(tmp_path).splitlines()
    assert head == (
        "Is LayerNorm worth it at your tuning budget? LayerNorm − no norm in the expected best "
        "val acc after one trial of each search (bootstrap, Holm), and in test acc at each "
        "one's best (Welch + the test images' error, Holm):")
    assert line == "  MNIST, SGD: after one trial no norm ahead, -14.87 pts (-16.78 to -12.86); " \
        "at each one's best +0.00 pts: no spread over the seeds, no test"


def test_a_cell_counts_its_finished_trials_only_and_a_pair_needs_both_arms():
    """No state: finished; a pair without an arm's finished trials is left out, not the others."""
    rng = np.random.default_rng(0)
    scored_but_failed = {"value": 0.99, "state": "FAIL"}
    no_state = {"value": 0.4, "seconds": 2.0}
    one = B.arm({"norm": "bn", "trials": [scored_but_failed, no_state]}, rng)
    assert list(one.values) == [0.4] and one.seconds == 2.0
    assert B.arm({"norm": "bn"}, rng) is None
    assert budgets({}, [("bn", "none")]) == []
    lonely = [cell("bn", [0.5, 0.6], 1.0), cell("none", [], 1.0, failed=2),
              cell("layer", [0.5], 1.0, optim="adam")]
    assert budgets({"cells": lonely}, [("bn", "none"), ("layer", "none")]) == []
    pairs = budgets({"cells": crossover()}, [("layer", "none"), ("bn", "none")])
    assert [b.name for b in pairs] == ["mnist-sgd-bn-none"]  # the missing pair skipped, not all


def test_the_difference_at_kt_and_kb_trials_and_its_bootstrap_p():
    """Each arm's curve at its own k; identical searches: p = 1; seconds are k × trial seconds."""
    budget = bn_budget(cell("bn", [0.2, 0.9, 0.5], 3.0), cell("none", [0.3, 0.4, 0.8], 2.0))
    t, b = budget.treatment.curve, budget.baseline.curve
    assert budget.diff(2, 1)[0] == pytest.approx(t[1] - b[0])
    boots = budget.treatment.boots[:, 1] - budget.baseline.boots[:, 0]
    assert budget.diff(2, 1)[1:] == pytest.approx(B.band(boots))  # the band at the same ks
    assert budget.diff(1, 3)[0] == pytest.approx(t[0] - b[2])
    row = budget.rows()[1]  # k = 2
    assert (row["treatment_seconds"], row["baseline_seconds"]) == (6.0, 4.0)
    same = bn_budget(cell("bn", [0.2, 0.9], 1.0), cell("none", [0.2, 0.9], 1.0))
    assert same.p_value(1) == 1.0
    low, high = B.band(np.arange(12.0).reshape(4, 3), axis=0)  # one band per column
    assert low.shape == high.shape == (3,) and list(low) < list(high)


@pytest.mark.parametrize("seconds,grid", [
    ((2.5, 2.0), [2.5, 4.0, 5.0]),  # from the first both afford (not 2 s) to the first end
    ((0.5, 0.4), [0.5, 0.8, 1.0]),  # under a second a trial
    ((float("nan"), 2.0), []), ((2.0, float("nan")), []),  # a search without times
    ((0.0, 0.0), []),
])
def test_the_seconds_grid_runs_from_one_trial_each_to_the_shorter_search(seconds, grid):
    budget = bn_budget(cell("bn", [0.5, 0.6], seconds[0]),
                       cell("none", [0.5, 0.6, 0.7], seconds[1]))
    assert budget.seconds_grid() == pytest.approx(grid)


def test_a_c7_part_and_its_chart_in_full():
    """Rows and chart at each k both searches reached (k = 1, 2); words after the verdict."""
    budget = bn_budget(cell("bn", [0.2, 0.9, 0.5], 3.0), cell("none", [0.3, 0.8], 2.0))
    rows = B.claim_rows([budget])
    sides = ["BN 53.33% (3 trials); no BN 55.00% (2 trials)",
             "BN 76.67% (3 trials); no BN 80.00% (2 trials)"]
    for k, row, said in zip((1, 2), rows, sides, strict=True):
        diff, low, high = budget.diff(k, k)
        trials = "1 trial" if k == 1 else "2 trials"
        assert row == {
            "claim": "C7", "part": f" (MNIST, SGD, k={k})", "family": "tuned",
            "dataset": "mnist", "statement": f"MNIST, SGD: after {trials} of search BN is ahead",
            "statistic": f"expected best val acc after {trials} (Tang et al.), BN − no BN",
            "unit": "accuracy", "claimed_sign": 1, "sides": said, "estimate": diff,
            "ci_low": low, "ci_high": high, "test": "bootstrap", "p_value": budget.p_value(k),
            "claim_verdict": "cannot tell", "detectable_80": pytest.approx(np.nan, nan_ok=True),
            "seeds_needed": pytest.approx(np.nan, nan_ok=True), "seeds_would_show": "",
            "p_holm": 1.0,
            "note": "95% bootstrap band (1000 resamples of each search)", "verdict": "cannot tell"}
    one = "{:+.2f} pts ({:+.2f} to {:+.2f})".format(*(100 * v for v in budget.diff(1, 1)))
    assert {v: B.small_words(budget, v) for v in ("holds", "does not hold", "cannot tell")} == {
        "holds": f"BN ahead, {one}", "does not hold": f"no BN ahead, {one}",
        "cannot tell": f"cannot tell, {one}"}
    chart = B.scalars([budget])["budget/mnist-sgd/bn-none"]
    assert chart == [(k, pytest.approx(100 * budget.diff(k, k)[0])) for k in (1, 2)]


def test_the_search_table_says_each_cells_search_and_choice():
    """The sampler, then each cell's search and choice (a dash for what is unknown)."""
    chosen = {"optim.optimizer.lr": 0.01234, "model.net.depth": 2}
    tuning = {"sampler": "RandomSampler", "sampler_seed": 7, "n_trials": 3, "rerun_top": 2,
              "seeds": [0, 1], "cells": [
                  {"dataset": "mnist", "optim": "sgd", "norm": "bn", "best_params": chosen,
                   "trials": [{"seconds": 2.0}, {"seconds": 4.0}, {"seconds": None}],
                   "best_value": 0.9512, "candidates": [
                       {"params": {"optim.optimizer.lr": 0.1}, "val_acc": [0.9, 0.91]},
                       {"params": chosen, "val_acc": [0.95, None, 0.93]}]},
                  {"dataset": "cifar10", "optim": "adam", "norm": "none", "trials": [{}]}]}
    head, rows = tuning_table(tuning).split("\n\n")
    assert head == (
        "Search: Optuna RandomSampler, a search per cell (base sampler seed 7, each cell's seed "
        "drawn from it and the cell's name), 3 trials per cell on one validation split; the 2 "
        "best setting(s) of each re-run with seeds [0, 1], the one with the best mean validation "
        "accuracy over them chosen, and its re-runs compared on the test split, which the search "
        "never saw.")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows.splitlines()]
    assert cells[0] == ["dataset", "optimizer", "norm", "trials", "chosen setting",
                        "rank in search", "val acc (search)", "mean val acc (re-runs)",
                        "mean trial s"]
    assert cells[2:] == [
        ["mnist", "sgd", "BN", "3", "lr=0.0123, model.net.depth=2", "2", "95.12 %", "94.00 %",
         "3.0"],
        ["cifar10", "adam", "no BN", "1", "", "1", "—", "—", "—"]]
    tuning["cells"].append({"dataset": "mnist", "optim": "sgd", "norm": "layer", "trials": []})
    assert [line.split("|")[3].strip() for line in tuning_table(tuning).splitlines()[-3:]] == [
        "BN", "no norm", "LayerNorm"]  # beside another norm than BN
    older = tuning_table({"n_trials": 1, "seeds": [0]})  # a tuning.json of an earlier version
    assert older.startswith("Search: Optuna TPE, a search per cell (base sampler seed None, the "
                            "same in every cell), 1 trial per cell on one validation split; the 1 "
                            "best setting(s) of each re-run with seeds [0],")


def test_the_budget_table_shows_a_few_ks_and_the_last_with_each_sides_band():
    """k at the `SHOWN` steps and the last k both reached; where the difference's band lies."""
    budget = bn_budget(cell("bn", [0.87] * (N - 10), 10.0), crossover()[1])  # BN: 190 trials
    lines = B.table(budget).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]
    assert cells[0] == ["trials (k)", "seconds (BN / no BN)", "BN, %", "no BN, %",
                        "BN − no BN, pts", "band"]
    assert [int(c[0]) for c in cells[1:]] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, N - 10]
    assert cells[1] == ["1", "10 / 8", "87.00 (87.00 to 87.00)", "74.88 (72.86 to 76.78)",
                        "+12.12 (+10.22 to +14.14)", "above 0"]
    rows = {r["k"]: r for r in budget.rows() if r["budget"] == "trials"}
    for k, *_, diff, band in cells[1:]:
        r = rows[int(k)]
        assert diff == "{:+.2f} ({:+.2f} to {:+.2f})".format(
            *(100 * r[c] for c in ("diff", "diff_low", "diff_high")))
        assert band == ("above 0" if r["diff_low"] > 0 else "below 0" if r["diff_high"] < 0
                        else "includes 0")
    assert [c[5] for c in cells[3:5]] == ["includes 0", "below 0"]  # the crossover at 3 trials


def test_the_budget_figure_draws_each_arm_against_trials_and_seconds_with_its_band():
    """Against k × trial seconds only an arm with times; log-2 axes with plain tick numbers."""
    bn, none = cell("bn", [0.2, 0.9, 0.5], 3.0), cell("none", [0.3, 0.8], None)  # no BN: no s
    budget = bn_budget(bn, none)
    fig = B.figure(budget)
    by_k, by_s = fig.axes
    assert [(line.get_label(), list(line.get_xdata()), line.get_color()) for line in by_k.lines] \
        == [("BatchNorm (3 trials)", [1, 2, 3], norm_color("bn")),
            ("No BatchNorm (2 trials)", [1, 2], norm_color("none"))]
    assert list(by_s.lines[0].get_xdata()) == [3.0, 6.0, 9.0] and len(by_s.lines) == 1
    for line, arm in zip(by_k.lines, (budget.treatment, budget.baseline), strict=True):
        assert np.allclose(line.get_ydata(), 100 * arm.curve)
    low, high = B.band(budget.treatment.boots, axis=0)
    (fill, _), (fill_s,) = by_k.collections, by_s.collections
    ys = fill.get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), 100 * low.min()) and np.isclose(ys.max(), 100 * high.max())
    wide = bn_budget(cell("bn", np.linspace(0.1, 0.9, 12), 1.0), none)
    low, high = B.band(wide.treatment.boots, axis=0)
    ys = set(np.round(B.figure(wide).axes[0].collections[0].get_paths()[0].vertices[:, 1], 9))
    assert ys == set(np.round(100 * np.r_[low, high], 9)) and len(ys) > 2  # each k's band
    assert tuple(fill_s.get_facecolor()[0]) == to_rgba(norm_color("bn"), 0.2)
    assert [t.get_text() for t in by_k.get_legend().get_texts()] == [
        "BatchNorm (3 trials)", "No BatchNorm (2 trials)"]
    assert [ax.xaxis.get_transform().base for ax in (by_k, by_s)] == [2, 2]
    assert by_k.xaxis.get_major_formatter()(4.0, 0) == "4"
    assert (by_k.get_xlabel(), by_s.get_xlabel(), by_k.get_ylabel()) == (
        "trials of random search (k)", "seconds of search (k × the cell's mean trial seconds)",
        "expected best validation accuracy (%)")
    assert fig._suptitle.get_text() == \
        "MNIST, SGD: is BatchNorm worth it at your tuning budget? (band: 95% bootstrap)"
    (layer,) = budgets({"cells": [{**bn, "norm": "layer"}, none]}, [("layer", "none")])
    assert B.figure(layer)._suptitle.get_text().startswith("MNIST, SGD: is LayerNorm worth it at ")
    by_k = B.figure(layer).axes[0]
    assert [line.get_label() for line in by_k.lines] == [
        "LayerNorm (3 trials)", "No norm (2 trials)"]
    assert tuple(by_k.collections[0].get_facecolor()[0]) == to_rgba(norm_color("layer"), 0.2)
