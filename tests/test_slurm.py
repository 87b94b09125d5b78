"""`hydra/launcher=slurm` on a real SLURM (issue #34): `sbatch` arrays, `scancel`, `scontrol
requeue` and time limits, as a cluster user meets them. Marked `slurm`; they run where `sinfo`
answers (`/work/shared/tools/local-slurm start` gives this machine a one-node SLURM 22.05 with
accounting) and are skipped elsewhere. Tiny CIFAR-10 runs on the shared subsets, one core each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, REPO, read_record, run_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]  # real queueing

SLURM = ("hydra/launcher=slurm", "hydra.launcher.partition=debug",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2")
RUN = ("dataset=cifar10", "seed=0", "~callbacks.hallucinations")


@pytest.fixture(autouse=True, scope="module")
def slurm() -> None:
    try:
        answered = shutil.which("sinfo") and subprocess.run(
            ["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    if not answered:
        pytest.skip("no SLURM here (sinfo does not answer): /work/shared/tools/local-slurm start "
                    "gives this machine a one-node SLURM")


def start_sweep(sweep: Path, data: Path, *overrides: str) -> subprocess.Popen:
    """`python -m bnstudy.train -m` through SLURM, in the background (the sbatch jobs inherit
    this environment, so they run this checkout)."""
    return subprocess.Popen([sys.executable, "-m", "bnstudy.train", "-m", *SLURM, *FAST, *RUN,
                             f"paths.data_dir={data}", f"hydra.sweep.dir={sweep}", *overrides],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def slurm_job(job: Path, epochs: int, proc: subprocess.Popen, timeout: float = 300) -> str:
    """The SLURM id (`3_1`) of the job training in `job`, once it has trained `epochs`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            record = json.loads((job / "metrics.json").read_text())
        except (OSError, ValueError):
            record = {}
        if len(record.get("history", [])) >= epochs:
            return record["job"]["id"].removeprefix("slurm:")
        time.sleep(0.5)
    raise AssertionError(f"{job} did not train {epochs} epoch(s) in {timeout} s")


def test_scancel_of_one_job_is_named_in_the_summary_and_a_requeued_job_resumes(shared_data,
                                                                              tmp_path):
    """`scontrol requeue` of job 0 (a preemption): it resumes by itself and ends ok; `scancel`
    of job 1: the sweep's last lines are the summary naming it cancelled, with SLURM's state
    and the resume command, exit 1, and job 0's result kept."""
    sweep = tmp_path / "sweep"
    proc = start_sweep(sweep, shared_data, "norm=bn,none", "trainer.max_epochs=60")
    requeued = slurm_job(sweep / "0_cifar10-bn-sgd-seed0", 2, proc)
    subprocess.run(["scontrol", "requeue", requeued], check=True)
    cancelled = slurm_job(sweep / "1_cifar10-none-sgd-seed0", 2, proc)
    subprocess.run(["scancel", cancelled], check=True)
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    kept = read_record(sweep / "0_cifar10-bn-sgd-seed0")
    assert kept["status"] == "ok" and kept["requeues"] == 1 and len(kept["history"]) == 60
    lines = stderr.strip().splitlines()
    assert lines[-3] == f"1 job(s) of {sweep} did not finish; the others kept their results:"
    assert lines[-2].startswith("  1_cifar10-none-sgd-seed0: cancelled (SLURM state CANCELLED")
    assert "its record says interrupted" in lines[-2]
    assert f"resume=true hydra.sweep.dir={sweep}" in lines[-1]


def test_a_time_limit_requeue_ends_ok_as_an_uninterrupted_run(shared_data, tmp_path):
    """A 1-minute time limit: SLURM signals the job, submitit requeues it, the run resumes by
    itself each time and ends ok, with the history and test metrics of the same run never
    interrupted (the same thread count), bit for bit but the clock; its console shows the
    data's warning once."""
    limited, whole = tmp_path / "limited", tmp_path / "whole"
    overrides = ("norm=none", "trainer.max_epochs=100")
    # signalled at 45 s: 0.3 s more per epoch outlasts that on any machine (100 epochs took
    # 22 s on a 2-core Xeon, and no time limit was reached)
    proc = start_sweep(limited, shared_data, *overrides, "hydra.launcher.timeout_min=1",
                       "hydra.launcher.signal_delay_s=15",
                       "+callbacks.slow._target_=tests.faults.SlowEpochs",
                       "+callbacks.slow.seconds=0.3")
    _, stderr = proc.communicate(timeout=1500)
    assert proc.returncode == 0, stderr[-3000:]
    ran = run_sweep(whole, shared_data, *RUN, *overrides)
    assert ran.returncode == 0, ran.stderr[-3000:]
    (job,) = limited.glob("0_*")
    got, want = read_record(job), read_record(whole / job.name)
    assert got["status"] == "ok" and got["requeues"] >= 1, got["requeues"]
    assert [{k: v for k, v in row.items() if k != "time_s"} for row in got["history"]] == \
        [{k: v for k, v in row.items() if k != "time_s"} for row in want["history"]]
    assert got["test"] == want["test"]
    # the subset's checksum warning: on the job's console once, not once per attempt
    (console,) = limited.glob(".submitit/*/*_log.err")
    assert console.read_text().count("CIFAR-10 checksums") == 1
