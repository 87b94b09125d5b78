"""C5's clock: what a training step costs with BN and without (any treatment and baseline
norm: `pair`), measured paired in one process.

The runs' own `time_s` is not the clock: runs of a sweep share the machine with each other
(`hydra/launcher=parallel`) and with whatever else runs, so their seconds say as much about
the machine as about BN. Here both networks of a pair (the study's net for the dataset, with
and without BN, the run's optimizer, batch size and a batch of the dataset's shape) take
training steps in alternating blocks, `ROUNDS` times, in one process at one torch thread, and
the clock is the CPU time of that thread (`time.thread_time`), not the wall clock: time the
thread waits while other processes hold the cores is not counted. What noise remains (caches,
frequency) only ever adds time, so each side's cost is its **fastest** block (timeit's rule),
and the ratio BN / no BN the verdict uses is the ratio of those minima; the per-round ratios are
kept to show the spread. The ratio leaves out what both norms pay alike
(Lightning's loop, logging, validation), so a whole epoch's ratio is closer to 1 than this:
the clock is, if anything, unfair to BN.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bnstudy.report.runs import STUDY

ROUNDS = 15    # alternating blocks per side
STEPS = 20     # training steps per block (after WARMUP)
WARMUP = 5


@dataclass(frozen=True)
class StepCost:
    """Seconds per training step of each side (its fastest block), their ratio treatment /
    baseline (the one the verdict uses) and the spread of the per-round ratios."""

    treatment_s: float
    baseline_s: float
    ratio: float
    ratio_min: float
    ratio_median: float
    ratio_max: float
    rounds: int


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
    """The paired cost of a training step of `pair`'s norms (treatment, baseline) for a run's
    config."""
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
    return StepCost(t, b, t / b, min(ratios), statistics.median(ratios), max(ratios), rounds)


def pair_costs(runs) -> dict[tuple[str, str], StepCost]:
    """The step cost of each (dataset, optim) pair that has runs (rows of `load_runs`) of both
    norms, measured on the stored config of its first run (`.hydra/config.yaml`)."""
    from omegaconf import OmegaConf

    out = {}
    for (dataset, optim), pair in runs.groupby(["dataset", "optim"], sort=False):
        configs = [Path(p) / ".hydra" / "config.yaml" for p in pair["path"]]
        found = [c for c in configs if c.is_file()]
        if found and set(STUDY) <= set(pair["norm"]):
            out[dataset, optim] = measure(OmegaConf.load(found[0]))
    return out
