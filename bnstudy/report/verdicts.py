"""The claim parts decided on the tables (groups; the contrast paired over shared seeds where
the design pairs, Welch for C6; Holm within each family; `stats.decide`; power); C5's time
table and C6's tuned runs. Below `MIN_SEEDS` ok runs a group cannot tell; a rule part holds
when every seed meets it, not when none does; a claim holds when all its parts do."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from bnstudy.records import final_jobs, read_tuning
from bnstudy.report.claims import Part, Term, declare
from bnstudy.report.cost import time_table
from bnstudy.report.runs import margins, study_order
from bnstudy.report.stats import (
    Contrast,
    contrast,
    decide,
    holm_family,
    images_of,
    power_of,
    strictest_level,
)

MIN_SEEDS = 2      # fewer ok runs in a group than this: cannot tell (curves and pictures alike)


@dataclass(frozen=True)
class Result:
    """A part tested on runs: each group's values, the contrast, verdict and power."""

    declared: Part
    groups: tuple[list[float], ...]
    test: Contrast
    verdict: str
    detectable: float = math.nan       # the smallest |difference| detected at 80 % power
    seeds_needed: float = math.nan     # seeds a side that decide, were the truth as observed
    would_show: str = ""               # what they would show: a difference, or equivalence
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def claim(self) -> str:
        return self.declared.claim

    @property
    def part(self) -> str:
        return self.declared.part


def chosen(table: pd.DataFrame, term: Term, quantity: str) -> pd.DataFrame:
    """The term's ok runs with a `quantity` (numeric, not NaN), in seed order."""
    rows = table[term.selects(table)]
    if "outcome" in rows:
        rows = rows[rows["outcome"] == "ok"]
    seed = pd.to_numeric(rows["seed"], errors="coerce") if "seed" in rows else math.nan
    rows = rows.assign(_seed=seed).sort_values(  # a seed that is no number last
        ["_seed", "job"] if "job" in rows else "_seed", kind="stable")
    if quantity not in rows:  # no run measured it (a sweep without pictures, say)
        return rows.iloc[:0].assign(**{quantity: []})
    xs = pd.to_numeric(rows[quantity], errors="coerce")
    return rows[xs.notna()].assign(**{quantity: xs[xs.notna()].astype(float)})


def part_test(part: Part, table: pd.DataFrame) -> tuple[tuple[list[float], ...], Contrast]:
    """The part's groups and contrast: paired over shared seeds unless the design does not (C6);
    on test acc with the test images' error where saved; TOST within the dataset's margin."""
    rows = [chosen(table, t, part.quantity) for t in part.terms]
    groups = tuple(r[part.quantity].tolist() for r in rows)
    terms = [(t.weight, xs) for t, xs in zip(part.terms, groups, strict=True)]
    seeds = None if not part.paired else [
        r["seed"].tolist() if "seed" in r else [None] * len(r) for r in rows]
    images = images_of([(t.weight, r) for t, r in zip(part.terms, rows, strict=True)]) \
        if part.quantity == "test_acc" else None
    datasets = {t.dataset for t in part.terms}
    margin = margins(table).get(datasets.pop(), math.nan) \
        if part.fmt == "acc" and len(datasets) == 1 else math.nan
    return groups, contrast(terms, seeds=seeds, images=images, margin=margin)


def every_seed(flags: list[bool]) -> str:
    """The verdict of a part every seed must meet, from each seed's flag."""
    if len(flags) < MIN_SEEDS:
        return "cannot tell"
    if all(flags):
        return "holds"
    return "does not hold" if not any(flags) else "cannot tell"


def run_part(part: Part, table: pd.DataFrame) -> Result:
    """The part on the table alone (a family of one): its groups' values, contrast, verdict
    and power."""
    groups, test = part_test(part, table)
    if part.rule is not None:
        flags = [part.rule(x) for x in groups[0]]
        return Result(part, groups, test, every_seed(flags),
                      extra={"met": sum(flags), "of": len(flags)})
    if any(len(xs) < MIN_SEEDS for xs in groups):
        ok = [int((rows["outcome"] == "ok").sum()) if "outcome" in rows else len(rows)
              for rows in (table[t.selects(table)] for t in part.terms)]
        unmeasured = any(n >= MIN_SEEDS > len(xs) for n, xs in zip(ok, groups, strict=True))
        why = " (at a share of compute: no epoch of theirs had ended)" \
            if part.source == "time" else ""  # else not measured: pictures without the data
        return Result(part, groups, test, "cannot tell", note=(
            f"a side's ok runs have no {part.quantity}{why}" if unmeasured
            else f"fewer than {MIN_SEEDS} ok seeds on a side"))
    return Result(part, groups, test, decide(test, part.sign), *power_of(test))


def tested(result: Result) -> bool:
    """Decided by the contrast's test (not a rule, not short of seeds)."""
    return result.declared.rule is None and not result.note


def adjust(results: list[Result]) -> list[Result]:
    """The results with Holm's adjustment within each family (`Part.family`), over the parts
    decided by a test, and their verdicts on the adjusted p."""
    out = list(results)
    for family in dict.fromkeys(r.declared.family for r in results):
        members = [i for i, r in enumerate(results) if tested(r) and r.declared.family == family]
        level = strictest_level([results[i].test for i in members])
        for i, test in zip(members, holm_family([results[i].test for i in members]), strict=True):
            out[i] = replace(results[i], test=test, verdict=decide(test, results[i].declared.sign),
                             **dict(zip(("detectable", "seeds_needed", "would_show"),
                                        power_of(test, alpha=level), strict=True)))
    return out


def evaluate(parts: list[Part], tables: dict[str, pd.DataFrame]) -> list[Result]:
    """The parts whose every group has runs in their source table, tested, Holm-adjusted
    within each family."""
    return adjust([run_part(part, table) for part in parts
                   if (table := tables.get(part.source)) is not None and len(table)
                   and all(t.selects(table).any() for t in part.terms)])


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts': holds when all hold; does not hold when any does not
    hold or is equivalent (within the margin: not the difference claimed); else cannot tell."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if {"does not hold", "equivalent"} & set(verdicts) else "cannot tell"


def claim_verdicts(results: list[Result]) -> dict[str, str]:
    """Each claim's verdict, in order of first appearance."""
    return {c: combine([r.verdict for r in results if r.claim == c])
            for c in dict.fromkeys(r.claim for r in results)}


def tuned_runs(sweep_dir: Path, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """A tuned sweep's kept re-runs (`final_jobs`), searched settings reading "tuned" (one
    comparison per dataset × optimizer), and its tuning.json; no runs and {} without one."""
    tuning = read_tuning(sweep_dir)
    if tuning is None:
        return runs.iloc[:0], {}
    searched = {key for cell in tuning.get("cells", []) for key in cell.get("best_params", {})}
    columns = {c for key in searched for c in (key, key.split(".")[-1]) if c in runs}
    tuned = runs[runs["job"].isin(final_jobs(tuning))]
    return tuned.assign(**dict.fromkeys(columns, "tuned")), tuning


def decided(source: str, table: pd.DataFrame) -> list[Result]:
    """The claim parts on `source` decided on `table`: a tuned sweep's C6 on its kept re-runs
    (`tuned_runs`), P1–P3 on pictures.csv's rows."""
    return evaluate(declare(study_order(set(table["dataset"]))), {source: table})


def setting_results(runs: pd.DataFrame, costs: Callable[[pd.DataFrame], dict]
                    ) -> tuple[list[Result], dict]:
    """One setting's curve and time claims, and its step costs; the time parts read at each
    pair's charged ratio (`StepCost.charged`, the median round's upper bound)."""
    parts = declare(study_order(set(runs["dataset"])))
    measured = costs(runs) if any(p.source == "time" for p in parts) else {}
    ratios = {pair: c.charged for pair, c in measured.items()}
    return evaluate(parts, {"curves": runs, "time": time_table(runs, ratios)}), measured
