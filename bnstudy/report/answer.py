"""The study's answer, a row per dataset × optimizer (× pair): at equal epochs (verdicts.csv),
equal training time (C5a), each one's best (C6): a winner, equivalent within the dataset's
margin (TOST), or cannot tell and the seeds that would decide. report.md opens with it; a
sweep prints it as it ends (`console_answer`)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from bnstudy.records import HOW_IT_RUNS, TUNING_FILE
from bnstudy.report.render import deciding, markdown, plural
from bnstudy.report.runs import (
    DATASET_LABELS,
    OPTIM_LABELS,
    STUDY,
    compared,
    contrast_words,
    load_runs,
    norm_word,
    pair_words,
    where,
)
from bnstudy.report.stats import ALPHA, IMAGES, PAIRED, VERDICT_COLUMNS, comparison_word
from bnstudy.report.verdicts import Result, decided, tuned_runs

SWEEP = ["python", "-m", "bnstudy.train", "-m"]
DECIDE = shlex.join([*SWEEP, "experiment=decisive", "hydra/launcher=parallel"])
STUDY_CHOICES = ("dataset=", "norm=", "optim=", "experiment=decisive")  # what DECIDE sets


def decide_command(sweep_dir) -> str:
    """The shell command that decides a sweep's one-seed answers, with the sweep's bookkeeping
    (`HOW_IT_RUNS`: paths, threads, trackers, …) and launcher (and its settings,
    `hydra.launcher.partition=gpu`): `DECIDE`; for a sweep of other settings
    (`experiment=lr_sweep`, `momentum=0.0,0.9`), its own at 20 seeds."""
    plan = Path(sweep_dir) / "multirun.yaml"
    saved = OmegaConf.load(plan) if plan.is_file() else OmegaConf.create()
    choice = OmegaConf.select(saved, "hydra.runtime.choices.hydra/launcher")
    launch = [] if choice in (None, "basic") else [f"hydra/launcher={choice}", *(
        o for o in OmegaConf.select(saved, "hydra.overrides.hydra", default=[])
        if o.startswith("hydra.launcher."))]
    own = [o for o in OmegaConf.select(saved, "hydra.overrides.task", default=[])
           if not o.startswith(("seed=", "resume=", "overwrite="))]  # a new sweep's
    if any(not o.startswith((*STUDY_CHOICES, *HOW_IT_RUNS)) for o in own):  # more than the study's
        return shlex.join([*SWEEP, *own, *launch, "seed=range(0,20)"])
    kept = [o for o in own if o.startswith(HOW_IT_RUNS)]
    return shlex.join([*SWEEP, "experiment=decisive", *kept,
                       *(launch or ["hydra/launcher=parallel"])])


def words(verdict: str, diff: float, ci: tuple[float, float], needed: float,
          seeds: int = 2, treatment: str = STUDY[0], margin: float = math.nan,
          test: str = "", shows: str = "") -> str:
    """`BN wins, +4.21 pts (+2.66 to +5.76)`; `equivalent within ±0.5 pts, …` (TOST, `margin`);
    a cannot tell says what would decide it (`seeds`: the fewer ok seeds of the sides)."""
    if math.isnan(diff):
        return "—"
    size = f"{100 * diff:+.2f} pts"
    if verdict == "no test":
        return (f"{size}: one seed a side, direction and size only" if seeds < 2
                else f"{size}: no spread over the seeds, no test")
    interval = f" ({100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})"
    if verdict == "equivalent":
        return f"equivalent within ±{100 * margin:g} pts, {size}{interval}"
    if verdict == "cannot tell":
        decide = "" if math.isnan(needed) else f": {deciding(needed, test, shows)}"
        return f"cannot tell, {size}{interval}{decide}"
    return f"{norm_word(treatment)} {verdict}, {size}{interval}"


def part_words(result: Result | None) -> str:
    """A claim part (C5a, C6: BN − no BN, claimed +) in the answer's words."""
    if result is None:
        return "—"
    t = result.test
    seeds = min((len(xs) for xs in result.groups), default=0)
    return words(comparison_word(result.verdict, t.p_value), t.estimate, (t.ci_low, t.ci_high),
                 result.seeds_needed, seeds, margin=t.margin, test=t.test, shows=result.would_show)


def row_words(row) -> str:
    """A verdicts.csv row in the answer's words."""
    return words(row["verdict"], row["diff"], (row["diff_ci_low"], row["diff_ci_high"]),
                 row["seeds_needed"], min(row["n_treatment"], row["n_baseline"]),
                 row["treatment"], row.get("margin", math.nan), row.get("test", ""),
                 shows=row.get("seeds_would_show", ""))


def _where(r: Result) -> tuple[str, str]:
    """A C5 or C6 part's dataset and optimizer (its first term's)."""
    return r.declared.terms[0].dataset, r.declared.terms[0].optim


def _labels(dataset: str, optim: str) -> dict[str, str]:
    """The answer tables' `dataset` and `optimizer` cells."""
    return {"dataset": DATASET_LABELS.get(dataset, dataset),
            "optimizer": OPTIM_LABELS.get(optim, optim)}


def _extra(verdicts: pd.DataFrame) -> list[str]:
    """verdicts.csv's setting columns but dataset and optim: the other varying hparams."""
    return [k for k in verdicts.columns if k not in ("dataset", "optim", *VERDICT_COLUMNS)]


def _cell(results: list[Result], claim: str, row, first: str = "") -> str:
    """The row's dataset × optimizer's part of `claim` (starting `first`) in words."""
    place = {(row["dataset"], row["optim"])}
    found = [r for r in results if r.claim == claim and r.part.startswith(first)
             and {(t.dataset, t.optim) for t in r.declared.terms} == place]
    return part_words(found[0] if found else None)


def _pair_cells(row, several: bool) -> dict[str, str]:
    """An answer row's pair (`compared`, where the table has several) and its seeds."""
    names = pair_words(row["treatment"], row["baseline"])
    return {**({"compared": " − ".join(names)} if several else {}),
            f"seeds ({'treatment, baseline' if several else ', '.join(names)})":
                f"{row['n_treatment']}, {row['n_baseline']}"}


def answer_table(verdicts: pd.DataFrame, results: list[Result] = ()) -> str:
    """The answer table from verdicts.csv's rows and the claims' C5a and C6 (study pair)."""
    extra = _extra(verdicts)
    several = len(verdicts[["treatment", "baseline"]].drop_duplicates()) > 1
    timed, tuned = (any(r.claim == c for r in results) for c in ("C5", "C6"))
    rows = []
    for _, row in verdicts.iterrows():
        study = (row["treatment"], row["baseline"]) == STUDY
        cells = {**_labels(row["dataset"], row["optim"]), **{k: str(row[k]) for k in extra},
                 **_pair_cells(row, several), "at equal epochs": row_words(row)}
        if timed:
            cells["at equal training time"] = _cell(results, "C5", row, "a") if study else "—"
        if tuned:
            cells["at each one's best"] = _cell(results, "C6", row) if study else "—"
        rows.append(cells)
    return markdown(rows)


def tuned_words(tuned: list[Result]) -> str:
    """C6's test in words: Welch over seeds (+ the test images' error where saved), Holm."""
    images = all(r.test.test == IMAGES for r in tuned)
    test = "Welch + the test images' sampling error" if images else "Welch over seeds only"
    return (f"{test}, Holm over the {len(tuned)} C6 parts; *equivalent* by TOST within "
            f"{margin_words({_where(r)[0]: r.test.margin for r in tuned})}")


def _key(row) -> tuple[str, str, str, str]:
    return row["dataset"], row["optim"], row["treatment"], row["baseline"]


def at_best(verdicts: pd.DataFrame, tuned: list[Result]) -> dict[tuple, str]:
    """Per (dataset, optim, treatment, baseline), at each one's best in words: C6 for BN − no BN,
    the verdicts.csv row otherwise."""
    c6 = {(*_where(r), *STUDY): r for r in tuned}
    return {_key(row): part_words(c6[_key(row)]) if _key(row) in c6 else row_words(row)
            for _, row in verdicts.iterrows()}


def tuned_table(verdicts: pd.DataFrame, tuned: list[Result], small: dict | None = None) -> str:
    """A row per dataset × optimizer (× pair) of a tuned sweep: the seeds, the answer after one
    trial (`small`, keyed as `at_best`, from `report.budget`) if given, and `at_best`."""
    several = len(verdicts[["treatment", "baseline"]].drop_duplicates()) > 1
    best = at_best(verdicts, tuned)
    return markdown([{**_labels(row["dataset"], row["optim"]), **_pair_cells(row, several),
                      **({"at a small budget (k=1)": small.get(_key(row), "—")} if small else {}),
                      "at each one's best": best[_key(row)]} for _, row in verdicts.iterrows()])


def tuned_method(verdicts: pd.DataFrame, tuned: list[Result]) -> str:
    """How a tuned sweep's answer decides: C6's test for BN − no BN, verdicts.csv's (Holm over
    the report's comparisons) for any other pair."""
    other = verdicts[[pair != STUDY for pair in zip(verdicts["treatment"], verdicts["baseline"],
                                                     strict=True)]]
    found = [("BN − no BN: " if len(other) else "") + tuned_words(tuned)] if tuned else []
    if len(other):
        test = "Welch + the test images' sampling error" if (other["test"] == IMAGES).all() \
            else "Welch over seeds only"
        tested = int(verdicts["p_value"].notna().sum())
        found.append(f"{'other pairs: ' if tuned else ''}{test}, Holm over the report's "
                     f"{plural(tested, 'comparison')} tested; *equivalent* by TOST within "
                     + margin_words(dict(zip(other["dataset"], other["margin"], strict=True))))
    return "; ".join(found)


def margin_words(margins: dict) -> str:
    """`±0.5 pts for MNIST, ±1 pts for CIFAR-10`."""
    return ", ".join(f"±{100 * m:g} pts for {DATASET_LABELS.get(d, d)}"
                     for d, m in margins.items() if not math.isnan(m)) or "none declared"


def method_words(verdicts: pd.DataFrame) -> str:
    """How the equal-epochs column decides: split, seeds, pairing, correction, margins."""
    tested = int(verdicts["p_value"].notna().sum())  # a row without a test is not counted
    if not tested:
        return "validation split, final epoch; no test: fewer than 2 seeds a side"
    paired = int((verdicts["test"][verdicts["p_value"].notna()] == PAIRED).sum())
    pairing = ("paired t over the seeds both norms ran" if paired == tested else
               f"paired t over shared seeds in {paired} of {tested} rows tested, Welch where "
               "the seeds do not pair")
    margins = dict(zip(verdicts["dataset"], verdicts["margin"], strict=True))
    return (f"validation split, final epoch; {pairing}; p Holm-adjusted over the "
            f"{plural(tested, 'comparison')} tested (the intervals are not), p < {ALPHA}; "
            f"*equivalent* by TOST within {margin_words(margins)}")


def answer_section(verdicts: pd.DataFrame, results: list[Result], small: dict | None = None,
                   decide: str = DECIDE) -> str:
    """report.md's `## The answer`: the table, how to read it, the command that decides."""
    if len(verdicts) and (verdicts["quantity"] == "test_acc").all():  # a tuned sweep's
        pairs = set(zip(verdicts["treatment"], verdicts["baseline"], strict=True))
        tuned = [r for r in results if r.claim == "C6" and STUDY in pairs]
        question, difference = contrast_words(pairs)
        return "\n".join(["## The answer", "",
                          f"{question} at each one's best? Each norm's own tuned setting, "
                          f"re-run over seeds, {difference} in test accuracy (95% interval, "
                          f"not Holm-adjusted; {tuned_method(verdicts, tuned)}"
                          f"{'; claim C6 below' if tuned else ''}); at a small budget, the "
                          "expected best validation accuracy after one trial of each search"
                          f"{' (C7)' if STUDY in pairs else ''}.", "",
                          tuned_table(verdicts, tuned, small), ""])
    if verdicts.empty:
        return ""
    if set(zip(verdicts["treatment"], verdicts["baseline"], strict=True)) != {STUDY}:
        question = ("Each norm against its baseline: treatment − baseline in validation accuracy, "
                    f"per dataset × optimizer (95% interval; {method_words(verdicts)}), at "
                    "equal epochs; equal training time (C5a) and each one's own tuned settings "
                    "(C6), where the sweep has them, compare BN with no BN only.")
    else:
        question = (
            "Is BatchNorm worth it? BN − no BN in validation accuracy, per dataset × optimizer "
            f"(95% interval; {method_words(verdicts)}): at equal epochs, at equal training time "
            "(C5a: the best val acc so far at the no-BN runs' full compute, BN's step charged "
            "the 95% upper bound of the clock's median round; paired, Holm over the C5 parts) "
            "and at each one's own tuned settings (C6, test split, Welch, Holm over the C6 "
            "parts), where the sweep has them.")
    text = ["## The answer", "", f"{question} *Cannot tell* says how many seeds a side would "
            "decide.", "", answer_table(verdicts, results), ""]
    if (verdicts[["n_treatment", "n_baseline"]].min(axis=1) == 1).any():
        text += ["One seed a side shows the direction and size of each difference, not whether "
                 "it is larger than the seed-to-seed spread. To decide, run 3 or more seeds "
                 "(`seed=0,1,2`), or the study at 20 seeds a side:", "", f"    {decide}", ""]
    return "\n".join(text)


def _both_sides(table: pd.DataFrame) -> pd.DataFrame:
    """verdicts.csv's rows whose two sides both have ok runs: what a sweep prints."""
    return table[(table["n_treatment"] > 0) & (table["n_baseline"] > 0)] if len(table) else table


def console_answer(sweep_dir) -> str:
    """The answer at equal epochs as a sweep prints it, a line per comparison and pair; "" when
    no pair has ok runs of both norms."""
    from bnstudy.report.stats import verdicts  # a local name: `verdicts` is a table elsewhere

    if (Path(sweep_dir) / TUNING_FILE).is_file():
        return tuned_console(Path(sweep_dir))
    runs = load_runs(Path(sweep_dir))
    table = _both_sides(verdicts(runs, compared(runs)))
    if table.empty:
        return ""
    pairs = set(zip(table["treatment"], table["baseline"], strict=True))
    question, difference = contrast_words(pairs)
    lines = [(f"{question}? {difference}" if len(pairs) == 1 else "Each norm against its "
              "baseline") + f" in final validation accuracy (95% interval; "
             f"{method_words(table)}):".replace("*", "")]  # the terminal shows no Markdown
    for _, row in table.iterrows():
        place = ", ".join([where(row["dataset"], row["optim"]),
                           *(f"{k}={row[k]}" for k in _extra(table))])
        if len(pairs) > 1:
            place += f", {' − '.join(pair_words(row['treatment'], row['baseline']))}"
        lines.append(f"  {place} ({row['n_treatment']} vs {row['n_baseline']} seeds): "
                     f"{row_words(row)}")
    if (table[["n_treatment", "n_baseline"]].min(axis=1) == 1).any():
        lines.append("One seed a side shows direction and size only; to decide: "
                     + decide_command(sweep_dir))
    return "\n".join(lines)


def tuned_console(sweep_dir) -> str:
    """A tuned sweep's answer as it prints it: per dataset × optimizer (× pair), after one trial
    of each search and at each one's best (`at_best`); "" without either."""
    from bnstudy.report.budget import budgets, pair_rows, small_answers  # draws: matplotlib
    from bnstudy.report.stats import verdicts

    tuned, tuning = tuned_runs(sweep_dir, load_runs(sweep_dir))
    pairs = compared(pd.DataFrame({"norm": [c.get("norm") for c in tuning.get("cells", [])]}))
    found = budgets(tuning, pairs)
    small = small_answers(found, pair_rows(found))
    table = _both_sides(verdicts(tuned, pairs, tuned=True)) if len(tuned) else pd.DataFrame()
    best = at_best(table, [r for r in decided("tuned", tuned) if r.claim == "C6"]
                   if len(tuned) else [])
    if not small and not best:
        return ""
    shown = {k[2:] for k in [*small, *best]}
    question, difference = contrast_words(shown)
    several = len(shown) > 1
    for_bn = " for BN − no BN" if several else ""
    c7, c6 = (f"C7{for_bn}, ", f"C6{for_bn}, ") if STUDY in shown else ("", "")
    lines = [f"{question} at your tuning budget? {difference} in the expected best val acc after "
             f"one trial of each search ({c7}bootstrap, Holm), and in test acc at each one's best "
             f"({c6}Welch + the test images' error, Holm):"]
    for key in dict.fromkeys([*small, *best]):
        place = where(*key[:2]) + (f", {' − '.join(pair_words(*key[2:]))}" if several else "")
        lines.append(f"  {place}: after one trial {small.get(key, '—')}; at each one's best "
                     f"{best.get(key, '—')}")
    return "\n".join(lines)
