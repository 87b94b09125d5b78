"""`python -m bnstudy.report SWEEP_DIR`: the report of a finished multirun, norm against norm.

By default every norm of the sweep against `none` (the study: BN vs no BN); `--compare`
names other pairs."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bnstudy.report.runs import ReportError, parse_compare, running_jobs
from bnstudy.report.write import REPORT_DIR, write_report

DEFAULT_TARGETS = {"mnist": 0.9, "cifar10": 0.4}


def parse_target(text: str) -> tuple[str, float]:
    """`0.95` (every dataset) or `mnist=0.95` → (dataset or "*", accuracy in (0, 1])."""
    if "," in text:  # `mnist=0.9,cifar10=0.4`
        raise argparse.ArgumentTypeError(
            f"{text!r}: one dataset a flag: --target-acc "
            + " --target-acc ".join(t for t in text.split(",") if t))
    dataset, _, value = text.rpartition("=")
    try:
        acc = float(value)
    except ValueError:
        acc = math.nan
    if not 0 < acc <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ACC or DATASET=ACC, 0 < ACC <= 1 "
                                         "(a fraction: 0.9 for 90 %)")
    return dataset or "*", acc


def compare_pair(text: str) -> tuple[str, str]:
    try:
        return parse_compare(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.report", description=__doc__.splitlines()[0],
        allow_abbrev=False)  # `--compar` is a mistake, not `--compare`
    parser.add_argument("sweep_dir", type=Path, help="a multirun's directory (hydra.sweep.dir)")
    parser.add_argument(
        "--target-acc", type=parse_target, action="append", default=[], metavar="[DATASET=]ACC",
        help="validation accuracy for the 'epochs to target' column; repeatable; a bare ACC "
             "replaces the defaults for every dataset not named (default: mnist=0.9 cifar10=0.4)")
    parser.add_argument(
        "--compare", type=compare_pair, action="append", default=[],
        metavar="TREATMENT:BASELINE",
        help="norms to compare (verdicts, answer, figures), e.g. bn:layer; repeatable "
             "(default: every norm of the sweep against none)")
    args = parser.parse_args(argv)
    given = dict(args.target_acc)
    targets = given if "*" in given else {**DEFAULT_TARGETS, **given}
    try:
        path = write_report(args.sweep_dir, targets, pairs=args.compare or None,
                            named=[d for d in given if d != "*"])
    except ReportError as err:
        print(f"bnstudy.report: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        earlier = (args.sweep_dir / REPORT_DIR).is_dir()
        print("bnstudy.report: interrupted; nothing was written" + (
            f" (the earlier report in {args.sweep_dir / REPORT_DIR} is as it was)." if earlier
            else "."), file=sys.stderr)
        return 1
    print(f"Report written to {path} (figures, summary.csv and TensorBoard events beside it).")
    if busy := running_jobs(args.sweep_dir):
        print(f"The sweep is still running ({', '.join(busy)} training now): the report covers "
              "the jobs finished so far; run it again when the sweep ends.")
    return 0
