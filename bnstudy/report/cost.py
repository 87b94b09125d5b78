"""C5: accuracy as a function of compute, and its clock.

The clock (`measure`, in a fresh process: `measure_apart`): CPU seconds of a training step of
each norm, paired in one process at one torch thread, alternating blocks `ROUNDS` times; C5
charges the treatment `StepCost.charged`, kept per sweep (`pair_costs`). The reading
(`val_acc_at`): a run's epoch e ends at e × its step-cost ratio, in baseline epochs."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bnstudy.report.claims import BUDGETS
from bnstudy.report.runs import STUDY, num

ROUNDS = 31    # alternating blocks per side: the median's upper bound is the 21st ratio of 31
STEPS = 20     # training steps per block (after WARMUP)
WARMUP = 5
CLOCK_FILE = "clock.json"  # in the report folder: each pair's measured clock, reused


@dataclass(frozen=True)
class StepCost:
    """Seconds a step of each side (fastest block), their ratio treatment / baseline, and the
    per-round ratios: their spread, median and the median's 95 % upper bound, which C5 charges."""

    treatment_s: float
    baseline_s: float
    ratio: float
    ratio_min: float
    ratio_median: float
    ratio_upper: float
    ratio_max: float
    rounds: int

    @property
    def charged(self) -> float:
        """The ratio C5 charges the treatment's step: the median round's 95 % upper bound."""
        return self.ratio_upper


def median_upper(values: list[float], level: float = 0.95) -> float:
    """A distribution-free upper confidence bound of the median: the smallest order statistic
    at or above the median with probability `level` (binomial; the largest value when too few)."""
    from scipy import stats

    k = int(stats.binom.ppf(level, len(values), 0.5))  # P(#values below the median ≤ k) ≥ level
    return sorted(values)[min(k, len(values) - 1)]


def _step_fn(cfg, norm: str):
    """One training step of the config's net with `norm`, on a fixed random batch."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import get_class, instantiate

    datamodule = get_class(cfg.dataset.datamodule._target_)
    shape = tuple(datamodule.input_shape)
    classes = len(getattr(datamodule, "classes", range(10)))
    net = instantiate(cfg.model.net, input_shape=shape, num_classes=classes, norm=norm)
    optimizer = instantiate(cfg.optim.optimizer)(net.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(int(cfg.dataset.batch_size), *shape, generator=generator)
    y = torch.randint(0, classes, (len(x),), generator=generator)
    net.train()

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step


def _seconds(step, n: int) -> float:
    """CPU seconds of this thread per call of `step`."""
    start = time.thread_time()
    for _ in range(n):
        step()
    return (time.thread_time() - start) / n


def measure(cfg, rounds: int = ROUNDS, steps: int = STEPS, pair=STUDY) -> StepCost:
    """The paired cost of a training step of `pair`'s norms for a run's config."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sides = {norm: _step_fn(cfg, norm) for norm in pair}
        for step in sides.values():
            _seconds(step, WARMUP)
        times: dict[str, list[float]] = {norm: [] for norm in pair}
        for i in range(rounds):
            for norm in (pair if i % 2 == 0 else pair[::-1]):
                times[norm].append(_seconds(sides[norm], steps))
    finally:
        torch.set_num_threads(threads)
    ratios = [t / b for t, b in zip(times[pair[0]], times[pair[1]], strict=True)]
    t, b = min(times[pair[0]]), min(times[pair[1]])
    return StepCost(t, b, t / b, min(ratios), statistics.median(ratios), median_upper(ratios),
                    max(ratios), rounds)


def measure_apart(configs: list[Path], rounds: int = ROUNDS) -> list[StepCost]:
    """`measure` for each run config file, in a fresh Python process (a long-lived one's
    memory history moves a step's cost)."""
    code = ("import json, sys; from dataclasses import asdict; from omegaconf import OmegaConf; "
            "from bnstudy.report.cost import measure; print(json.dumps([asdict(measure("
            "OmegaConf.load(p), rounds=int(sys.argv[1]))) for p in sys.argv[2:]]))")
    done = subprocess.run([sys.executable, "-c", code, str(rounds), *map(str, configs)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"C5's clock failed: {done.stderr.strip()[-2000:]}")
    return [StepCost(**c) for c in json.loads(done.stdout.splitlines()[-1])]


def pair_costs(runs, kept: Path | None = None) -> dict[tuple[str, str], StepCost]:
    """The step cost of each (dataset, optim) with runs of both norms, on its first run's
    config; measured once and kept in `kept` (the report's `clock.json`)."""
    from bnstudy.records import write_json_atomic

    stored = json.loads(kept.read_text()) if kept is not None and kept.is_file() else {}
    out, new = {}, {}
    for (dataset, optim), pair in runs.groupby(["dataset", "optim"], sort=False):
        found = [c for p in pair["path"] if (c := Path(p) / ".hydra" / "config.yaml").is_file()]
        if found and set(STUDY) <= set(pair["norm"]):
            try:
                out[dataset, optim] = StepCost(**stored[f"{dataset}/{optim}"])
            except (KeyError, TypeError):  # not measured yet, or by an older clock
                new[dataset, optim] = found[0]
    out.update(zip(new, measure_apart(list(new.values())), strict=True) if new else ())
    fresh = {f"{d}/{o}": asdict(c) for (d, o), c in out.items()}
    if kept is not None and any(stored.get(k) != v for k, v in fresh.items()):
        write_json_atomic(kept, {**stored, **fresh})
    return out


def val_acc_at(history: list[dict], epoch_cost: float, budget: float) -> float:
    """The run's best val acc so far at `budget` of compute (baseline epochs), its epoch e
    ending at e × `epoch_cost`: linear between the epoch ends around it, NaN before the first."""
    best = np.fmax.accumulate([num(row.get("val/acc")) for row in history], dtype=float)
    ends = epoch_cost * np.arange(1, len(best) + 1)
    if not len(best) or budget < ends[0] - 1e-9:
        return math.nan
    return float(np.interp(max(budget, ends[0]), ends, best))


def compute_curve(histories: list[list[dict]], epoch_cost: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs' `val_acc_at` on the union of their epoch ends: (compute, mean over runs,
    sample std; NaN for one run)."""
    if not histories:
        return (np.array([]),) * 3
    grid = np.unique(np.concatenate([epoch_cost * np.arange(1, len(h) + 1) for h in histories]))
    acc = np.array([[val_acc_at(h, epoch_cost, x) for x in grid] for h in histories])
    std = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.full(len(grid), math.nan)
    return grid, acc.mean(axis=0), std


def study_curves(runs: pd.DataFrame, charged: float) -> dict[str, tuple[np.ndarray, ...]]:
    """Per norm of the study pair, its runs' `compute_curve` (a treatment step: `charged`)."""
    return {n: compute_curve(list(runs.loc[runs["norm"] == n, "history"]),
                             charged if n == STUDY[0] else 1.0) for n in STUDY}


def compute_to_reach(compute: np.ndarray, acc: np.ndarray, target: float) -> float:
    """Where the monotone curve (`compute`, `acc`) first reaches `target`, linear between its
    points; NaN if it never does."""
    hit = np.flatnonzero(acc >= target - 1e-12)
    if not len(hit):
        return math.nan
    i = hit[0]
    if i == 0 or acc[i] == acc[i - 1]:
        return float(compute[i])
    share = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
    return float(compute[i - 1] + share * (compute[i] - compute[i - 1]))


def full_compute(runs: pd.DataFrame) -> int:
    """The baseline runs' full training compute: their most epochs (0 without one)."""
    return max(runs.loc[runs["norm"] == STUDY[1], "history"].map(len), default=0)


def time_table(runs: pd.DataFrame, ratios: dict[tuple[str, str], float]) -> pd.DataFrame:
    """The runs of the pairs in `ratios` with C5's `val_acc_at_<share>` of the baseline runs'
    full compute, a treatment step costing `ratios[dataset, optim]`."""
    parts = []
    for (dataset, optim), ratio in ratios.items():
        mine = runs[(runs["dataset"] == dataset) & (runs["optim"] == optim)]
        full = full_compute(mine)
        cost = [ratio if n == STUDY[0] else 1.0 for n in mine["norm"]]
        parts.append(mine.assign(**{
            f"val_acc_at_{share:g}": [val_acc_at(h, c, share * full) if full else math.nan
                                      for h, c in zip(mine["history"], cost, strict=True)]
            for share in BUDGETS}))
    return pd.concat(parts) if parts else runs.iloc[:0]
