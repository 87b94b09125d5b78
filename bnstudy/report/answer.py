"""The study's answer in one table, a row per dataset × optimizer: is BN worth it at equal
epochs (final validation accuracy), at equal training time (C5a) and at each one's best
settings (C6, after `experiment=tuned`), with the seeds behind each verdict and, where the
seeds cannot decide, how many would. report.md opens with it; a sweep prints it as it ends."""

from __future__ import annotations

import math

from bnstudy.report.claims import DATASET_LABELS, DECIDABLE, OPTIM_LABELS, Result
from bnstudy.report.stats import VERDICT_COLUMNS

DECIDE = "python -m bnstudy.train -m experiment=decisive hydra/launcher=parallel"


def _words(verdict: str, diff: float, ci: tuple[float, float], needed: float,
           seeds: int = 2) -> str:
    """`BN wins, +4.21 pts (+2.66 to +5.76)`; ties say what would decide them. `seeds`: the
    fewer ok seeds of the two sides."""
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
    return f"BN {verdict}, {size}{interval}"


def _part_words(result: Result | None) -> str:
    if result is None:
        return "—"
    t = result.test
    verdict = {"holds": "wins", "does not hold": "loses", "cannot tell": "ties"}[result.verdict]
    seeds = min((len(xs) for xs in result.groups), default=0)
    if seeds < 2 or math.isnan(t.p_value):
        verdict = "no test"
    return _words(verdict, t.estimate, (t.ci_low, t.ci_high), result.seeds_needed, seeds)


def answer_table(verdicts: list[dict], results: list[Result] = ()) -> str:
    """The answer as a Markdown table: `verdicts` are verdicts.csv's rows (BN − no BN in final
    validation accuracy per comparison), `results` the claims' (C5a and C6 are read)."""
    def part(claim: str, prefix: str, dataset: str, optim: str) -> Result | None:
        where = f"({DATASET_LABELS.get(dataset, dataset)}, {OPTIM_LABELS.get(optim, optim)})"
        return next((r for r in results if r.claim == claim and r.part.startswith(prefix)
                     and r.part.endswith(where)), None)

    rows = [row for row in verdicts if "dataset" in row and "optim" in row]
    extra = [k for k in dict.fromkeys(k for row in rows for k in row)
             if k not in ("dataset", "optim") and k not in VERDICT_COLUMNS]
    tuned = any(r.claim == "C6" for r in results)
    timed = any(r.claim == "C5" for r in results)
    head = ["dataset", "optimizer", *extra, "seeds (BN, no BN)", "at equal epochs"]
    head += ["at equal training time"] if timed else []
    head += ["at each one's best"] if tuned else []
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        ci = (row["diff_ci_low"], row["diff_ci_high"])
        cells = [DATASET_LABELS.get(row["dataset"], row["dataset"]),
                 OPTIM_LABELS.get(row["optim"], row["optim"]),
                 *(str(row.get(k)) for k in extra), f"{row['n_bn']}, {row['n_none']}",
                 _words(row["verdict"], row["diff"], ci, row.get("seeds_needed", math.nan),
                        min(row["n_bn"], row["n_none"]))]
        if timed:
            cells.append(_part_words(part("C5", "a", row["dataset"], row["optim"])))
        if tuned:
            cells.append(_part_words(part("C6", "", row["dataset"], row["optim"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuned_table(tuned: list[Result]) -> str:
    """A row per dataset × optimizer of a tuned sweep: the seeds and C6's verdict in words."""
    lines = ["| dataset | optimizer | seeds (BN, no BN) | at each one's best |",
             "|" + " --- |" * 4]
    for r in tuned:
        term = r.declared.terms[0]
        lines.append(f"| {DATASET_LABELS.get(term.dataset, term.dataset)} | "
                     f"{OPTIM_LABELS.get(term.optim, term.optim)} | "
                     f"{', '.join(str(len(xs)) for xs in r.groups)} | {_part_words(r)} |")
    return "\n".join(lines)


def answer_section(verdicts: list[dict], results: list[Result]) -> str:
    """report.md's `## The answer`: the table, how to read it, and the command that decides
    what one seed or too few seeds leave open."""
    tuned = [r for r in results if r.claim == "C6"]
    if tuned:
        return "\n".join(["## The answer", "",
                          "Is BatchNorm worth it at each one's best? Each norm's own tuned "
                          "setting, re-run over seeds, BN − no BN in test accuracy (95% interval; "
                          "claim C6 below).", "", tuned_table(tuned), ""])
    if not verdicts:
        return ""
    text = ["## The answer", "",
            "Is BatchNorm worth it? BN − no BN in validation accuracy, per dataset × optimizer "
            "(95% interval; Welch over seeds, p < 0.05): at equal epochs (the final epoch), at "
            "equal training time (C5a: BN's epochs within the no-BN run's time, by the measured "
            "cost of a step) and at each one's own tuned settings (C6, test split), where the "
            "sweep has them. A tie says how small any difference must be; *cannot tell yet* "
            "says how many seeds would decide.", "", answer_table(verdicts, results), ""]
    if any(min(row["n_bn"], row["n_none"]) == 1 for row in verdicts):
        text += ["One seed a side shows the direction and size of each difference, not whether "
                 "it is larger than the seed-to-seed spread. To decide, run 3 or more seeds "
                 "(`seed=0,1,2`), or the study at 20 seeds a side:", "", f"    {DECIDE}", ""]
    return "\n".join(text)


def console_answer(sweep_dir) -> str:
    """The answer at equal epochs as the end of a sweep prints it, a line per dataset ×
    optimizer (and any other setting the sweep varies); "" when no pair has both norms."""
    from pathlib import Path

    from bnstudy.records import TUNING_FILE
    from bnstudy.report.runs import comparisons, group_runs, load_runs
    from bnstudy.report.stats import verdict_rows

    if (Path(sweep_dir) / TUNING_FILE).is_file():
        return ""  # a tuned sweep's answer (C6) is the report's
    rows = [r for r in verdict_rows(comparisons(group_runs(load_runs(Path(sweep_dir)))))
            if r["n_bn"] and r["n_none"]]
    if not rows:
        return ""
    lines = ["Is BatchNorm worth it? BN − no BN in final validation accuracy (Welch, 95% "
             "interval):"]
    for row in rows:
        where = ", ".join([DATASET_LABELS.get(row["dataset"], row["dataset"]),
                           OPTIM_LABELS.get(row["optim"], row["optim"]),
                           *(f"{k}={v}" for k, v in row.items()
                             if k not in ("dataset", "optim") and k not in VERDICT_COLUMNS)])
        words = _words(row["verdict"], row["diff"], (row["diff_ci_low"], row["diff_ci_high"]),
                       row.get("seeds_needed", math.nan), min(row["n_bn"], row["n_none"]))
        lines.append(f"  {where} ({row['n_bn']} vs {row['n_none']} seeds): {words}")
    if any(min(row["n_bn"], row["n_none"]) == 1 for row in rows):
        lines.append(f"One seed a side shows direction and size only; to decide: {DECIDE}")
    return "\n".join(lines)
