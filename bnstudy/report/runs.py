"""The sweep as tables: `load_runs` (a row per job), `curves` (per job × epoch), the jobs never
started, the groups, the compared pairs, the labels, and each dataset's equivalence margin."""

from __future__ import annotations

import functools
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnstudy.jobdir import is_locked
from bnstudy.norms import NORMS
from bnstudy.records import (
    HOW_IT_RUNS,
    RECORD_NAME,
    TUNING_FILE,
    RunRecord,
    folder_of_sweeps,
    is_job_dir,
    job_dirs,
    planned_jobs,
    read_test_correct,
    varying,
)

FIRST_KEYS = ("dataset", "optim", "norm")
OUTCOMES = ("ok", "diverged", "failed", "unfinished")
PROBE_SERIES = ("activations", "gradients")  # the record's probe series the report draws
STUDY = ("bn", "none")  # the study's pair: its named claims' treatment and baseline
BASELINE = STUDY[1]  # `--compare`'s default: every norm of the sweep against this one
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST"}
OPTIM_LABELS = {"sgd": "SGD", "adam": "Adam"}
NORM_WORDS = {"bn": "BN", "none": "no BN"}  # short words in claims and answers
# a run's per-run quantities (NaN without a history); the rest of a row is its hparams
QUANTITIES = ("final_val_acc", "best_val_acc", "final_val_loss", "test_acc",
              "first_epoch_train_loss", "first_val_loss", "late_val_loss_drop", "mean_val_acc",
              "wall_time_s")
RUN_COLUMNS = ("job", "path", "status", "outcome", "error", "history", "probes", "test_correct",
               *QUANTITIES)


class ReportError(Exception):
    """The sweep directory cannot be reported on (absent, or no jobs in it)."""


def one_run(run: Path) -> str:
    """What to do with a run's directory given to the report, which compares a sweep's runs."""
    sweep = run.parent
    if (sweep / "multirun.yaml").is_file():
        return (f"{run} is one job of the sweep {sweep}; the report compares the sweep's jobs. "
                f"Pass the sweep's folder: python -m bnstudy.report {shlex.quote(str(sweep))}")
    return (f"{run} is a single run's directory (`python -m bnstudy.train` without -m); the "
            f"report compares the runs of a sweep. This run's results are in its {RECORD_NAME} "
            f"and its TensorBoard events (tensorboard --logdir {shlex.quote(str(run))}). To "
            "compare, run a sweep, e.g. python -m bnstudy.train -m norm=bn,none, and pass its "
            "folder.")


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories (with `.hydra/config.yaml` or a record), by number."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} does not exist or is not a directory. Pass the directory "
                          "of a multirun of `python -m bnstudy.train -m ...` (its hydra.sweep.dir, "
                          "by default outputs/multirun/<date>_<time>), which holds one "
                          "sub-directory per job.")
    if is_job_dir(sweep_dir):
        raise ReportError(one_run(sweep_dir))
    if not (dirs := job_dirs(sweep_dir)):
        raise ReportError(folder_of_sweeps(sweep_dir) or (
            f"{sweep_dir} holds no jobs: none of its sub-directories has a .hydra/config.yaml "
            f"or a {RECORD_NAME}. Pass the directory of a multirun of `python -m bnstudy.train "
            "-m ...` (its hydra.sweep.dir), not a single run's directory or its parent."))
    if not (sweep_dir / "multirun.yaml").is_file() and all(_single(job) for job in dirs):
        raise ReportError(folder_of_sweeps(sweep_dir) or (  # (sweeps beside them: one of those)
            f"{sweep_dir} holds single runs (`python -m bnstudy.train` without -m), not the jobs "
            "of a sweep, which is what the report compares. Run the comparison as a sweep, "
            "e.g. python -m bnstudy.train -m norm=bn,none, and pass its folder."))
    return dirs


def _single(job: Path) -> bool:
    """Whether Hydra ran the job as a single run (`hydra.mode: RUN` in its `.hydra/`)."""
    try:
        return OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.mode == "RUN"
    except (OSError, OmegaConfBaseException):  # a job without Hydra's files: not known as one
        return False


def hparams_from_config(job: Path) -> dict:
    """The hparams `bnstudy.train` would record, from the job's `.hydra/` files ({} if none);
    the study's settings only where `conf/` no longer composes its choices."""
    from bnstudy.config import group_defaults, hparams, overridden_keys

    saved = job / ".hydra"
    if not (saved / "config.yaml").is_file():
        return {}
    cfg = OmegaConf.load(saved / "config.yaml")
    try:
        choices = OmegaConf.load(saved / "hydra.yaml").hydra.runtime.choices
        overrides = OmegaConf.load(saved / "overrides.yaml")
        return hparams(cfg, group_defaults(choices), overridden_keys(overrides))
    except (OSError, HydraException, OmegaConfBaseException):  # conf/ changed since the sweep
        return hparams(cfg)


def num(value) -> float:
    """A JSON number as float; null (a NaN or inf that JSON cannot hold) as NaN."""
    return math.nan if value is None else float(value)


def quantities(history: list[dict], record: RunRecord | None) -> dict[str, float]:
    """The run's `QUANTITIES` (test acc and wall time from the record); late_val_loss_drop: from
    epoch ⌊E/2⌋ (from 1; the first below 4 epochs) to the last."""
    out = dict.fromkeys(QUANTITIES, math.nan)
    if record is not None:
        out.update(test_acc=num(record.test_acc), wall_time_s=num(record.wall_time_s))
    if history:
        acc = [num(row.get("val/acc")) for row in history]
        loss = [num(row.get("val/loss")) for row in history]
        out.update(final_val_acc=acc[-1], best_val_acc=max(acc), final_val_loss=loss[-1],
                   first_epoch_train_loss=num(history[0].get("train/loss")),
                   first_val_loss=loss[0], mean_val_acc=float(np.mean(acc)),
                   late_val_loss_drop=loss[max(len(loss) // 2 - 1, 0)] - loss[-1])
    return out


def load_run(job: Path) -> dict:
    """The job's row; a missing or unreadable `metrics.json` gives an unfinished run."""
    try:
        record = RunRecord.read(job)
        status, error = (record.status, record.error) if record else ("no metrics.json", None)
    except (OSError, ValueError) as err:
        record, status, error = None, "unreadable metrics.json", str(err)
    if status == "running" and not is_locked(job):  # no process trains it: its record is stale
        status = "stopped while running (killed, or its machine lost)"
    history = getattr(record, "history", None) or []
    hparams = getattr(record, "hparams", None) or hparams_from_config(job)
    return {"job": job.name, "path": job, "status": status,
            "outcome": status if status in OUTCOMES else "unfinished", "error": error,
            "history": history, **quantities(history, record),
            "probes": {k: getattr(record, k) for k in PROBE_SERIES if getattr(record, k, None)},
            "test_correct": read_test_correct(job),
            **{f"hp:{k}": json.dumps(v, separators=(",", ":")) if isinstance(v, list | dict)
               else v for k, v in hparams.items()}}  # `[8,8]`, as typed: a table's cell


def load_runs(sweep_dir: Path) -> pd.DataFrame:
    """A row per job, in sweep order: `RUN_COLUMNS` (outcome: ok, diverged, failed or unfinished;
    test_correct: a bool per test image, or None), then its hparams (None where absent)."""
    runs = pd.DataFrame([load_run(job) for job in sweep_jobs(Path(sweep_dir))], dtype=object)
    runs.columns = [c.removeprefix("hp:") for c in runs.columns]
    runs = runs.where(runs.notna(), None)
    results = runs[runs["outcome"].isin(("ok", "diverged"))]
    setting = ["\x1f".join(map(str, row))
               for row in results.drop(columns=list(RUN_COLUMNS)).itertuples(index=False)]
    twins = [list(jobs) for _, jobs in results["job"].groupby(setting, sort=False) if len(jobs) > 1]
    tuned = (Path(sweep_dir) / TUNING_FILE).is_file()  # its kept re-runs are named in tuning.json
    if twins and not tuned:  # e.g. two launches of `hydra/sweeper=basic`, numbered otherwise
        more = f" (and {len(twins) - 1} more such)" if len(twins) > 1 else ""
        raise ReportError(
            f"{sweep_dir} holds two results of one setting and seed: {', '.join(twins[0])}{more} "
            "(their recorded settings are the same: two sweeps launched into the folder, or a "
            "swept key no run records, such as threads or model.steps_per_call, which trains "
            "the same run). Each would count twice among the seeds, so nothing was reported. "
            "Move all but one of each out of the folder, then run the report again.")
    return runs.astype({c: float for c in QUANTITIES})


def ok(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that finished ok with a history: the ones statistics use."""
    return runs[(runs["outcome"] == "ok") & runs["history"].map(bool)]


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """A row per run × epoch: `job` and its history row (`epoch` from 0), null as NaN."""
    rows = [{"job": job, **row} for job, history in zip(runs["job"], runs["history"],
                                                        strict=True) for row in history]
    table = pd.DataFrame(rows, columns=["job", "epoch", "step", "train/loss", "train/acc",
                                        "val/loss", "val/acc", "time_s"])
    return table.astype({c: float for c in table.columns if c not in ("job", "epoch")})


def never_started(sweep_dir: Path, runs: pd.DataFrame) -> list[str]:
    """The jobs `multirun.yaml` plans (`planned_jobs`) that are not among `runs` (`load_runs`:
    one snapshot of a sweep that may still be running), each by the values that vary."""
    plan_file = sweep_dir / "multirun.yaml"
    plan = planned_jobs(OmegaConf.load(plan_file).hydra) if plan_file.is_file() else None
    if not plan:
        return []
    shown = varying(plan) or list(plan[0])
    files = (Path(job) / ".hydra" / "overrides.yaml" for job in runs["path"])
    started = {frozenset(o for o in OmegaConf.load(f) if not o.startswith(HOW_IT_RUNS))
               for f in files if f.is_file()}
    return [" ".join(f"{key}={job[key]}" for key in shown) for job in plan
            if frozenset(f"{key}={value}" for key, value in job.items()) not in started]


def running_jobs(sweep_dir: Path) -> list[str]:
    """The jobs a process trains now (`is_locked`): while any does, the sweep still runs."""
    return [job.name for job in job_dirs(sweep_dir) if is_locked(job)]


# --- groups and compared pairs --------------------------------------------------------------


def group_keys(runs: pd.DataFrame) -> list[str]:
    """dataset, optim, norm, then every other hparam that varies across the sweep; never seed."""
    others = [k for k in runs.columns if k not in (*RUN_COLUMNS, *FIRST_KEYS, "seed")
              and runs[k].map(str).nunique() > 1]
    return [*FIRST_KEYS, *others]


def groups(runs: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key: ((hparam, value), ...), runs) per value of `keys`, in sweep order, runs by seed."""
    runs = runs.assign(**{k: runs[k] if k in runs else None for k in keys})
    by = runs.groupby(list(keys), sort=False, dropna=False)
    return [(tuple(zip(keys, key, strict=True)),  # (pandas ≥ 2: a key is a tuple)
             group.sort_values("seed", kind="stable", key=lambda c: c.map(lambda v: v or 0))
             if "seed" in group else group) for key, group in by]


def settings(runs: pd.DataFrame) -> list[tuple[tuple, dict[str, pd.DataFrame]]]:
    """The comparisons: the groups by every key but `norm`, each with its runs by norm."""
    keys = [k for k in group_keys(runs) if k != "norm"]
    return [(ckey, {key[0][1]: g for key, g in groups(members, ["norm"])})
            for ckey, members in groups(runs, keys)]


def parse_compare(text: str) -> tuple[str, str]:
    """`TREATMENT:BASELINE` (norm names) → (treatment, baseline)."""
    treatment, colon, baseline = text.partition(":")
    if not colon or not treatment or not baseline or treatment == baseline or ":" in baseline:
        raise ValueError(f"{text!r}: expected TREATMENT:BASELINE, two different norms "
                         "(e.g. bn:none or bn:layer)")
    return treatment, baseline


def compared(runs: pd.DataFrame, pairs: list[tuple[str, str]] | None = None
             ) -> list[tuple[str, str]]:
    """The (treatment, baseline) pairs compared: `pairs`, else each norm against `BASELINE`.
    A pair naming a norm the sweep did not run is a ReportError."""
    norms = norm_order(set(runs["norm"].dropna()) if "norm" in runs else set())
    if absent := [n for pair in pairs or () for n in pair if n not in norms]:
        raise ReportError(
            f"--compare {':'.join(next(p for p in pairs if absent[0] in p))}: the sweep has no "
            f"runs of norm={absent[0]}, nothing was written. Its norms: {', '.join(norms)}"
            + (f"; compare two of them, e.g. --compare {norms[1]}:{norms[0]}." if len(norms) > 1
               else "."))
    return list(pairs) if pairs else [(n, BASELINE) for n in norms if n != BASELINE] or [STUDY]


def suffix(setting: tuple) -> str:
    """A figure name's `_<hparam><value>` for each hparam of `setting` but dataset, optim, norm."""
    return "".join(f"_{k}{v}" for k, v in setting if k not in FIRST_KEYS)


def slug(ckey: tuple) -> str:
    """`mnist_sgd`, plus `_<hparam><value>` for each other varying hparam."""
    return "{dataset}_{optim}".format_map(dict(ckey)) + suffix(ckey)


def describe(ckey: tuple) -> str:
    """`mnist, sgd`, plus `, <hparam>=<value>` for each other varying hparam."""
    return ", ".join([str(v) for k, v in ckey if k in FIRST_KEYS]
                     + [f"{k}={v}" for k, v in ckey if k not in FIRST_KEYS])


def norm_order(norms) -> list[str]:
    """No norm first, then BN, then any other norm (the registry's order, then by name)."""
    rank = {n: i for i, n in enumerate(dict.fromkeys([BASELINE, *NORMS]))}
    return sorted(set(norms), key=lambda n: (rank.get(n, len(rank)), str(n)))


def norm_label(norm: str, among=STUDY) -> str:
    """The registry's label for `norm` (`BatchNorm`, ...); an unknown norm's own name. Shown
    among another norm than BN, no norm is `No norm` (`No BatchNorm` beside BN alone)."""
    if norm == BASELINE and set(among) - set(STUDY):
        return "No norm"
    return NORMS[norm].label if norm in NORMS else str(norm)


def norms_title(norms) -> str:
    """`BatchNorm vs No BatchNorm`: the norms' labels, each norm first, no norm last."""
    order = norm_order(norms)  # no norm first, where it is there
    shown = [*order[1:], BASELINE] if BASELINE in norms else order
    return " vs ".join(norm_label(n, norms) for n in shown)


def norm_word(norm: str, other: str = STUDY[0]) -> str:
    """`BN`, `no BN` (`no norm` against another norm than BN), else the registry's label."""
    if norm == BASELINE and other != STUDY[0]:
        return "no norm"
    return NORM_WORDS.get(norm, norm_label(norm))


def pair_words(treatment: str, baseline: str) -> tuple[str, str]:
    """A compared pair's words: `BN`, `no BN`; `LayerNorm`, `no norm`; `BN`, `LayerNorm`."""
    return norm_word(treatment, baseline), norm_word(baseline, treatment)


def contrast_words(pairs) -> tuple[str, str]:
    """The question and the difference of the compared pairs: `Is BatchNorm worth it`,
    `BN − no BN` for one pair; `Is each norm worth it`, `treatment − baseline` for several."""
    pairs = list(dict.fromkeys(pairs))
    if len(pairs) != 1:
        return "Is each norm worth it", "treatment − baseline"
    return f"Is {norm_label(*pairs[0])} worth it", " − ".join(pair_words(*pairs[0]))


def where(dataset: str, optim: str) -> str:
    """`MNIST, SGD`."""
    return f"{DATASET_LABELS.get(dataset, dataset)}, {OPTIM_LABELS.get(optim, optim)}"


def study_order(datasets) -> list[str]:
    """The study's datasets first, in its order, then any other, by name."""
    known = [d for d in DATASET_LABELS if d in datasets]
    return known + sorted((d for d in datasets if d not in DATASET_LABELS), key=str)


# --- the equivalence margin, per dataset -------------------------------------------------------


def saved_margin(job: str) -> float:
    """`dataset.equivalence_margin` of a job's saved `.hydra/config.yaml`; NaN without one."""
    path = Path(job) / ".hydra" / "config.yaml"
    return _margin_in(str(path), path.stat().st_mtime_ns) if path.is_file() else math.nan


@functools.lru_cache(maxsize=4096)
def _margin_in(path: str, _mtime: int) -> float:
    return num(OmegaConf.select(OmegaConf.load(path), "dataset.equivalence_margin", default=None))


@functools.lru_cache(maxsize=64)
def declared_margin(dataset: str) -> float:
    """The margin `conf/dataset/<dataset>.yaml` declares now (runs saved before the key), or NaN."""
    from bnstudy.config import group_defaults

    try:
        return float(group_defaults({"dataset": dataset}).dataset.equivalence_margin)
    except (HydraException, AttributeError, ValueError, TypeError):
        return math.nan


def margins(runs: pd.DataFrame) -> dict[str, float]:
    """Per dataset, the equivalence margin (accuracy, a fraction) its runs' saved configs
    declare (the first that does), else the current config's."""
    out = {}
    for dataset in dict.fromkeys(runs["dataset"] if "dataset" in runs else ()):
        paths = runs.loc[runs["dataset"] == dataset, "path"] if "path" in runs else []
        saved = [m for m in (saved_margin(str(p)) for p in paths) if not math.isnan(m)]
        out[dataset] = saved[0] if saved else declared_margin(str(dataset))
    return out
