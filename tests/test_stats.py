"""The statistics of `bnstudy.report.stats` against scipy and statsmodels on hand-made
numbers: the paired contrast, Holm's adjustment, TOST, the test images' variance, paired power."""

from __future__ import annotations

import math
import os
from functools import partial

import numpy as np
import pandas as pd
import pytest
from helpers import write_job
from omegaconf import OmegaConf
from scipy import stats as sps
from scipy.integrate import quad
from scipy.optimize import brentq
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from bnstudy.report import render
from bnstudy.report import stats as S
from bnstudy.report.render import pct, scale, spread, write_csv
from bnstudy.report.runs import group_keys, load_runs, margins, saved_margin

BN = [0.91, 0.93, 0.92, 0.95, 0.90]
NONE = [0.90, 0.915, 0.91, 0.93, 0.895]
SEEDS = [list(range(5))] * 2  # BN's and no BN's seeds 0..4: paired


def diff(treatment: list, baseline: list, **kwargs) -> S.Contrast:
    return S.contrast([(1.0, treatment), (-1.0, baseline)], **kwargs)  # treatment − baseline


def test_the_paired_contrast_is_scipys_ttest_rel_over_the_seeds_both_sides_ran():
    """Two shared seeds pair; seeds not one to one: Welch, said; seeds unlike values: refused."""
    # no BN's runs in another order, and a seed (7) BN lacks: left out of the pairs
    none = [NONE[4], NONE[2], NONE[0], NONE[1], NONE[3], 0.5]
    test = diff(BN, none, seeds=[[0, 1, 2, 3, 4], [4, 2, 0, 1, 3, 7]])
    expected, welch = sps.ttest_rel(BN, NONE), sps.ttest_ind(BN, NONE, equal_var=False)
    assert (test.test, test.n_paired) == ("paired t", 5)
    assert test.estimate == pytest.approx(np.mean(BN) - np.mean(NONE))
    assert test.p_value == pytest.approx(expected.pvalue)
    assert (test.ci_low, test.ci_high) == pytest.approx(tuple(expected.confidence_interval()))
    assert test.p_value < welch.pvalue  # the shared seed's part of the spread cancels
    two = diff([0.9, 0.95], [0.8, 0.9], seeds=[[0, 1], [1, 0]])
    assert (two.test, two.n_paired) == (S.PAIRED, 2)
    assert two.p_value == pytest.approx(sps.ttest_rel([0.9, 0.95], [0.9, 0.8]).pvalue)
    for seeds in ([list(range(5))], [list(range(4)), list(range(5))]):
        with pytest.raises(ValueError):
            diff(BN, NONE, seeds=seeds)
    for seeds in ([[0, 0, 1, 2, 3], list(range(5))], [list(range(5)), list(range(5, 10))]):
        unpaired = diff(BN, NONE, seeds=seeds)  # repeated; apart
        assert (unpaired.test, unpaired.n_paired) == ("Welch, seeds unpaired", 0)
        assert unpaired.p_value == pytest.approx(welch.pvalue)


def test_holm_is_statsmodels_multipletests_and_skips_what_has_no_test():
    ps = [0.01, 0.04, 0.03, 0.005, 0.2, 0.049]
    assert S.holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]))
    first, nan, last = S.holm([0.01, math.nan, 0.04])
    assert math.isnan(nan)
    assert [first, last] == pytest.approx(list(multipletests([0.01, 0.04], method="holm")[1]))
    assert S.holm([]) == []


def test_tost_is_statsmodels_ttost_paired_and_ttost_ind_unequal():
    margin, bn, none = 0.02, np.array(BN), np.array(NONE)
    paired = ttost_paired(bn, none, -margin, margin)[0]
    assert diff(BN, NONE, seeds=SEEDS, margin=margin).p_tost == pytest.approx(paired)
    welch = ttost_ind(bn, none, -margin, margin, usevar="unequal")[0]
    assert diff(BN, NONE, margin=margin).p_tost == pytest.approx(welch)
    assert math.isnan(diff(BN, NONE).p_tost)  # no margin: no TOST


def test_the_rule_reads_holms_p_and_says_equivalent_only_from_tost():
    close = diff(BN, NONE, seeds=SEEDS, margin=0.03)
    assert S.decide(close) == "holds"  # p 0.004: the difference test decides first
    same = [0.5, 0.6, 0.7]
    family_of_two, other = S.holm_family([close, diff(same, same, seeds=[[0, 1, 2]] * 2)])
    assert math.isnan(other.p_value) and family_of_two.p_holm == close.p_value  # no test: no m
    level = diff(BN, [x + 0.0135 for x in NONE], margin=0.01, seeds=SEEDS)
    assert level.p_value > 0.05 and level.p_tost == pytest.approx(0.0145, abs=1e-4)
    assert S.decide(level) == "equivalent"
    assert S.decide(S.holm_family([level] * 4)[0]) == "cannot tell"  # TOST's p Holm'd too
    assert S.comparison_word("equivalent", level.p_value) == "equivalent"
    assert S.comparison_word("cannot tell", math.nan) == "no test"
    at = S.Contrast(0.01, 0.0, 0.02, 0.05, p_holm=0.05, p_tost_holm=0.05)
    assert S.decide(at) == "cannot tell"  # p exactly alpha decides nothing
    assert S.t_power(0.0, (S.Spread(0.01, 5),)) == pytest.approx(0.05)  # a null: power alpha


def test_the_test_images_add_their_sampling_error_and_the_df_comes_from_the_seeds_that_vary():
    rng, n = np.random.default_rng(0), 200
    runs = {w: [rng.random(n) < p for p in probs]
            for w, probs in ((1.0, (0.62, 0.6, 0.64)), (-1.0, (0.55, 0.57, 0.56)))}
    terms = [(w, [float(a.mean()) for a in arrays]) for w, arrays in runs.items()]
    images = S.image_spread(list(runs.items()))
    d = np.mean(runs[1.0], axis=0) - np.mean(runs[-1.0], axis=0)
    assert (images.var, images.n) == (pytest.approx(np.var(d, ddof=1)), n)
    seeds_only, both = S.contrast(terms), S.contrast(terms, images=images)
    se_seeds, (se_both, df) = S.t_parts(seeds_only.spreads)[0], S.t_parts(both.spreads)
    assert se_both ** 2 == pytest.approx(se_seeds ** 2 + np.var(d, ddof=1) / n)
    half = sps.t.ppf(0.975, df) * se_both
    assert (both.ci_low, both.ci_high) == pytest.approx((both.estimate - half,
                                                         both.estimate + half))
    assert both.ci_high - both.ci_low > seeds_only.ci_high - seeds_only.ci_low
    assert both.test == "Welch + test images" and seeds_only.test == "Welch"
    assert S.image_spread([(1.0, runs[1.0]), (-1.0, [])]) is None  # a side saved none
    # the df: the seeds' where they vary (Welch–Satterthwaite), else the images'
    error = S.Spread(0.04, 100, seeds=False)
    assert S.t_parts((S.Spread(0.0, 5), error)) == pytest.approx((0.02, 99))
    welch = (S.Spread(0.01, 4), S.Spread(0.02, 6))  # Welch–Satterthwaite of the seeds alone
    df = (0.01 / 4 + 0.02 / 6) ** 2 / ((0.01 / 4) ** 2 / 3 + (0.02 / 6) ** 2 / 5)
    assert S.t_parts((*welch, error))[1] == pytest.approx(df)


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_power_is_statsmodels_paired_and_welch_and_nearly_the_z_test_for_many_seeds(alpha):
    """Paired: the differences' one-sample noncentral t; Welch, equal spreads: the pooled one."""
    paired = diff(BN, NONE, seeds=SEEDS)
    sd = float(np.std(np.subtract(BN, NONE), ddof=1))
    assert S.power_of(paired, alpha=alpha)[0] / sd == pytest.approx(
        TTestPower().solve_power(nobs=5, alpha=alpha, power=0.8), rel=1e-4)
    half = diff(BN, [x + paired.estimate / 2 for x in NONE], seeds=SEEDS)  # same spread
    assert S.power_of(half, alpha=alpha)[1] == math.ceil(TTestPower().solve_power(
        effect_size=abs(half.estimate) / sd, alpha=alpha, power=0.8))
    a, b = [0.0, 1.0, 2.0, 3.0], [0.5, 1.5, 2.5, 3.5]  # equal spread: Welch's df = pooled df
    sd = float(np.std(a, ddof=1))
    detectable, needed, _ = S.power_of(diff(a, b), alpha=alpha)
    assert detectable / sd == pytest.approx(TTestIndPower().solve_power(
        nobs1=4, ratio=1.0, alpha=alpha, power=0.8), rel=1e-4)
    assert needed == math.ceil(TTestIndPower().solve_power(
        effect_size=0.5 / sd, ratio=1.0, alpha=alpha, power=0.8))
    assert S.t_power(detectable, (S.Spread(sd**2, 4),) * 2, alpha=alpha) == pytest.approx(
        0.8, abs=1e-6)
    xs = [float(i % 7) for i in range(200)]  # one sample, large n: nearly the z test
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(0.8)
    assert S.power_of(S.contrast([(1.0, xs)]), alpha=alpha)[0] == pytest.approx(
        z * np.std(xs, ddof=1) / math.sqrt(200), rel=0.01)


def test_verdicts_row_a_comparison_missing_one_norm_and_skip_one_missing_both(tmp_path):
    """A side with no run: a row (0 runs, 0 diverged, NaN mean, no test); the next still come."""
    for seed in (0, 1):  # Adam: BN only; SGD: both norms, one BN seed diverged
        write_job(tmp_path, [0.6, 0.7 + seed / 100], optim="adam", seed=seed)
        write_job(tmp_path, [0.5, 0.8 + seed / 50], optim="sgd", seed=seed)
        write_job(tmp_path, [0.5, 0.6 + seed / 20], optim="sgd", norm="none", seed=seed)
    write_job(tmp_path, [0.5, 0.1], "diverged", optim="sgd", seed=2)
    table = S.verdicts(load_runs(tmp_path), [("layer", "none"), ("bn", "none")])
    rows = {(r.optim, r.treatment): r for r in table.itertuples()}
    assert set(rows) == {("adam", "bn"), ("sgd", "layer"), ("sgd", "bn")}  # Adam: no layer, none
    adam, sgd = rows["adam", "bn"], rows["sgd", "bn"]
    assert (adam.n_treatment, adam.n_baseline, adam.baseline_diverged) == (2, 0, 0)
    assert math.isnan(adam.baseline_mean) and math.isnan(adam.p_value)
    assert adam.treatment_mean == pytest.approx(0.705)
    assert (sgd.n_treatment, sgd.n_baseline, sgd.treatment_diverged) == (2, 2, 1)
    assert sgd.test == S.PAIRED and sgd.p_holm == sgd.p_value  # the only test: rows without one
    assert rows["sgd", "layer"].n_treatment == 0  # are not counted in Holm's family


# --- issue #36: the guards mutation testing found untested (docs/mutation.md) ----------------


def test_one_group_is_a_one_sample_t_and_weights_scale_the_spread():
    one = S.contrast([(1.0, BN)])
    assert one.test == S.contrast([(1.0, BN)], seeds=[list(range(5))]).test == S.ONE
    assert one.p_value == pytest.approx(sps.ttest_1samp(BN, 0).pvalue)
    full, half = diff(BN, NONE), S.contrast([(0.5, BN), (-0.5, NONE)])
    assert (half.estimate, half.ci_high - half.ci_low) == pytest.approx(
        (full.estimate / 2, (full.ci_high - full.ci_low) / 2))
    assert half.p_value == pytest.approx(full.p_value)
    pairs = [0.9, 0.94], [0.8, 0.83]  # two runs a side are enough for Welch
    assert diff(*pairs).p_value == pytest.approx(sps.ttest_ind(*pairs, equal_var=False).pvalue)


def test_a_contrast_without_a_test_keeps_its_estimate_test_seeds_and_margin():
    empty = diff(BN, [], seeds=[list(range(5)), []], margin=0.01)
    assert empty.test == S.UNPAIRED
    assert np.isnan([empty.estimate, empty.ci_low, empty.ci_high, empty.p_value]).all()
    flat = diff([0.5, 0.75, 1.0], [0.25, 0.5, 0.75], seeds=[[0, 1, 2]] * 2, margin=0.01)
    assert (flat.estimate, flat.test, flat.n_paired, flat.margin) == (0.25, S.PAIRED, 3, 0.01)
    assert np.isnan([flat.ci_low, flat.ci_high, flat.p_value, flat.p_tost]).all()  # no spread
    for test in (flat, S.Contrast(0.1, 0.0, 0.2, 0.03)):  # no spreads (a bootstrap's p, say)
        assert [math.isnan(x) for x in S.power_of(test)[:2]] == [True, True]
        assert S.power_of(test)[2] == ""


def test_tost_power_is_what_simulation_finds_and_a_tie_is_decided_by_equivalence_seeds():
    rng = np.random.default_rng(0)
    delta, sd, margin, n = 0.1, 1.0, 0.8, 12  # one-sample (paired) differences
    samples = rng.normal(delta, sd, (20000, n))
    est, se = samples.mean(axis=1), samples.std(axis=1, ddof=1) / math.sqrt(n)
    p_tost = np.maximum(sps.t.sf((est + margin) / se, n - 1), sps.t.cdf((est - margin) / se, n - 1))
    assert S.contrast([(1.0, list(samples[0]))], margin=margin).p_tost == pytest.approx(p_tost[0])
    assert np.mean(p_tost < 0.05) == pytest.approx(
        S.tost_power(delta, margin, (S.Spread(sd**2, n),)), abs=0.01)
    xs = rng.normal(0, 1, 6)
    xs = list(0.1 + (xs - xs.mean()) / xs.std(ddof=1))  # mean 0.1, sd 1: within ±0.8
    tie = S.contrast([(1.0, xs)], margin=margin)
    _, needed, shows = S.power_of(tie)
    assert shows == "equivalence" and S.tost_power(0.1, margin, tie.spreads, needed) >= 0.8 > \
        S.tost_power(0.1, margin, tie.spreads, needed - 1)
    assert S.t_power(0.1, tie.spreads, needed) < 0.8  # a difference needs more
    for outside in (0.9, -0.9):  # beyond the margin: only a difference can decide
        apart = S.contrast([(1.0, [x - 0.1 + outside for x in xs])], margin=margin)
        assert S.power_of(apart)[2] == "a difference"
    assert S.power_of(S.contrast([(1.0, xs)]))[2] == "a difference"  # no margin: no TOST


def test_seeds_needed_stop_at_1000_and_start_at_2():
    spreads = (S.Spread(1.0, 5),)
    for alpha in (0.05, 0.01):  # a difference 1001 seeds a side would decide
        delta = brentq(lambda d, a=alpha: S.t_power(d, spreads, 1000.5, a) - 0.8, 0.01, 1)
        edge = S.Contrast(delta, 0, 0, 0.5, spreads=spreads)
        assert S.power_of(edge, alpha=alpha)[1] == math.inf
        assert S.power_of(edge, alpha=alpha, most=1001)[1] == 1001
    big = S.Contrast(1.0, 0.9, 1.1, 1e-6, spreads=(S.Spread(1e-4, 5),))
    assert S.power_of(big)[1] == 2  # the fewest seeds a side a test can have


def test_the_first_runs_margin_counts_and_is_read_again_when_its_config_changes(tmp_path):
    for job, margin in (("a", 0.02), ("b", 0.03)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        OmegaConf.save({"dataset": {"equivalence_margin": margin}},
                       tmp_path / job / ".hydra" / "config.yaml")
    runs = pd.DataFrame({"dataset": ["cifar10", "mnist", "mnist"],
                         "path": [tmp_path / "none", tmp_path / "a", tmp_path / "b"]})
    assert margins(runs) == {"cifar10": 0.01, "mnist": 0.02}  # cifar10: conf/dataset's
    path = tmp_path / "a" / ".hydra" / "config.yaml"
    OmegaConf.save({"dataset": {"equivalence_margin": 0.04}}, path)
    os.utime(path, ns=(1, 1))  # a new mtime, however coarse the clock
    assert saved_margin(str(tmp_path / "a")) == 0.04


def test_summary_reads_the_star_target_and_a_missing_number_is_not_averaged_away(tmp_path):
    for seed, curve in enumerate(([0.5, 0.8, 0.9], [0.5, 0.6, 0.7], [0.5, 0.6, 0.8])):
        write_job(tmp_path, curve, seed=seed)
    runs, keys = load_runs(tmp_path), ["dataset", "optim", "norm"]
    (row,) = S.summary(runs, keys, {"*": 0.75}).to_dict("records")
    assert (row["target_val_acc"], row["epochs_to_target_mean"], row["n_reached_target"]) == \
        (0.75, 2.5, 2)
    assert S.values(runs, "test_acc") == pytest.approx([0.89, 0.69, 0.79])
    runs.loc[2, ["test_acc", "wall_time_s"]] = math.nan  # an ok run without them
    (row,) = S.summary(runs.drop(columns="seed"), keys, {}).to_dict("records")
    assert row["n_missing"] == 0 and math.isnan(row["target_val_acc"])
    assert all(math.isnan(row[k]) for k in ("test_acc_mean", "test_acc_std", "wall_time_s_mean"))
    assert S.seeded(runs.drop(columns="seed")) == [(None, 0.9), (None, 0.7), (None, 0.8)]


def test_verdicts_holm_the_tost_p_and_a_table_without_dataset_has_no_margin(tmp_path):
    for seed, d in enumerate((0.004, -0.002, 0.003, -0.001)):
        for optim in ("sgd", "adam"):
            write_job(tmp_path, [0.5, 0.9 + d], optim=optim, seed=seed)
            write_job(tmp_path, [0.5, 0.9 - d / 2], norm="none", optim=optim, seed=seed)
    runs = load_runs(tmp_path)
    table = S.verdicts(runs, [("bn", "none")])
    assert list(table["p_tost_holm"]) == pytest.approx(S.holm(list(table["p_tost"])))
    assert list(table["margin"]) == [0.005, 0.005] and table["p_tost"].notna().all()
    bare = S.verdicts(runs.drop(columns="dataset"), [("bn", "none")])
    assert bare["margin"].isna().all() and bare["p_tost"].isna().all()


def test_sweep_panels_keep_the_dataset_order_and_5_points_below_is_usable(tmp_path):
    for dataset in ("mnist", "cifar10"):
        for lr in (0.1, 0.01):
            write_job(tmp_path, [0.9], dataset=dataset, lr=lr)
    runs = load_runs(tmp_path)
    panels = S.sweep_panels(runs, group_keys(runs), "lr")
    assert list(panels) == ["mnist", "cifar10"]
    assert [list(p["bn"]) for p in panels["mnist"].values()] == [[0.01, 0.1]]
    accs = {0.1: 0.90, 1.0: 0.85, 3.0: 0.849}  # 0.85: 5 points below the best, usable
    by_norm = {"bn": {lr: pd.DataFrame({"outcome": ["ok"], "history": [[{}]],
                                        "final_val_acc": [acc]}) for lr, acc in accs.items()}}
    assert S.usable_values(by_norm) == (0.90, {"bn": [0.1, 1.0]})


def test_power_keeps_its_side_where_scipy_gives_up_on_the_other_and_is_all_or_none_far_out():
    """scipy's nct.cdf(-crit) is NaN at some ncp where it is ~1e-16 (here 2 seeds paired, ncp
    7.48); the power is then the near side's, checked by integrating over the chi-square."""
    crit, ncp = sps.t.ppf(0.975, 1), 7.4836042932357225
    near = quad(lambda v: sps.norm.sf(crit * math.sqrt(v) - ncp) * sps.chi2.pdf(v, 1),
                0, math.inf)[0]
    assert S.t_power(ncp, (S.Spread(2.0, 2),)) == pytest.approx(near, rel=1e-6)  # se 1, df 1
    tiny = (S.Spread(1e-20, 5),)  # ncp ~1e10: scipy's NaN on both sides, the normal's tails
    assert S.t_power(1.0, tiny) == 1.0 and S.t_power(0.0, tiny) == pytest.approx(0.05)
    assert S.tost_power(0.0, 0.5, tiny) == 1.0 and S.tost_power(0.6, 0.5, tiny) == 0.0


def test_the_test_is_said_with_why_seeds_did_not_pair():
    unpaired = partial(render.test_words, S.UNPAIRED, 0)
    assert render.test_words(S.PAIRED, 5, [5, 5]) == "paired t over 5 seeds"
    assert unpaired([3, 2]) == "Welch over 3 vs 2 seeds (the seeds do not pair one to one)"
    # 1 vs 1: seed 0 on both sides, one pair is none; 0 vs 2: a side's ok runs, unmeasured
    assert unpaired([1, 1]) == "Welch over 1 vs 1 seeds (one seed on a side: no test)"
    assert unpaired([0, 2]) == "Welch over 0 vs 2 seeds (a side without values: no test)"


def test_numbers_are_written_in_their_units(tmp_path):
    """Accuracy in % with its std in points, others at their digits; CSV floats to 6 decimals."""
    assert pct(0.92424, 0.0044) == "92.42% ± 0.44" and pct(math.nan) == "—"
    assert spread([0.9, 0.92], "acc") == "91.00% ± 1.41 (2)"
    assert spread([0.1, 0.3], ".1%") == "20.0% ± 14.1 (2)"
    assert spread([1, 2], "d") == "1.5 ± 0.7 (2)" and spread([0.5], "loss") == "0.500 (1)"
    assert scale(".1%") == (100.0, " pts", ".1f")
    write_csv([{"x": 1 / 3, "y": "a", "z": math.nan}], tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_bytes() == b"x,y,z\r\n0.333333,a,\r\n"
