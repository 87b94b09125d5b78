"""A whole study through the entry point against the same runs in plain PyTorch processes.

    python -m bnstudy.bench study [--repeats 2] [--hallucinations] [overrides ...]

The study: `python -m bnstudy.train -m hydra/launcher=parallel dataset=mnist,cifar10
norm=bn,none optim=sgd,adam ~callbacks.hallucinations` (24 runs, two jobs at a time, one
torch thread each), each override replacing a default of the same key. The baselines train
the first sweep's runs in plain PyTorch (`bnstudy.bench.plain`): in as many processes as the
launcher has workers, one thread each, and (the former baseline) in one process at a thread
per core; of a tuned study (`experiment=tuned`), its search trials too. Each side is timed
from its processes' start to their exit, the order rotating round by round (a load average
above the core count: other processes competed); the final validation accuracies of both
sides differ by 0.00 where they trained the same runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from bnstudy.bench import check_overrides
from bnstudy.records import SEARCH_DIR, sweep_records

DEFAULT_STUDY = ("hydra/launcher=parallel", "dataset=mnist,cifar10", "norm=bn,none",
                 "optim=sgd,adam")
NO_HALLUCINATIONS = "~callbacks.hallucinations"
# Trainer settings the plain process does not reproduce: they must keep one of these values.
PLAIN_TRAINER = {"gradient_clip_val": [None], "accumulate_grad_batches": [1], "max_steps": [-1],
                 "limit_train_batches": [None, 1], "limit_val_batches": [None, 1],
                 "overfit_batches": [0.0], "fast_dev_run": [False], "precision": ["32-true"],
                 "devices": [1, "1"], "check_val_every_n_epoch": [1], "val_check_interval": [None],
                 "min_epochs": [None], "max_time": [None]}


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


def cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(commands: list[list[str]], log: Path) -> tuple[float, float]:
    """Runs the commands side by side: seconds from the start to the last exit, and the CPU
    seconds they used (which other processes on the machine change far less)."""
    with open(log, "w") as out:
        started, cpu = time.perf_counter(), cpu_s()
        procs = [subprocess.Popen(c, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True) for c in commands]
        try:
            codes = [p.wait() for p in procs]
        finally:  # stopped (Ctrl-C, a kill): its processes and theirs end before its folder
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                p.wait()
        seconds, cpu = time.perf_counter() - started, cpu_s() - cpu
    if any(codes):
        raise BenchError(f"{' '.join(commands[0])} failed (exit {max(codes)}):\n"
                         + log.read_text()[-3000:])
    return seconds, cpu


def unlike_plain(trainer) -> list[str]:
    """The Trainer settings of a job's config that the plain process does not reproduce
    (`PLAIN_TRAINER`), as `trainer.<key>=<value>`."""
    return [f"trainer.{key}={trainer.get(key)}" for key, values in PLAIN_TRAINER.items()
            if trainer.get(key) not in values]


def trained(sweep_dir: Path) -> list:
    """The (job, record) of every run a sweep trained: a tuned study's search trials (each
    cell's, in `search/`) first, then its jobs."""
    cells = sorted(p for p in (sweep_dir / SEARCH_DIR).glob("*") if p.is_dir())
    return [pair for folder in [*cells, sweep_dir] for pair in sweep_records(folder)]


def plain_runs(jobs: list) -> list[dict]:
    """What the plain process needs of each (job, record) a finished sweep `trained` (see
    `bench.plain`), from the job's composed config (`.hydra/config.yaml`) and its datamodule."""
    from hydra.utils import instantiate

    from bnstudy.config import register
    from bnstudy.data import CIFAR10DataModule

    register()
    runs = []
    for job, record in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        if different := unlike_plain(cfg.trainer):
            raise BenchError(
                f"The plain process trains with Lightning's default loop settings only, but "
                f"{job.name} sets {', '.join(different)}. "
                "Time that study with `python -m bnstudy.bench` (per epoch) instead.")
        dm = instantiate(cfg.dataset.datamodule, verify_checksums="off") \
            if "verify_checksums" in cfg.dataset.datamodule else instantiate(cfg.dataset.datamodule)
        n_train, n_val = dm.split_sizes(len(dm.read_split(train=True)[1]))
        data = {"mean": list(dm.mean), "std": list(dm.std), "split_seed": dm.split_seed,
                "n_train": n_train, "n_val": n_val}
        for split, train in (("train", True), ("test", False)):
            data[split] = ({"cifar": [str(p.resolve()) for p in dm.files(train)]}
                           if isinstance(dm, CIFAR10DataModule) else
                           {"idx": str(dm.data_dir.resolve()), "train": train,
                            "torchvision_class": dm.torchvision_class.__name__})
        model = OmegaConf.to_container(cfg.model, resolve=True)
        runs.append({
            "name": record.run_name or job.name, "data": data, "seed": cfg.seed,
            "net": {**model["net"], "input_shape": list(dm.input_shape),
                    "num_classes": dm.num_classes},
            "optimizer": OmegaConf.to_container(cfg.optim.optimizer, resolve=True),
            "batch_size": dm.batch_size, "eval_batch_size": dm.eval_batch_size,
            "max_epochs": cfg.trainer.max_epochs})
    return runs


def workers(jobs: list) -> int:
    """The launcher's parallel jobs in a sweep, from its first (job, record) `trained` (`n_jobs`;
    1 for Hydra's basic launcher)."""
    hydra = OmegaConf.load(jobs[0][0] / ".hydra" / "hydra.yaml").hydra
    return max(1, int(hydra.launcher.get("n_jobs") or 1))


def plain_commands(runs: Path, results: Path, processes: int, threads: int) -> list[list[str]]:
    return [[sys.executable, "-m", "bnstudy.bench", "plain", str(runs),
             f"{results}.{i}", "--threads", str(threads), "--share", f"{i}/{processes}"]
            for i in range(processes)]


def plain_results(results: Path, processes: int) -> list[dict]:
    """The runs' figures, in the runs' order, from the processes' result files."""
    shares = [json.loads(Path(f"{results}.{i}").read_text())["runs"] for i in range(processes)]
    return [shares[i % processes][i // processes] for i in range(sum(map(len, shares)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnstudy.bench study",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds to time (default 2)")
    parser.add_argument("--hallucinations", action="store_true",
                        help="keep the hallucination callback (default: off)")
    parser.add_argument("--no-former", action="store_true",
                        help="leave out the former baseline (one process, a thread per core)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides added to the default study, e.g. seed=0,1")
    args = parser.parse_intermixed_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: it times 1 round or more, e.g. --repeats 2")
    if problem := check_overrides(args.overrides):
        parser.error(problem)
    overrides = study_overrides(args.overrides, args.hallucinations)
    work = Path(tempfile.mkdtemp(prefix="bnstudy-bench-study-"))
    cores = os.cpu_count() or 1
    runs, results, first = work / "runs.json", work / "plain", work / "study0"
    try:
        print(f"study: python -m bnstudy.train -m {' '.join(overrides)}")
        print(f"machine: {machine()}")
        study = [sys.executable, "-m", "bnstudy.train", "-m", *overrides]

        def run_study(round_: int) -> tuple[float, float]:
            return timed([[*study, f"hydra.sweep.dir={work}/study{round_}"]], work / "log")

        times = {"study": [run_study(0)]}  # (wall, CPU) seconds
        jobs = trained(first)  # the first study tells the runs, read once
        runs.write_text(json.dumps(plain_runs(jobs)))
        n = workers(jobs)  # and the launcher's workers
        plain = {f"plain {n}x1": (results, n, 1, f"{n} plain process(es), 1 thread each")}
        if not args.no_former:
            plain[f"plain 1x{cores}"] = (work / "old", 1, cores,
                                         f"1 plain process, {cores} threads (former baseline)")
        sides = ["study", *plain]
        times |= {side: [] for side in plain}
        for round_ in range(args.repeats):
            order = sides[round_ % len(sides):] + sides[:round_ % len(sides)]
            for side in order[1:] if round_ == 0 else order:  # round 1's study: above
                times[side].append(run_study(round_) if side == "study" else
                                   timed(plain_commands(runs, *plain[side][:3]), work / "log"))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{side} {t[-1][0]:.1f} s (CPU {t[-1][1]:.1f} s)" for side, t in times.items())
                  + f" (load {os.getloadavg()[0]:.1f}; order: {' > '.join(order)})", flush=True)
        print(f"{len(json.loads(runs.read_text()))} runs, medians of {args.repeats} rounds "
              "(wall clock; CPU seconds):")
        medians = {side: [statistics.median(t[i] for t in times[side]) for i in (0, 1)]
                   for side in sides}
        print(f"  {'the study (' + str(n) + ' jobs at a time)':52s} "
              f"{medians['study'][0]:6.1f} s; CPU {medians['study'][1]:6.1f} s")
        for side, (*_, label) in plain.items():
            ratios = [[s[i] / p[i] for s, p in zip(times["study"], times[side], strict=True)]
                      for i in (0, 1)]
            print(f"  {label:52s} {medians[side][0]:6.1f} s; CPU {medians[side][1]:6.1f} s"
                  "   study / it " + "; CPU ".join(
                      f"{statistics.median(r):.2f} (range {min(r):.2f}-{max(r):.2f})"
                      for r in ratios))
        finals = list(zip(jobs, plain_results(results, n), strict=True))
        ok = [(r, p) for (_, r), p in finals if r.status == "ok" and not p.get("diverged")]
        differ = max((abs(r.final_val_acc - p["history"][-1]["val/acc"]) for r, p in ok),
                     default=0.0)
        both = sum(r.status == "diverged" and bool(p.get("diverged")) for (_, r), p in finals)
        print(f"same runs: final val acc, study vs {n} plain process(es) at 1 thread, differ by "
              f"at most {differ * 100:.2f} points" + (
                  f" ({len(finals) - len(ok)} not compared: {both} diverged on both sides, "
                  f"{len(finals) - len(ok) - both} on one)" if len(ok) < len(finals) else ""))
    except BenchError as err:
        sys.exit(str(err))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def machine() -> str:
    """The machine in words: CPU cores and model, and the GPU if torch sees one."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").is_file() else "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({cpu}), {gpu}"
