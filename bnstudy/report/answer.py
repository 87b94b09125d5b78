"""The study's answer, a row per dataset × optimizer (× pair): at equal epochs (verdicts.csv),
equal training time (C5a), each one's best (C6), and what seeds would decide a tie. report.md
opens with it; a sweep prints it as it ends (`console_answer`)."""

from __future__ import annotations

import math

import pandas as pd

from bnstudy.report.render import markdown
from bnstudy.report.runs import DATASET_LABELS, OPTIM_LABELS, STUDY, norm_word
from bnstudy.report.stats import COMPARISON_WORDS, VERDICT_COLUMNS
from bnstudy.report.verdicts import DECIDABLE, Result

DECIDE = "python -m bnstudy.train -m experiment=decisive hydra/launcher=parallel"


def words(verdict: str, diff: float, ci: tuple[float, float], needed: float,
          seeds: int = 2, treatment: str = STUDY[0]) -> str:
    """`BN wins, +4.21 pts (+2.66 to +5.76)`; a tie says what would decide it (`seeds`: the
    fewer ok seeds of the sides)."""
    if math.isnan(diff):
        return "—"
    size = f"{100 * diff:+.2f} pts"
    if verdict == "no test":
        return (f"{size}: one seed a side, direction and size only" if seeds < 2
                else f"{size}: no spread over the seeds, no test")
    interval = f" ({100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})"
    if verdict == "ties":
        if math.isnan(needed) or needed > DECIDABLE:
            bound = max(abs(ci[0]), abs(ci[1]))
            many = "over 1000" if math.isinf(needed) else f"{needed:.0f}"
            return (f"no difference seen, {size}{interval}: any is below {100 * bound:.2f} "
                    f"pts; one this small needs {many} seeds a side")
        return f"cannot tell yet, {size}{interval}: {needed:.0f} seeds a side would decide"
    return f"{norm_word(treatment)} {verdict}, {size}{interval}"


def part_words(result: Result | None) -> str:
    """A claim part (C5a, C6: BN − no BN, claimed +) in the answer's words."""
    if result is None:
        return "—"
    t = result.test
    seeds = min((len(xs) for xs in result.groups), default=0)
    verdict = "no test" if seeds < 2 or math.isnan(t.p_value) else \
        COMPARISON_WORDS[result.verdict]
    return words(verdict, t.estimate, (t.ci_low, t.ci_high), result.seeds_needed, seeds)


def row_words(row) -> str:
    """A verdicts.csv row in the answer's words."""
    return words(row["verdict"], row["diff"], (row["diff_ci_low"], row["diff_ci_high"]),
                 row["seeds_needed"], min(row["n_treatment"], row["n_baseline"]),
                 row["treatment"])


def _cell(results: list[Result], claim: str, dataset: str, optim: str, first: str = "") -> str:
    found = [r for r in results if r.claim == claim and r.part.startswith(first)
             and {(t.dataset, t.optim) for t in r.declared.terms} == {(dataset, optim)}]
    return part_words(found[0] if found else None)


def answer_table(verdicts: pd.DataFrame, results: list[Result] = ()) -> str:
    """The answer table from verdicts.csv's rows and the claims' C5a and C6 (study pair)."""
    extra = [k for k in verdicts.columns if k not in ("dataset", "optim", *VERDICT_COLUMNS)]
    pairs = verdicts[["treatment", "baseline"]].drop_duplicates()
    timed, tuned = (any(r.claim == c for r in results) for c in ("C5", "C6"))
    rows = []
    for _, row in verdicts.iterrows():
        study = (row["treatment"], row["baseline"]) == STUDY
        names = (norm_word(row["treatment"]), norm_word(row["baseline"]))
        cells = {"dataset": DATASET_LABELS.get(row["dataset"], row["dataset"]),
                 "optimizer": OPTIM_LABELS.get(row["optim"], row["optim"]),
                 **{k: str(row[k]) for k in extra}}
        if len(pairs) > 1:
            cells["compared"] = " − ".join(names)
        cells["seeds (treatment, baseline)" if len(pairs) > 1 else
              f"seeds ({', '.join(names)})"] = f"{row['n_treatment']}, {row['n_baseline']}"
        cells["at equal epochs"] = row_words(row)
        if timed:
            cells["at equal training time"] = _cell(
                results, "C5", row["dataset"], row["optim"], "a") if study else "—"
        if tuned:
            cells["at each one's best"] = _cell(
                results, "C6", row["dataset"], row["optim"]) if study else "—"
        rows.append(cells)
    return markdown(rows)


def tuned_table(tuned: list[Result], small: dict | None = None) -> str:
    """A row per dataset × optimizer of a tuned sweep: the seeds, C6's verdict in words and,
    given `small` ((dataset, optim): words, `report.budget`), the answer after one trial."""
    return markdown([{
        "dataset": DATASET_LABELS.get(r.declared.terms[0].dataset, r.declared.terms[0].dataset),
        "optimizer": OPTIM_LABELS.get(r.declared.terms[0].optim, r.declared.terms[0].optim),
        "seeds (BN, no BN)": ", ".join(str(len(xs)) for xs in r.groups),
        **({"at a small budget (k=1)": small.get((r.declared.terms[0].dataset,
                                                  r.declared.terms[0].optim), "—")}
           if small else {}),
        "at each one's best": part_words(r)} for r in tuned])


def answer_section(verdicts: pd.DataFrame, results: list[Result], small: dict | None = None
                   ) -> str:
    """report.md's `## The answer`: the table, how to read it, the command that decides."""
    tuned = [r for r in results if r.claim == "C6"]
    if tuned:
        return "\n".join(["## The answer", "",
                          "Is BatchNorm worth it at each one's best? Each norm's own tuned "
                          "setting, re-run over seeds, BN − no BN in test accuracy (95% interval; "
                          "claim C6 below); at a small budget, the expected best validation "
                          "accuracy after one trial of each search (C7).", "",
                          tuned_table(tuned, small), ""])
    if verdicts.empty:
        return ""
    text = ["## The answer", "",
            "Is BatchNorm worth it? BN − no BN in validation accuracy, per dataset × optimizer "
            "(95% interval; Welch over seeds, p < 0.05): at equal epochs (the final epoch), at "
            "equal training time (C5a: BN's epochs within the no-BN run's time, by the measured "
            "cost of a step) and at each one's own tuned settings (C6, test split), where the "
            "sweep has them. A tie says how small any difference must be; *cannot tell yet* "
            "says how many seeds would decide.", "", answer_table(verdicts, results), ""]
    if (verdicts[["n_treatment", "n_baseline"]].min(axis=1) == 1).any():
        text += ["One seed a side shows the direction and size of each difference, not whether "
                 "it is larger than the seed-to-seed spread. To decide, run 3 or more seeds "
                 "(`seed=0,1,2`), or the study at 20 seeds a side:", "", f"    {DECIDE}", ""]
    return "\n".join(text)


def console_answer(sweep_dir) -> str:
    """The answer at equal epochs as a sweep prints it, a line per comparison and pair; "" when
    no pair has ok runs of both norms."""
    from pathlib import Path

    from bnstudy.records import TUNING_FILE
    from bnstudy.report.runs import compared, load_runs
    from bnstudy.report.stats import verdicts

    if (Path(sweep_dir) / TUNING_FILE).is_file():
        return ""  # a tuned sweep's answer (C6) is the report's
    runs = load_runs(Path(sweep_dir))
    table = verdicts(runs, compared(runs))
    table = table[(table["n_treatment"] > 0) & (table["n_baseline"] > 0)] if len(table) else table
    if table.empty:
        return ""
    study = set(zip(table["treatment"], table["baseline"], strict=True)) == {STUDY}
    lines = ["Is BatchNorm worth it? BN − no BN in final validation accuracy (Welch, 95% "
             "interval):" if study else "Each norm against its baseline in final validation "
             "accuracy (Welch, 95% interval):"]
    for _, row in table.iterrows():
        place = ", ".join([DATASET_LABELS.get(row["dataset"], row["dataset"]),
                           OPTIM_LABELS.get(row["optim"], row["optim"]),
                           *(f"{k}={row[k]}" for k in table.columns
                             if k not in ("dataset", "optim", *VERDICT_COLUMNS))])
        if not study:
            place += f", {norm_word(row['treatment'])} − {norm_word(row['baseline'])}"
        lines.append(f"  {place} ({row['n_treatment']} vs {row['n_baseline']} seeds): "
                     f"{row_words(row)}")
    if (table[["n_treatment", "n_baseline"]].min(axis=1) == 1).any():
        lines.append(f"One seed a side shows direction and size only; to decide: {DECIDE}")
    return "\n".join(lines)
