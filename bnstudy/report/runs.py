"""The sweep's jobs: finding and loading them, the planned jobs that never started, and
grouping them into BN-vs-no-BN comparisons."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnstudy.norms import NORMS
from bnstudy.records import RECORD_NAME, job_order

FIRST_KEYS = ("dataset", "optim", "norm")
OUTCOMES = ("ok", "diverged", "failed", "unfinished")
PROBE_SERIES = ("activations", "gradients")  # the record's probe series the report draws


class ReportError(Exception):
    """The sweep directory cannot be reported on (absent, or no jobs in it)."""


@dataclass(frozen=True)
class Run:
    """One job of the sweep, as its directory left it."""

    job: str
    path: Path
    status: str  # ok | diverged | failed | running | interrupted | (unreadable|no) metrics.json
    hparams: dict
    history: list
    test_acc: float | None
    wall_time_s: float | None
    error: str | None
    probes: dict = field(default_factory=dict)  # the record's probe series, by key

    @property
    def outcome(self) -> str:
        """ok, diverged, failed or unfinished (no result yet, or none ever written)."""
        return self.status if self.status in OUTCOMES else "unfinished"


# --- load ---------------------------------------------------------------------------------


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories (those holding `.hydra/config.yaml` or a record), by number."""
    if not sweep_dir.is_dir():
        raise ReportError(
            f"{sweep_dir} does not exist or is not a directory. Pass the directory of a multirun "
            "of `python -m bnstudy.train -m ...` (its hydra.sweep.dir, by default "
            "outputs/multirun/<date>_<time>), which holds one sub-directory per job."
        )
    dirs = [d for d in sweep_dir.iterdir()
            if (d / ".hydra" / "config.yaml").is_file() or (d / RECORD_NAME).is_file()]
    if not dirs:
        raise ReportError(
            f"{sweep_dir} holds no jobs: none of its sub-directories has a .hydra/config.yaml "
            f"or a {RECORD_NAME}. Pass the directory of a multirun of `python -m bnstudy.train "
            "-m ...` (its hydra.sweep.dir), not a single run's directory or its parent."
        )
    return sorted(dirs, key=job_order)


def hparams_from_config(job: Path) -> dict:
    """The hparams `bnstudy.train` records, from the job's `.hydra/` files ({} if none): the
    study's settings, and every other one its command line set or that differs from the
    defaults of its group choices, so it groups with its finished siblings. Where `conf/` no
    longer composes those choices, the study's settings only."""
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


def load_run(job: Path) -> Run:
    """The job's record; a missing or unreadable `metrics.json` gives an unfinished Run."""
    record, status, error = {}, "no metrics.json", None
    if (job / RECORD_NAME).is_file():
        try:
            record = json.loads((job / RECORD_NAME).read_text())
            status = record.get("status", "running")
            error = record.get("error")
        except (OSError, ValueError) as err:
            status, error = "unreadable metrics.json", str(err)
    test = record.get("test") or {}
    return Run(
        job=job.name,
        path=job,
        status=status,
        hparams=record.get("hparams") or hparams_from_config(job),
        history=record.get("history") or [],
        test_acc=test.get("acc"),
        wall_time_s=record.get("wall_time_s"),
        error=error,
        probes={key: record[key] for key in PROBE_SERIES if record.get(key)},
    )


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every job of the sweep, finished or not."""
    return [load_run(job) for job in job_dirs(sweep_dir)]


def never_started(sweep_dir: Path) -> list[str]:
    """The jobs that `multirun.yaml` plans but that have no directory, as override strings.

    Knows the plan of Hydra's basic sweeper (every combination of comma-separated values, from
    `hydra.sweeper.params` and the command line, which wins); for other sweeps (intervals, say)
    it names none.
    """
    plan_file = sweep_dir / "multirun.yaml"
    if not plan_file.is_file():
        return []
    plan = OmegaConf.load(plan_file).hydra
    params = [f"{k}={v}" for k, v in (OmegaConf.select(plan, "sweeper.params") or {}).items()]
    task = OmegaConf.to_container(plan.overrides.task, resolve=False)  # run_name=${...} as typed
    overrides = OverridesParser.create().parse_overrides([*params, *task])
    parsed = list({o.get_key_element(): o for o in overrides}.values())  # the last of a key wins
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return []
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
               if o.is_sweep_override()
               else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]
    started = {frozenset(OmegaConf.load(f)) for f in sweep_dir.glob("*/.hydra/overrides.yaml")}
    swept = [i for i, o in enumerate(parsed) if o.is_sweep_override()]
    return [" ".join(job[i] for i in swept) for job in itertools.product(*choices)
            if frozenset(job) not in started]


# --- group --------------------------------------------------------------------------------


def group_keys(runs: list[Run]) -> list[str]:
    """dataset, optim, norm, then every other hparam that varies across the sweep; never seed."""
    names = dict.fromkeys(k for r in runs for k in r.hparams)
    varying = [k for k in names
               if k not in (*FIRST_KEYS, "seed") and len({str(r.hparams.get(k)) for r in runs}) > 1]
    return [*FIRST_KEYS, *varying]


def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs by group key, a tuple of (hparam, value) pairs; groups and runs in sweep order."""
    keys = group_keys(runs)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple((k, run.hparams.get(k)) for k in keys), []).append(run)
    return {key: sorted(group, key=lambda r: r.hparams.get("seed", 0))
            for key, group in groups.items()}


def comparisons(groups: dict[tuple, list[Run]]) -> dict[tuple, dict[str, list[Run]]]:
    """The groups by their key without `norm` (one BN-vs-no-BN comparison each), then by norm."""
    out: dict[tuple, dict[str, list[Run]]] = {}
    for key, runs in groups.items():
        norm = dict(key)["norm"]
        out.setdefault(tuple(kv for kv in key if kv[0] != "norm"), {})[norm] = runs
    return out


def slug(ckey: tuple) -> str:
    """`mnist_sgd`, plus `_<hparam><value>` for each other varying hparam."""
    values = dict(ckey)
    extras = [f"{k}{v}" for k, v in ckey if k not in FIRST_KEYS]
    return "_".join([str(values["dataset"]), str(values["optim"]), *extras])


def describe(ckey: tuple) -> str:
    """`mnist, sgd`, plus `, <hparam>=<value>` for each other varying hparam."""
    return ", ".join([str(v) for k, v in ckey if k in FIRST_KEYS]
                     + [f"{k}={v}" for k, v in ckey if k not in FIRST_KEYS])


def norm_order(norms) -> list[str]:
    """No BN first, then BN, then any other norm."""
    rank = {"none": 0, "bn": 1}
    return sorted(norms, key=lambda n: (rank.get(n, 2), str(n)))


def norm_label(norm: str) -> str:
    """The registry's label for `norm` (`BatchNorm`, ...); an unknown norm's own name."""
    return NORMS[norm].label if norm in NORMS else str(norm)
