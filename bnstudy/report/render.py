"""Renderers that only format: numbers, Markdown tables and CSV files (pandas), the claim parts'
table, sentences and claims.csv rows, a tuned sweep's search table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bnstudy.report.runs import norm_word
from bnstudy.report.stats import IMAGES, ONE, PAIRED, POWER, UNPAIRED, mean_std
from bnstudy.report.verdicts import Result, claim_verdicts


def markdown(table: pd.DataFrame | list[dict], columns: list[str] | None = None) -> str:
    """A Markdown (pipe) table of the cells as they are, text."""
    table = pd.DataFrame(table, columns=columns)
    return table.astype(str).to_markdown(index=False, disable_numparse=True)


def write_csv(table: pd.DataFrame | list[dict], path: Path) -> None:
    """A CSV file: values as they are, NaN empty, floats to 6 decimals."""
    table = (pd.DataFrame(table, dtype=object) if isinstance(table, list) else table).astype(
        object).map(lambda v: round(v, 6) if isinstance(v, float) else v)
    table.to_csv(path, index=False, lineterminator="\r\n")  # as the csv module writes


def pct(mean: float, std: float = math.nan) -> str:
    """`92.42%`, `92.42% ± 0.44`, or — for NaN."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.2%}" if math.isnan(std) else f"{mean:.2%} ± {100 * std:.2f}"


def number(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else format(value, fmt)


def plural(n: int, noun: str) -> str:
    """`1 seed`, `2 seeds`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def scale(fmt: str) -> tuple[float, str, str]:
    """(scale, unit, format) of a part's numbers: acc in points, loss to 3 decimals."""
    if fmt == "acc":
        return 100.0, " pts", ".2f"
    if fmt == "loss":
        return 1.0, "", ".3f"
    if fmt.endswith("%"):
        return 100.0, " pts", ".1f"
    return 1.0, "", fmt.lstrip("+")


def spread(xs: list[float], fmt: str, empty: str = "— (no ok run)") -> str:
    """`mean ± std (n)` in `fmt` (acc, loss, `d`: a count, or a format spec; shares in %)."""
    if not xs:
        return empty
    mean, std = mean_std(xs)
    if fmt == "acc" or fmt.endswith("%"):
        digits = ".2f" if fmt == "acc" else f".{fmt[1:-1] or '0'}f"
        text = f"{100 * mean:{digits}}%" + ("" if math.isnan(std) else f" ± {100 * std:{digits}}")
    else:
        f = {"loss": ".3f", "d": ".1f"}.get(fmt, fmt)
        text = format(mean, f) + ("" if math.isnan(std) else f" ± {format(std, f.lstrip('+'))}")
    return f"{text} ({len(xs)})"


def test_words(test: str, n_paired: int, sizes: list[int]) -> str:
    """`paired t over 20 seeds`, `Welch over 20 vs 19 seeds`, and why Welch where seeds were
    meant to pair."""
    if test == PAIRED:
        return f"paired t over {plural(n_paired, 'seed')}"
    if test == ONE:
        return f"one-sample t over {plural(sizes[0], 'seed')}"
    text = f"{'Welch' if test == UNPAIRED else test} over {' vs '.join(map(str, sizes))} seeds"
    why = ("the seeds do not pair one to one" if min(sizes) > 1 else
           "one seed on a side: no test" if min(sizes) else "a side without values: no test")
    return text + (f" ({why})" if test == UNPAIRED else "")


def deciding(needed: float, test: str = "", shows: str = "", what: str = "") -> str:
    """`40 seeds a side would decide` (`what`), or `… would show equivalence` (`shows`); on test
    acc, where no number of seeds would beat the test images' own error, that."""
    if math.isinf(needed) and test == IMAGES:
        return (f"no number of seeds a side would decide{what}: the test images' own sampling "
                "error is too large (a larger test split would)")
    many = "over 1000" if math.isinf(needed) else f"{needed:.0f}"
    return f"{many} seeds a side would " + ("show equivalence" if shows == "equivalence" else
                                           f"decide{what}")


# --- claim parts ------------------------------------------------------------------------------


def method(r: Result) -> str:
    """The part's test in words; on test acc, whether the test images' error is in it."""
    if r.declared.rule is not None:
        return "every seed"
    text = test_words(r.test.test, r.test.n_paired, [len(xs) for xs in r.groups])
    if r.declared.quantity == "test_acc" and r.test.test != IMAGES:
        text += " (seeds only: no run saved per-image test results)"
    return text


def note(r: Result) -> str:
    """Why a part is equivalent or cannot be told: the margin, or the seeds that would decide."""
    if r.note or r.declared.rule is not None or r.verdict not in ("cannot tell", "equivalent") \
            or math.isnan(r.test.estimate):
        return r.note
    k, unit, fmt = scale(r.declared.fmt)
    if r.verdict == "equivalent":
        return (f"equivalent within ±{k * r.test.margin:{fmt}}{unit} (TOST p "
                f"{r.test.p_tost:.2g}, Holm {r.test.p_tost_holm:.2g})")
    if math.isnan(r.test.p_value):
        return "no spread over the seeds: no test"
    margin = "" if math.isnan(r.test.margin) else \
        f"; not shown within ±{k * r.test.margin:{fmt}}{unit} either (TOST)"
    neither = math.isinf(r.seeds_needed) and abs(r.test.estimate) < r.test.margin
    decides = deciding(r.seeds_needed, r.test.test, r.would_show, " a difference of the size "
                       f"observed{' or show it equivalent' if neither else ''}")
    return (f"with {min(len(xs) for xs in r.groups)} seeds a side only |differences| ≥ "
            f"{k * r.detectable:{fmt}}{unit} are detected at {POWER:.0%} power; {decides}{margin}")


def sides(r: Result) -> str:
    """Each group's `label mean ± std (n)`; the optimizer named where the groups differ in it."""
    terms = r.declared.terms
    optims = len({t.optim for t in terms}) > 1 or (len(terms) == 1 and r.declared.source
                                                   == "pictures")
    text = "; ".join(f"{t.label(optims)} {spread(xs, r.declared.fmt, '— (no value)')}"
                     for t, xs in zip(terms, r.groups, strict=True))
    if r.declared.rule is not None:
        text += f"; {r.extra['met']} of {r.extra['of']} seeds meet it"
    return text


def estimate_text(r: Result) -> str:
    if r.declared.rule is not None:
        return "—"
    if math.isnan(r.test.estimate):
        return "— (a side without values)"
    k, unit, fmt = scale(r.declared.fmt)
    ci = ("no interval" if math.isnan(r.test.ci_low) else
          f"95% CI {k * r.test.ci_low:+{fmt}} to {k * r.test.ci_high:+{fmt}}")
    return f"{k * r.test.estimate:+{fmt}}{unit} ({ci})"


def power_text(r: Result) -> str:
    if math.isnan(r.detectable):
        return "—"
    k, unit, fmt = scale(r.declared.fmt)
    needed = "> 1000" if math.isinf(r.seeds_needed) else f"{r.seeds_needed:.0f}"
    return f"{k * r.detectable:{fmt}}{unit}; {needed}"


def statistic(r: Result) -> str:
    part = r.declared
    return f"{part.statistic}: {part.rule_words}" if part.rule is not None else part.statistic


def claim_rows(results: list[Result], setting: dict) -> list[dict]:
    """claims.csv's rows."""
    verdicts = claim_verdicts(results)
    rows = []
    for r in results:
        part, t = r.declared, r.test
        dataset = {term.dataset for term in part.terms}
        rows.append({**setting, "claim": r.claim, "part": r.part,
                     "dataset": dataset.pop() if len(dataset) == 1 else "",
                     "statement": part.statement, "statistic": statistic(r),
                     "unit": {"acc": "accuracy", "loss": "loss"}.get(part.fmt, part.quantity),
                     "claimed_sign": part.sign, "sides": sides(r), "estimate": t.estimate,
                     "ci_low": t.ci_low, "ci_high": t.ci_high,
                     "test": "every seed" if part.rule is not None else t.test,
                     "n_paired": t.n_paired, "family": part.family, "p_value": t.p_value,
                     "p_holm": t.p_holm, "margin": t.margin, "p_tost": t.p_tost,
                     "p_tost_holm": t.p_tost_holm, "verdict": r.verdict,
                     "claim_verdict": verdicts[r.claim], "detectable_80": r.detectable,
                     "seeds_needed": r.seeds_needed, "seeds_would_show": r.would_show,
                     "note": note(r)})
    return rows


def plain_words(results: list[Result]) -> list[str]:
    """One sentence per part that does not hold, is equivalent or cannot be told."""
    lines = []
    for r in results:
        if r.verdict == "does not hold":
            lines.append(f"- **{r.claim}{r.part} does not hold**: {r.declared.statement} — "
                         f"measured {sides(r)}.")
        elif r.verdict == "equivalent":
            lines.append(f"- **{r.claim}{r.part} does not hold, equivalent**: "
                         f"{r.declared.statement} — {note(r)}; measured {sides(r)}.")
        elif r.verdict == "cannot tell":
            why = f"; {note(r)}" if note(r) else ""
            lines.append(f"- {r.claim}{r.part}: cannot tell ({r.declared.statement}) — "
                         f"{sides(r)}{why}.")
    return lines


def claims_block(results: list[Result]) -> list[str]:
    """The verdict line, the parts' table and the sentences of the parts not holding."""
    words = plain_words(results)
    table = markdown([{
        "claim": f"{r.claim}{r.part}", "statement": r.declared.statement,
        "statistic": statistic(r), "mean ± std over ok seeds (n)": sides(r),
        "estimate": estimate_text(r), "test": method(r),
        "p (Holm in family)": "—" if math.isnan(r.test.p_value) else
        f"{r.test.p_value:.2g} ({r.test.p_holm:.2g})",
        f"detectable at {POWER:.0%} power; seeds a side to decide": power_text(r),
        "verdict": f"**{r.verdict}**" + (f" ({note(r)})" if note(r) else "")} for r in results])
    return ["Verdicts: " + "; ".join(f"**{c} {v}**" for c, v in
                                     claim_verdicts(results).items()) + ".", "",
            table, "", *words, *([""] if words else [])]


def tuning_table(tuning: dict) -> str:
    """C6's search: the sampler's settings, then per cell its trials, the setting chosen and
    its validation accuracy."""
    def chosen(cell: dict) -> tuple[str, str]:  # (rank in the search, mean val acc)
        for rank, c in enumerate(cell.get("candidates", []), 1):
            if c.get("params") == cell.get("best_params"):
                scores = [v for v in c.get("val_acc", []) if v is not None]
                return str(rank), (f"{100 * sum(scores) / len(scores):.2f} %" if scores else "—")
        return "1", "—"

    norms = {cell.get("norm") for cell in tuning.get("cells", [])}
    beside = "bn" if norms <= {"bn", "none"} else ""  # among another norm: `no norm`
    rows = []
    for cell in tuning.get("cells", []):
        trials = cell.get("trials", [])
        times = [t["seconds"] for t in trials if t.get("seconds") is not None]
        rank, mean = chosen(cell)
        rows.append({
            "dataset": cell.get("dataset"), "optimizer": cell.get("optim"),
            "norm": norm_word(cell.get("norm"), beside), "trials": len(trials),
            "chosen setting": ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float)
                                        else f"{k}={v}"
                                        for k, v in cell.get("best_params", {}).items()),
            "rank in search": rank, "val acc (search)": "—" if cell.get("best_value") is None
            else f"{100 * cell['best_value']:.2f} %", "mean val acc (re-runs)": mean,
            "mean trial s": f"{sum(times) / len(times):.1f}" if times else "—"})
    top = tuning.get("rerun_top", 1)  # a tuning.json without it: one seed for every cell
    return (f"Search: Optuna {tuning.get('sampler', 'TPE')}, a search per cell (base sampler "
            f"seed {tuning.get('sampler_seed')}"
            + (", each cell's seed drawn from it and the cell's name" if "rerun_top" in tuning
               else ", the same in every cell")
            + f"), {plural(tuning.get('n_trials'), 'trial')} per cell on one validation split; the "
            f"{top} best setting(s) of each re-run with seeds {tuning.get('seeds')}, the one "
            "with the best mean validation accuracy over them chosen, and its re-runs compared "
            "on the test split, which the search never saw.\n\n" + markdown(rows))
