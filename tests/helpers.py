"""Test helpers: tiny datasets in torchvision's exact on-disk formats, running the entry point
and `train(cfg)` in this process, building the project's pieces, hand-made sweeps."""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def class_images(
    labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """uint8 images whose class is visible: noise plus a bright band at a class-specific row."""
    images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.uint8)
    height = shape[-2]
    band = max(1, height // 10)
    for i, label in enumerate(labels):
        row = int(label) * band
        images[i, ..., row : row + band, :] = 255
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format): magic with dtype code 0x08 (uint8), big-endian dims, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(
    root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0, folder: str = "MNIST"
) -> Path:
    """`root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` as torchvision reads."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", class_images(labels, (28, 28), rng))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_cifar10(root: Path, per_batch: int = 100, n_test: int = 200, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with five data batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, size=n)
        entry = {"batch_label": name, "labels": labels.tolist(),
                 "data": class_images(labels, (3, 32, 32), rng).reshape(n, -1),
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = ("airplane automobile bird cat deer dog frog horse ship truck").split()
    meta = {"label_names": names, "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


# Overrides that make a run fast on tiny data.
FAST = [
    "trainer.enable_progress_bar=false",
    "threads=1",  # tiny models: torch's thread pool costs more than it gives on a small machine
]
# The session's tiny sweep (`conftest.tiny_sweep`) beyond its grid and data: 2 epochs, weight
# grids every epoch, hallucinations of 5 steps at the end only, 64 hidden units (the grid's 64;
# 256 made each test's copy 121 MB of checkpoints, 0.4 s a copy on a busy disk).
TINY_SETTINGS = ("trainer.max_epochs=2", "callbacks.weight_grid.every_n_epochs=1",
                 "callbacks.hallucinations.every_n_epochs=0", "callbacks.hallucinations.steps=5",
                 "model.net.hidden_dim=64")
TINY_SWEEP = ("dataset=mnist,cifar10", "norm=bn,none", "optim=sgd,adam", "seed=0")  # 2 x 2 x 2


def run_module(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Runs `python -m <module> <args>` in this process as a fresh interpreter would (its own
    working directory, argv, console and exit status), without paying the imports again."""
    import contextlib
    import io
    import runpy
    import signal

    import torch

    from bnstudy.console import StudyLines

    out, err, code = io.StringIO(), io.StringIO(), 0
    kept = (sys.argv, os.getcwd(), torch.get_num_threads(), signal.getsignal(signal.SIGINT),
            list(logging.root.handlers))
    StudyLines.shown.clear()
    try:
        os.chdir(cwd)
        sys.argv = [module, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1 if exit_.code else 0
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
    finally:
        sys.argv = kept[0]
        os.chdir(kept[1])
        torch.set_num_threads(kept[2])
        signal.signal(signal.SIGINT, kept[3])  # Lightning ignores Ctrl-C after an interrupt
        for handler in set(logging.root.handlers) - set(kept[4]):  # Hydra's train.log: its
            logging.root.removeHandler(handler)  # folder goes when the test passes, and a
            handler.close()  # later test's line would open it again there (FileNotFoundError)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def run_train(*overrides: str, cwd: Path = REPO, seeds: bool = False
              ) -> subprocess.CompletedProcess:
    """`python -m bnstudy.train` in this process (`run_module`); a sweep (`-m`) of one seed
    unless the overrides name seeds or an experiment, or `seeds` asks for the default (3)."""
    if "-m" in overrides and not seeds and \
            not any(o.startswith(("seed=", "experiment=")) for o in overrides):
        overrides = (*overrides, "seed=0")
    return run_module("bnstudy.train", *overrides, cwd=cwd)


def start_train(*overrides: str, cwd: Path = REPO) -> subprocess.Popen:
    """`python -m bnstudy.train` started in a fresh interpreter (launchers, Python's warnings,
    exits), output piped, without PYTHONWARNINGS (as a user runs it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.Popen([sys.executable, "-m", "bnstudy.train", *overrides], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fresh_train(*overrides: str, cwd: Path = REPO, timeout: int = 600
                ) -> subprocess.CompletedProcess:
    """`start_train`, run to its end."""
    proc = start_train(*overrides, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Waits until `path` exists, failing with the process's output if it ended first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended (status {proc.returncode}) before {path} appeared:\n"
                                 + proc.stderr.read()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def run_sweep(sweep_dir: Path, data_dir: Path, *overrides: str, fresh: bool = False
              ) -> subprocess.CompletedProcess:
    """A quiet multirun (`-m`) of the entry point into `sweep_dir`, reading `data_dir`; `fresh`:
    one seed unless `overrides` sweep it, in a fresh interpreter (a launcher starting processes
    of its own)."""
    args = ("-m", *unless_typed((*FAST, *(["seed=0"] if fresh else [])), overrides),
            f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep_dir}", *overrides)
    return fresh_train(*args) if fresh else run_train(*args)


def unless_typed(defaults, overrides) -> tuple[str, ...]:
    """The `defaults` whose keys `overrides` leave alone: a test's own setting replaces one (the
    command line refuses a setting given twice)."""
    from bnstudy.config import overridden_keys

    typed = set(overridden_keys(overrides))
    return tuple(d for d in defaults if overridden_keys([d])[0] not in typed)


def train_run(data_dir: Path, out: Path, *overrides: str):
    """`bnstudy.run.train` of the composed config in this process: one epoch on tiny data into
    `out`, no hallucinations; its RunRecord."""
    from bnstudy.run import train

    return train(compose_config(f"paths.data_dir={data_dir}", f"paths.output_dir={out}",
                                "trainer.max_epochs=1", "~callbacks.hallucinations", *FAST,
                                *overrides))


def fail_fsync(monkeypatch, error: BaseException) -> None:
    """Makes the next os.fsync cut the file in half and raise `error`: a write that fails, or
    a kill, after the temporary file got part of its bytes."""
    def fsync(fd: int) -> None:
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        raise error

    monkeypatch.setattr(os, "fsync", fsync)


# -- building and training the project's pieces in-process ---------------------------------
def compose_config(*overrides: str):
    """The project's Hydra config composed with `overrides`, as the entry point would."""
    from bnstudy.overrides import compose

    return compose(overrides)


def make_classifier(norm: str = "bn", input_shape=(1, 28, 28), hidden_dim: int = 32,
                    depth: int = 1, lr: float = 0.1, cnn: bool = False, channels=(4, 8),
                    optimizer=None):
    """A `Classifier` around a small MLP (or CNN), with SGD at `lr` unless `optimizer` given."""
    import functools

    import torch

    from bnstudy.model import Classifier
    from bnstudy.nets import CNN, MLP

    net = (CNN(input_shape, 10, channels=channels, hidden_dim=hidden_dim, depth=depth, norm=norm)
           if cnn else MLP(input_shape, 10, hidden_dim=hidden_dim, depth=depth, norm=norm))
    return Classifier(net, 10, optimizer or functools.partial(torch.optim.SGD, lr=lr))


def tiny_fit(data_dir: Path, out: Path | None = None, model=None, callbacks=(), seed: int = 0,
             batch_size: int = 50, ckpt_path=None, **trainer_args):
    """Seeds, then fits `model` (default: `make_classifier()`) on tiny MNIST (540 training
    images in batches of 50: 11 steps an epoch) with a quiet CPU Trainer, logging to
    TensorBoard in `out` if given; returns (datamodule, model, trainer)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from bnstudy.data import MNISTDataModule

    L.seed_everything(seed, verbose=False)
    data = MNISTDataModule(data_dir, batch_size=batch_size, download=False, seed=seed)
    model = model or make_classifier()
    defaults = dict(accelerator="cpu", devices=1, enable_checkpointing=False, max_epochs=1,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, use_distributed_sampler=False,
                    logger=TensorBoardLogger(out, name="", version="") if out else False)
    trainer = L.Trainer(**(defaults | trainer_args), callbacks=list(callbacks))
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    return data, model, trainer


def events(log_dir: Path):
    """What TensorBoard reads from `log_dir`, every scalar kept, its event files in the order they
    were written: TensorBoard sorts their names as text, so a writer numbered 10 (`...pid.10`)
    opened in the same second as one numbered 9 comes first, and the steps it logged would
    discard the other's as orphaned, depending only on how many writers the process opened."""
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(log_dir).glob("events.out.tfevents.*"),
                   key=lambda f: (int(f.name.split(".")[3]), int(f.name.rsplit(".", 1)[1])))
    with tempfile.TemporaryDirectory() as ordered:
        for i, file in enumerate(files):
            os.symlink(file.resolve(), f"{ordered}/events.out.tfevents.{i:06d}")
        return EventAccumulator(ordered, size_guidance={"scalars": 0}).Reload()


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events(log_dir).Scalars(tag)]


def csv_rows(path: Path) -> list[dict]:
    """A CSV file (a CSV logger's `metrics.csv`, a report's tables), a dict per row."""
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def decoded(png: bytes | Path) -> np.ndarray:
    """A PNG's pixels, (H, W, C) uint8, from its bytes or its file."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as image:
        return np.asarray(image)


def assert_images_are_the_png_files(out: Path) -> set[str]:
    """Every image TensorBoard reads from report folder `out` is exactly one figure's file:
    tag `<kind>/<rest>` is `<kind>_<rest>.png`, each once, pixel for pixel (channels too);
    every figure file has its image. Returns the tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = EventAccumulator(str(out), size_guidance={"images": 0}).Reload()
    files = {tag: out / f"{tag.replace('/', '_', 1)}.png" for tag in found.Tags()["images"]}
    assert {f.name for f in files.values()} == {p.name for p in out.glob("*.png")}
    for tag, file in files.items():
        (event,) = found.Images(tag)
        logged, saved = decoded(event.encoded_image_string), decoded(file)
        assert (event.height, event.width) == saved.shape[:2], tag
        assert logged.shape == saved.shape and np.array_equal(logged, saved), tag
    return set(files)


def scalar_tags(log_dir: Path) -> set[str]:
    return set(events(log_dir).Tags()["scalars"])


def read_record(job: Path) -> dict:
    """A job's `metrics.json`."""
    return json.loads((job / "metrics.json").read_text())


# -- hand-made sweeps for the report -------------------------------------------------------
def write_job(sweep_dir: Path, val_acc: list[float], status: str = "ok", error: str | None = None,
              **hparams) -> Path:
    """A job directory as `bnstudy.train` leaves it (numbered after those in `sweep_dir`), a
    history row per `val_acc`: train acc (1 + val acc) / 2, losses twice the error (+0.1 for
    val), a diverged run's last null. `hparams` override mnist, mlp, bn, sgd, seed 0, 3 epochs."""
    hp = {"dataset": "mnist", "model": "mlp", "depth": 1, "norm": "bn", "optim": "sgd",
          "seed": 0, "lr": 0.01, "batch_size": 64, "hidden_dim": 256, "max_epochs": 3,
          **hparams}
    history = [{"epoch": e, "step": 10 * (e + 1), "train/loss": 1 - acc, "train/acc": (1 + acc) / 2,
                "val/loss": 2 * (1 - acc) + 0.1, "val/acc": acc, "time_s": 1.5 * (e + 1)}
               for e, acc in enumerate(val_acc)]
    if status == "diverged":
        history[-1].update({"train/loss": None, "val/loss": None})
    number = sum(p.is_dir() for p in sweep_dir.iterdir()) if sweep_dir.is_dir() else 0
    job = sweep_dir / f"{number}_{hp['dataset']}-{hp['norm']}-{hp['optim']}-seed{hp['seed']}"
    job.mkdir(parents=True)
    test = {"loss": 1 - val_acc[-1], "acc": val_acc[-1] - 0.01} if status == "ok" else None
    record = {"status": status, "hparams": hp, "history": history, "test": test,
              "wall_time_s": 10.0 + hp["seed"], "error": error}
    (job / "metrics.json").write_text(json.dumps(record))
    return job


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories in name order (not the `+mean` TensorBoard view)."""
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("+"))


# --- pictures helpers ---
PAD = 2  # make_grid's default padding


def grid_size(n: int, nrow: int, shape) -> tuple[int, int]:
    """(height, width) of make_grid's layout of n tiles of `shape`, `nrow` per row."""
    cols, rows = min(nrow, n), -(-n // min(nrow, n))
    return rows * (shape[1] + PAD) + PAD, cols * (shape[2] + PAD) + PAD


def grid_tile(grid, k: int, nrow: int, shape):
    """The k-th tile of a make_grid image (row-major)."""
    row, col = divmod(k, nrow)
    top, left = PAD + row * (shape[1] + PAD), PAD + col * (shape[2] + PAD)
    return grid[:, top : top + shape[1], left : left + shape[2]]


LAUNCHER_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                "SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_JOB_ID")
ARRAY_TASK = {"SLURM_JOB_ID": "1001", "SLURM_ARRAY_JOB_ID": "1000", "SLURM_ARRAY_TASK_ID": "3"}


def launcher_env(monkeypatch, **values) -> None:
    """No launcher's environment but `values` (e.g. `**ARRAY_TASK`: SLURM's array task 1000_3,
    job 1001; a None value stays unset)."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        if value is not None:
            monkeypatch.setenv(name, str(value))


def fake_commands(monkeypatch, bin_dir: Path, only: bool = False, **scripts: str) -> None:
    """Shell commands `name=script` (e.g. `srun="exit 1"`) in `bin_dir`, first on the PATH (with
    `only`, the PATH itself: no other command is found)."""
    bin_dir.mkdir(exist_ok=True)
    for name, script in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    path = str(bin_dir) if only else f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path)


def checkpoint_hits(job: Path, data_dir: Path) -> np.ndarray:
    """Whether the job's `last.ckpt` classifies each tiny MNIST test image correctly, in order."""
    import torch

    from bnstudy.data import MNISTDataModule
    from bnstudy.model import Classifier

    model = Classifier.load_from_checkpoint(job / "checkpoints" / "last.ckpt")
    data = MNISTDataModule(data_dir, download=False)
    data.setup("test")
    with torch.no_grad():
        return (model.eval()(data.test_set.x).argmax(-1) == data.test_set.y).numpy()


def read_run(run: Path) -> tuple[dict, list]:
    """What TensorBoard's Python loader (the server's `--load_fast=false`) reads of a run (a
    `+mean` one, a fit's): its scalars by tag as (step, value) and its Custom Scalars layout's
    categories."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(run), tensor_size_guidance={"": 0}).Reload()
    tags = events.Tags()["tensors"]
    scalars = {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
               for tag in tags if tag != metadata.CONFIG_SUMMARY_TAG}
    (config,) = events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    return scalars, layout_pb2.Layout.FromString(config.tensor_proto.string_val[0]).category


def help_words(main, abbreviated: list[str]) -> str:
    """A command's `--help` (`main(argv)`, exit 0) with its whitespace made single spaces,
    once `abbreviated` (an option shortened) was refused (exit 2)."""
    import contextlib
    import io

    for argv, code in ((abbreviated, 2), (["--help"], 0)):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                main(argv)
        except SystemExit as ended:
            assert ended.code == code, (argv, ended.code)
        else:
            raise AssertionError(f"{argv} did not exit")
    return " ".join(out.getvalue().split())
