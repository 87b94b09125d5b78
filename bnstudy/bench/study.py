"""A whole study through the entry point against the same runs in one plain PyTorch process.

    python -m bnstudy.bench study [--repeats 2] [--hallucinations] [--threads N] [overrides ...]

The study is `python -m bnstudy.train -m hydra/launcher=parallel dataset=mnist,cifar10
norm=bn,none optim=sgd,adam ~callbacks.hallucinations` (the default study: 3 seeds, 24 runs,
two at a time) with `overrides` added; an override of a key the default names replaces it
(`dataset=mnist`, `hydra/launcher=basic`, `seed=0,1,...,19`). `--hallucinations` keeps the
hallucination callback. The plain process (`bnstudy.bench.plain`, run as `python -m
bnstudy.bench plain`) trains the same runs one after the other with `--threads` torch threads
(default: one per core), reading each job's composed config from the first sweep. Each
round runs both as fresh processes, timed from start to exit (interpreter start, imports and
all), the order alternating (study then plain, plain then study, ...); each round gives a
ratio. It prints each round (with the load average: only rounds on a machine with nothing
else running compare), the medians and the ratios' range, and checks that both trained the
same runs: the largest difference between their final validation accuracies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_STUDY = ("hydra/launcher=parallel", "dataset=mnist,cifar10", "norm=bn,none",
                 "optim=sgd,adam")
NO_HALLUCINATIONS = "~callbacks.hallucinations"
# Trainer settings the plain process does not reproduce: they must keep these values.
PLAIN_TRAINER = {"gradient_clip_val": None, "accumulate_grad_batches": 1, "max_steps": -1,
                 "limit_train_batches": None, "limit_val_batches": None, "overfit_batches": 0.0,
                 "fast_dev_run": False, "precision": "32-true", "devices": 1,
                 "check_val_every_n_epoch": 1, "val_check_interval": None, "min_epochs": None,
                 "max_time": None}


class BenchError(Exception):
    """A study the benchmark cannot time as asked (said in one paragraph)."""


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def study_overrides(overrides: list[str], hallucinations: bool = False) -> list[str]:
    """The study's command-line overrides: the default study's, each replaced by an override of
    the same key, then the others; without the hallucinations unless asked or configured."""
    given = {_key(o) for o in overrides}
    chosen = [o for o in DEFAULT_STUDY if _key(o) not in given] + list(overrides)
    if not hallucinations and not any(k.startswith("callbacks.hallucinations") for k in given):
        chosen.append(NO_HALLUCINATIONS)
    return chosen


def run_study(overrides: list[str], sweep_dir: Path) -> float:
    """Runs the study through the entry point into `sweep_dir`; its seconds, start to exit."""
    command = [sys.executable, "-m", "bnstudy.train", "-m", *overrides,
               f"hydra.sweep.dir={sweep_dir}"]
    log = sweep_dir.parent / f"{sweep_dir.name}.log"
    with open(log, "w") as out:
        started = time.perf_counter()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
    if code != 0:
        raise BenchError(f"The study failed (exit {code}): {' '.join(command)}\n"
                         + log.read_text()[-3000:])
    return seconds


def records(sweep_dir: Path) -> dict[str, dict]:
    """Each job's metrics.json, by job directory, in job order."""
    from bnstudy.records import RECORD_NAME, RunRecord, job_order

    jobs = sorted((p.parent for p in sweep_dir.glob(f"*/{RECORD_NAME}")), key=job_order)
    return {job.name: vars(RunRecord.read(job)) for job in jobs}


def unlike_plain(trainer) -> list[str]:
    """The Trainer settings of a job's config that the plain process does not reproduce
    (`PLAIN_TRAINER`), as `trainer.<key>=<value>`."""
    def same(key: str, value, plain) -> bool:
        return value == plain or (key.startswith("limit_") and value in (1, 1.0)) or \
            (key == "devices" and str(value) == "1")

    return [f"trainer.{key}={trainer.get(key)}" for key, plain in PLAIN_TRAINER.items()
            if not same(key, trainer.get(key), plain)]


def plain_runs(sweep_dir: Path) -> list[dict]:
    """What the plain process needs of each job of a finished sweep (see `bench.plain`), from
    the job's composed config (`.hydra/config.yaml`) and its datamodule."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from bnstudy.config import register
    from bnstudy.data import CIFAR10DataModule, MNISTDataModule

    register()
    runs = []
    for job, record in records(sweep_dir).items():
        cfg = OmegaConf.load(sweep_dir / job / ".hydra" / "config.yaml")
        different = unlike_plain(cfg.trainer)
        if different:
            raise BenchError(
                f"The plain process trains with Lightning's default loop settings only, but "
                f"{job} sets {', '.join(different)}. "
                "Time that study with `python -m bnstudy.bench` (per epoch) instead.")
        settings = OmegaConf.to_container(cfg.dataset.datamodule, resolve=True)
        datamodule = get_class(settings.pop("_target_"))(**settings)
        data_log = logging.getLogger("bnstudy.data")  # its warnings: the study said them
        level = data_log.level
        data_log.setLevel(logging.ERROR)
        try:
            datamodule.setup("fit")
        finally:
            data_log.setLevel(level)
        data = {"mean": list(datamodule.mean), "std": list(datamodule.std),
                "split_seed": datamodule.split_seed, "n_train": len(datamodule.train_set),
                "n_val": len(datamodule.val_set)}
        for split, train in (("train", True), ("test", False)):
            if isinstance(datamodule, MNISTDataModule):
                data[split] = {"idx": str(datamodule.data_dir.resolve()), "train": train,
                               "torchvision_class": datamodule.torchvision_class.__name__}
            elif isinstance(datamodule, CIFAR10DataModule):
                data[split] = {"cifar": [str(p.resolve()) for p in datamodule.files(train)]}
            else:
                raise BenchError(f"The plain process cannot read {type(datamodule).__name__}.")
        model = OmegaConf.to_container(cfg.model, resolve=True)
        runs.append({
            "name": record.get("run_name", job), "data": data, "seed": cfg.seed,
            "net": {**model["net"], "input_shape": list(datamodule.input_shape),
                    "num_classes": datamodule.num_classes},
            "optimizer": OmegaConf.to_container(cfg.optim.optimizer, resolve=True),
            "batch_size": datamodule.batch_size, "eval_batch_size": datamodule.eval_batch_size,
            "max_epochs": cfg.trainer.max_epochs})
    return runs


def run_plain(runs_file: Path, results_file: Path, threads: int) -> float:
    """Runs the plain process; its seconds, start to exit."""
    command = [sys.executable, "-m", "bnstudy.bench", "plain", str(runs_file),
               str(results_file), "--threads", str(threads)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"The plain process failed (exit {proc.returncode}): "
                         f"{' '.join(command)}\n{proc.stderr[-3000:]}")
    return seconds


def machine() -> str:
    """The machine in words: CPU cores and model, and the GPU if torch sees one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({cpu}), {gpu}"


def load() -> str:
    """The machine's load average over the last minute: above its cores, other processes
    compete, and a torch thread pool that waits for its threads is slowed the most."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def largest_difference(study: dict[str, dict], plain: list[dict]) -> float:
    """The largest difference, in points, between the final validation accuracy of each run
    in the study and in the plain process (the same runs, in the same order)."""
    pairs = zip(study.values(), plain, strict=True)
    return max(abs(r["history"][-1]["val/acc"] - p["history"][-1]["val/acc"]) * 100
               for r, p in pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnstudy.bench study",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds to time (default 2)")
    parser.add_argument("--hallucinations", action="store_true",
                        help="keep the hallucination callback (default: off)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the plain process (default: one per core)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides added to the default study, e.g. seed=0,1")
    args = parser.parse_intermixed_args(argv)
    overrides = study_overrides(args.overrides, args.hallucinations)
    work = Path(tempfile.mkdtemp(prefix="bnstudy-bench-study-"))
    try:
        print(f"study: python -m bnstudy.train -m {' '.join(overrides)}")
        print(f"plain: the same runs in one PyTorch process, {args.threads} torch thread(s)")
        print(f"machine: {machine()}")
        study_s, plain_s, runs_file, results_file = [], [], work / "runs.json", work / "plain.json"
        for round_ in range(args.repeats):
            order = ("study", "plain") if round_ % 2 == 0 else ("plain", "study")
            for which in order:
                if which == "study":
                    sweep = work / f"study{round_}"
                    study_s.append(run_study(overrides, sweep))
                    if round_ == 0:
                        found = records(sweep)
                        runs_file.write_text(json.dumps(plain_runs(sweep)))
                    shutil.rmtree(sweep)
                else:
                    plain_s.append(run_plain(runs_file, results_file, args.threads))
            print(f"round {round_ + 1} ({' then '.join(order)}): study {study_s[-1]:.1f} s, "
                  f"plain {plain_s[-1]:.1f} s, ratio {study_s[-1] / plain_s[-1]:.2f} "
                  f"(load {load()})", flush=True)
        ratios = [s / p for s, p in zip(study_s, plain_s, strict=True)]
        plain = json.loads(results_file.read_text())["runs"]
        print(f"{len(found)} runs: study {statistics.median(study_s):.1f} s, plain "
              f"{statistics.median(plain_s):.1f} s (medians of {args.repeats}); ratio study / "
              f"plain {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")
        print(f"same runs: final val acc, study vs plain, differ by at most "
              f"{largest_difference(found, plain):.2f} points")
    except BenchError as err:
        sys.exit(str(err))
    finally:
        shutil.rmtree(work, ignore_errors=True)
