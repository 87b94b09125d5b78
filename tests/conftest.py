"""Shared fixtures (helpers they use live in `helpers.py`)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import FAST, REPO, TINY_SETTINGS, TINY_SWEEP, read_record, write_cifar10, write_mnist

# `tests.faults.*`, the fault tests' Hydra targets, from any runner: mutmut's in-process pytest
# has no cwd on the path, and its PYTHONPATH folder (mutants/) may not have existed at start-up
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
importlib.invalidate_caches()


def pytest_collection_finish(session) -> None:
    """Starts the `tiny_sweep` in the background if a test reads it (overlapping the tests
    before), and keeps the imported libraries out of Python's garbage collections (~0.2 s each)."""
    import gc

    if any("tiny_sweep" in getattr(item, "fixturenames", ()) for item in session.items):
        TinySweepRun.start()
    gc.collect()
    gc.freeze()


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):  # the run's first process: not a pytest-xdist worker
        TinySweepRun.make_root()


def pytest_unconfigure(config) -> None:
    if not hasattr(config, "workerinput"):
        TinySweepRun.discard()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """In-process training on one thread: for tiny models torch's thread pool costs more than it
    gives (fits after a thread switch ran up to 30x slower on two threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_torch_threads():
    """Two torch threads during the test: code that switches to one thread and forgets to
    switch back would go unnoticed from the session's one thread."""
    import torch

    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def figures_not_rendered(monkeypatch):
    """A report's figures built but not rendered (most of its time): each PNG one white pixel."""
    import io

    from PIL import Image

    from bnstudy.report import write

    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1), "white").save(buffer, format="PNG")
    monkeypatch.setattr(write, "figure_png", lambda fig: buffer.getvalue())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_dir holding tiny MNIST and CIFAR-10 in torchvision's layouts."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real MNIST and CIFAR-10 files (subsets will do) from `$BNSTUDY_DATA_DIR`: skipped where
    it is not set, a failure in CI (`CI=true`)."""
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



class TinySweepRun:
    """The `tiny_sweep`'s process (a fresh interpreter), started once per test run by the first
    process that needs it (with `pytest -n`, one of the workers) in a temporary folder that the
    run's first process (the controller) made and removes when the run ends."""

    ROOT = "BNSTUDY_TINY_SWEEP_ROOT"  # the folder, passed on to pytest-xdist's workers

    @classmethod
    def make_root(cls) -> None:
        import tempfile

        os.environ[cls.ROOT] = tempfile.mkdtemp(prefix="bnstudy-tiny-sweep-")

    @classmethod
    def start(cls) -> None:
        root = Path(os.environ[cls.ROOT])
        try:
            (root / "data").mkdir()  # the first to make it starts the sweep
        except FileExistsError:
            return
        write_mnist(root / "data")  # as the `tiny_data` fixture's
        write_cifar10(root / "data")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        train = [sys.executable, "-m", "bnstudy.train", "-m", *TINY_SWEEP, *FAST,
                 f"paths.data_dir={root / 'data'}", *TINY_SETTINGS,
                 f"hydra.sweep.dir={root / 'sweep'}"]
        script = 'out=$1; shift; "$@" > "$out/console.txt" 2>&1; echo $? > "$out/rc.part"; ' \
                 'mv "$out/rc.part" "$out/rc"'  # its exit code, for every process that waits
        proc = subprocess.Popen(["sh", "-c", script, "sh", str(root), *train], cwd=REPO, env=env,
                                start_new_session=True)
        (root / "pid").write_text(str(proc.pid))

    @classmethod
    def finished(cls, timeout: float = 900) -> FinishedSweep:
        import time

        cls.start()
        root = Path(os.environ[cls.ROOT])
        deadline = time.monotonic() + timeout
        while not (root / "rc").exists():
            assert time.monotonic() < deadline, f"the tiny sweep ran past {timeout} s"
            time.sleep(0.05)
        console = (root / "console.txt").read_text()
        assert (root / "rc").read_text().strip() == "0", console[-4000:]
        out = root / "sweep"
        records = {path.parent.name: read_record(path.parent)  # jobs 0-7: in order by name
                   for path in sorted(out.glob("*/metrics.json"))}
        assert len(records) == 8 and all(r["status"] == "ok" for r in records.values()), records
        return FinishedSweep(out, records, console)

    @classmethod
    def discard(cls) -> None:
        """Stops the sweep if it still runs and removes the folder (the run's first process)."""
        import shutil
        import signal

        root = Path(os.environ.pop(cls.ROOT))
        if (root / "pid").exists() and not (root / "rc").exists():
            try:
                os.killpg(int((root / "pid").read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_sweep() -> FinishedSweep:
    """The study's 8-job grid (`TINY_SWEEP`) on tiny data, 2 epochs, run as a user runs it (a
    fresh `python -m bnstudy.train -m`, the default callbacks: weight grids every epoch,
    hallucinations of 5 steps at the end). Shared: don't change it; copy it first."""
    return TinySweepRun.finished()


@pytest.fixture
def sweep(tiny_sweep, tmp_path) -> Path:
    """A copy of the session's tiny sweep (8 runs of 2 epochs, 64 hidden units, hallucinations
    of 5 steps), to change."""
    import shutil

    return Path(shutil.copytree(tiny_sweep.dir, tmp_path / "sweep"))
