"""`python -m bnstudy.report SWEEP_DIR`: the report of a finished multirun, in three stages.

1. The table of runs: `runs.load_runs` (a row per job, read through `RunRecord`), `runs.curves`
   (a row per job × epoch).
2. Decisions over it: `stats` (Welch's contrast, power, the one rule `decide`, the summary and
   verdict tables), `claims` (the claims declared as data), `verdicts` (the parts decided).
3. Renderers that only format: `render`, `sections`, `answer`, `figures`, `picture_section`,
   and `write` (`SWEEP_DIR/report/`: report.md, summary/verdicts/claims/pictures.csv, PNGs,
   TensorBoard events).

Statistics use the `ok` runs only; diverged, failed, unfinished and missing jobs are counted
and listed, never dropped silently.
"""

from bnstudy.report.cli import main
from bnstudy.report.write import write_report

__all__ = ["main", "write_report"]
