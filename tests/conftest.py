"""Shared fixtures (helpers they use live in `helpers.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import FAST, REPO, read_record, write_cifar10, write_mnist


def pytest_collection_finish(session) -> None:
    """Once the tests to run are known: the `tiny_sweep` starts in the background if a test
    reads it, so that its work overlaps the tests before its first use; and the objects
    collection imported (torch, Lightning, matplotlib: most of the heap) are kept out of
    Python's garbage collections, each of which spent ~0.2 s walking them for nothing to free."""
    import gc

    if any("tiny_sweep" in getattr(item, "fixturenames", ()) for item in session.items):
        TinySweepRun.start()
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config) -> None:
    TinySweepRun.discard()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """In-process training on one thread. The tests' models are tiny, and on a small shared
    machine torch's thread pool costs more than it gives: once a test has switched torch's
    thread count (the hallucination recipe and the judge run on one thread, then restore it),
    later fits on two threads ran up to 30x slower. (Runs of the entry point get `threads=1`
    from `FAST`.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_torch_threads():
    """Two torch threads during the test (one again after it), for a test that checks code
    leaves torch's thread count as it found it: from the session's one thread, code that
    switches to one thread and forgets to switch back would go unnoticed."""
    import torch

    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def figures_not_rendered(monkeypatch):
    """For a test of a report's text and tables only: its figures are built as usual but not
    drawn (rendering them is most of a report's time); each PNG file, and its TensorBoard
    image, is one white pixel. Tests that look at the figures don't use this."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from bnstudy.report import write

    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1), "white").save(buffer, format="PNG")
    monkeypatch.setattr(write, "figure_png", lambda fig: plt.close(fig) or buffer.getvalue())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_dir holding tiny MNIST and CIFAR-10 in torchvision's layouts."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real MNIST and CIFAR-10 files (subsets will do) from the folder the project reads data
    from, `$BNSTUDY_DATA_DIR`: skipped where it is not set, a failure in CI (`CI=true`)."""
    root = os.environ.get("BNSTUDY_DATA_DIR", "")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        return Path(root).resolve()
    message = (f"no real data: BNSTUDY_DATA_DIR={root!r} must name a folder holding MNIST/raw "
               "and cifar-10-batches-py in torchvision's layout")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class FinishedSweep(NamedTuple):
    dir: Path
    records: dict[str, dict]  # each job's metrics.json, by job directory name, in job order
    console: str  # what the terminal showed: stderr and stdout as one stream


# The study's grid, one seed: 2 datasets x 2 norms x 2 optimizers.
TINY_SWEEP = ("dataset=mnist,cifar10", "norm=bn,none", "optim=sgd,adam", "seed=0")


class TinySweepRun:
    """The `tiny_sweep`'s process: started once per session, in the background as soon as
    collection shows a test needs it (a fresh interpreter of its own, so it runs beside the
    tests before that one), in a temporary folder removed when the session ends."""

    proc: subprocess.Popen | None = None
    root: Path | None = None

    @classmethod
    def start(cls) -> None:
        if cls.proc is not None:
            return
        import tempfile

        cls.root = root = Path(tempfile.mkdtemp(prefix="bnstudy-tiny-sweep-"))
        write_mnist(root / "data")  # as the `tiny_data` fixture's
        write_cifar10(root / "data")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        with open(root / "console.txt", "w") as console:
            cls.proc = subprocess.Popen(
                [sys.executable, "-m", "bnstudy.train", "-m", *TINY_SWEEP, *FAST,
                 f"paths.data_dir={root / 'data'}", "trainer.max_epochs=2",
                 "callbacks.weight_grid.every_n_epochs=1",
                 "callbacks.hallucinations.every_n_epochs=0",
                 "callbacks.hallucinations.steps=5", f"hydra.sweep.dir={root / 'sweep'}"],
                cwd=REPO, env=env, stdout=console, stderr=subprocess.STDOUT)

    @classmethod
    def finished(cls, timeout: float = 900) -> FinishedSweep:
        cls.start()
        try:
            cls.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            raise
        console = (cls.root / "console.txt").read_text()
        assert cls.proc.returncode == 0, console[-4000:]
        out = cls.root / "sweep"
        records = {path.parent.name: read_record(path.parent)  # jobs 0-7: in order by name
                   for path in sorted(out.glob("*/metrics.json"))}
        assert len(records) == 8 and all(r["status"] == "ok" for r in records.values()), records
        return FinishedSweep(out, records, console)

    @classmethod
    def discard(cls) -> None:
        import shutil

        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait()
        if cls.root is not None:
            shutil.rmtree(cls.root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_sweep() -> FinishedSweep:
    """One finished multirun of the study's 8-job grid (`TINY_SWEEP`) on tiny data, 2 epochs,
    through the entry point as a user runs it: a fresh `python -m bnstudy.train -m` (no
    PYTHONWARNINGS, so its console is what a user sees), with the default callbacks
    (checkpoints, TensorBoard; weight grids every epoch, hallucinations of 5 steps only when
    training ends). Built once per session (`TinySweepRun`) and shared by every test that
    only reads a sweep's outputs: don't change it; copy it first (`shutil.copytree`)."""
    return TinySweepRun.finished()
