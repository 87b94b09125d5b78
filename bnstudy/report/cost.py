"""C5's clock: the CPU seconds of a training step with the treatment norm and with the baseline
(`pair`), measured paired in one process at one torch thread (`time.thread_time`), the two
alternating in blocks `ROUNDS` times. Noise only adds time, so each side's cost is its fastest
block (timeit's rule) and the ratio is theirs; the per-round ratios show the spread."""

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
    """Seconds a step of each side (fastest block), their ratio treatment / baseline (the
    verdict's), and the per-round ratios' spread."""

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
    return StepCost(t, b, t / b, min(ratios), statistics.median(ratios), max(ratios), rounds)


def pair_costs(runs) -> dict[tuple[str, str], StepCost]:
    """The step cost of each (dataset, optim) with runs of both norms, on its first run's
    `.hydra/config.yaml`."""
    from omegaconf import OmegaConf

    out = {}
    for (dataset, optim), pair in runs.groupby(["dataset", "optim"], sort=False):
        configs = [Path(p) / ".hydra" / "config.yaml" for p in pair["path"]]
        found = [c for c in configs if c.is_file()]
        if found and set(STUDY) <= set(pair["norm"]):
            out[dataset, optim] = measure(OmegaConf.load(found[0]))
    return out
