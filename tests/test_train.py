"""The entry point end to end: one real-data run and the 8-job sweep on tiny data."""

import json
from pathlib import Path

import pytest
from helpers import FAST, run_train, scalar_tags

CURVES = {"train/loss", "train/acc", "val/loss", "val/acc"}


@pytest.mark.slow
def test_one_run_on_real_mnist_learns(shared_data, tmp_path):
    proc = run_train(
        *FAST, f"paths.data_dir={shared_data}", "trainer.max_epochs=2", "optim=adam",
        f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok"
    assert [row["epoch"] for row in record["history"]] == [0, 1]
    assert record["history"][-1]["val/acc"] > 0.85  # chance is 0.1
    assert record["test"]["acc"] > 0.85 and record["wall_time_s"] > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    tags = scalar_tags(tmp_path)
    assert CURVES | {"test/loss", "test/acc", "train/loss_step"} <= tags


@pytest.mark.slow
def test_sweep_of_eight_jobs(tiny_sweep):
    """conftest's `tiny_sweep`: dataset=mnist,cifar10 norm=bn,none optim=sgd,adam, 2 epochs."""
    jobs = sorted(p for p in tiny_sweep.dir.iterdir() if (p / ".hydra").is_dir())
    names = {job.name.split("_", 1)[1] for job in jobs}
    assert names == {  # what the sweep varies; max_epochs=2, the same for all, is not named
        f"{d}-{n}-{o}-seed0"
        for d in ("mnist", "cifar10")
        for n in ("bn", "none")
        for o in ("sgd", "adam")
    }
    for job in jobs:
        record = json.loads((job / "metrics.json").read_text())
        assert record["status"] == "ok", (job, record)
        assert len(record["history"]) == 2
        assert CURVES <= scalar_tags(job)
        assert record["hparams"]["norm"] in job.name


def still_run(tiny_data, out: Path, *overrides: str):
    """A one-step run whose weights stay where they started (lr 1e-12), in-process."""
    from helpers import compose_config

    from bnstudy.train import train

    cfg = compose_config(f"paths.data_dir={tiny_data}", f"paths.output_dir={out}",
                         "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                         "dataset.lr=1e-12", "~callbacks.hallucinations", *FAST, *overrides)
    return train(cfg)


@pytest.mark.parametrize("overrides, refresh_rate", [
    (["trainer.enable_progress_bar=true"], "default"),
    (["trainer.enable_progress_bar=true", "callbacks.progress_bar.refresh_rate=7"], 7),
    (["trainer.enable_progress_bar=false"], None),
])
def test_the_progress_bar_is_the_configured_one_when_shown(tiny_data, tmp_path, overrides,
                                                           refresh_rate):
    """On a terminal the bar redraws every `refresh_rate` steps (not Lightning's every step);
    with the bar off its callback is left out, which Lightning would otherwise refuse."""
    from helpers import compose_config

    from bnstudy.train import build

    cfg = compose_config(f"paths.data_dir={tiny_data}", f"paths.output_dir={tmp_path}",
                         *overrides)
    bar = build(cfg)[2].progress_bar_callback
    if refresh_rate is None:
        assert bar is None
    elif refresh_rate == "default":
        assert bar.refresh_rate > 1
    else:
        assert bar.refresh_rate == refresh_rate


def initial_weights(out: Path):
    import torch

    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return state["net.fc1.weight"]


@pytest.mark.slow
def test_the_seed_sets_the_initial_weights(tiny_data, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        still_run(tiny_data, tmp_path / name, f"seed={seed}")
    a, b, c = (initial_weights(tmp_path / name) for name in "abc")
    assert a.allclose(b) and not a.allclose(c)  # (lr 1e-12 moves them by ~1e-13)


def test_the_history_holds_each_splits_own_values(tiny_data, tmp_path):
    from helpers import read_record, scalars

    still_run(tiny_data, tmp_path, "trainer.limit_train_batches=null", "dataset.lr=0.1")
    (row,) = read_record(tmp_path)["history"]
    for key in CURVES:
        assert [v for _, v in scalars(tmp_path, key)] == [pytest.approx(row[key])], key
    assert row["train/acc"] != row["val/acc"] and row["train/loss"] != row["val/loss"]


@pytest.mark.parametrize("status", ["ok", "diverged"])
def test_resume_leaves_finished_runs_alone(tiny_data, tmp_path, status):
    from bnstudy.records import update_record

    before = update_record(tmp_path / "metrics.json", status=status, history=[])
    assert still_run(tiny_data, tmp_path, "resume=true") == before
    assert not (tmp_path / "checkpoints").exists()


def test_a_resumed_success_drops_the_old_error(tiny_data, tmp_path):
    from bnstudy.records import update_record

    update_record(tmp_path / "metrics.json", status="failed", error="boom", traceback="...")
    record = still_run(tiny_data, tmp_path, "resume=true")
    assert record["status"] == "ok" and "error" not in record and "traceback" not in record


@pytest.mark.slow
def test_two_process_ddp_through_the_entry_point_writes_once(tiny_data, tmp_path):
    """Lightning's ddp restarts the script for rank 1 (gloo on CPU); rank 0 alone writes."""
    from helpers import read_record

    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                     "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                     "~callbacks.hallucinations", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_record(tmp_path)
    assert record["status"] == "ok" and [row["epoch"] for row in record["history"]] == [0, 1]
    assert record["history"][-1]["step"] == 2 * 5  # 540 images, 270 a process, batch 64
    assert record["test"]["acc"] is not None
    assert proc.stderr.count("mnist-bn-sgd-seed0") >= 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "images" / "weights_final.png").is_file()


@pytest.mark.slow
def test_the_readmes_main_command_ends_in_the_answer(tiny_data, tmp_path):
    """The README's first command, as written (3 seeds by default), on the tiny fixtures:
    its console ends with a verdict per dataset × optimizer, and so does its report."""
    from bnstudy.report.cli import main as report

    proc = run_train("-m", "dataset=mnist,cifar10", "norm=bn,none", "optim=sgd,adam", *FAST,
                     f"paths.data_dir={tiny_data}", "trainer.max_epochs=1",
                     "~callbacks.hallucinations", f"hydra.sweep.dir={tmp_path}", seeds=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert len(list(tmp_path.glob("*/metrics.json"))) == 24  # 8 pairs × 3 seeds
    assert "Is BatchNorm worth it?" in console
    for pair in ("MNIST, SGD", "MNIST, Adam", "CIFAR-10, SGD", "CIFAR-10, Adam"):
        line = next(x for x in console.splitlines() if x.strip().startswith(f"{pair} (3 vs 3"))
        assert any(w in line for w in ("BN wins", "BN loses", "no difference seen",
                                       "cannot tell yet", "no spread over the seeds"))
    assert report([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.index("## The answer") < text.index("## Claims")
    assert "Verdicts: **C1 " in text and "**C5 " in text


def test_the_console_shows_the_studys_lines_and_the_log_file_has_the_rest(tiny_data, tmp_path):
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=1",
                     f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for routine in ("GPU available", "TPU available", "`Trainer.fit` stopped"):
        assert routine not in console
        assert routine in (tmp_path / "train.log").read_text()  # kept, in the log file
    assert f"training 1 epochs into {tmp_path}" in console
    assert f"Files: {tmp_path} (" in console and ": ok, val acc " in console


def test_a_runs_hparams_keep_their_types_in_tensorboard(tiny_data, tmp_path):
    """The session a real run writes: numbers (seed, max_epochs, lr, batch size) as numbers,
    so TensorBoard's HParams table sorts and filters them by value; names as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=1", "seed=2",
                     "~callbacks.hallucinations", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    content = EventAccumulator(str(tmp_path)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    hparams = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]).hparams
    kinds = {k: v.WhichOneof("kind") for k, v in hparams.items()}
    assert {k: kinds[k] for k in ("seed", "max_epochs", "lr", "batch_size", "hidden_dim",
                                  "depth")} == dict.fromkeys(
        ("seed", "max_epochs", "lr", "batch_size", "hidden_dim", "depth"), "number_value")
    assert (hparams["seed"].number_value, hparams["max_epochs"].number_value) == (2, 1)
    assert kinds["dataset"] == kinds["norm"] == kinds["optim"] == "string_value"


def test_the_console_filter_passes_the_studys_lines_and_each_real_warning_once():
    import logging

    from bnstudy.console import StudyLines

    def shown(name: str, level: int, message: str) -> bool:
        return StudyLines().filter(logging.LogRecord(name, level, __file__, 1, message, (), None))

    StudyLines.shown.clear()
    assert shown("bnstudy", logging.INFO, "mnist-bn-sgd-seed0: training 1 epochs into x")
    assert not shown("lightning.pytorch.utilities.rank_zero", logging.INFO, "GPU available: …")
    subset = "cifar-10-batches-py: data_batch_1 do(es) not match the official CIFAR-10 checksums"
    assert shown("bnstudy.data", logging.WARNING, subset)
    assert not shown("bnstudy.data", logging.WARNING, subset)  # a sweep's next job: not again
    assert shown("py.warnings", logging.WARNING, "UserWarning: something real")
    for routine in ("Checkpoint directory /x/checkpoints exists and is not empty.",
                    "The number of training batches (4) is smaller than the logging interval"):
        assert not shown("py.warnings", logging.WARNING, f"…/model_checkpoint.py:1: {routine}")
    assert shown("bnstudy", logging.ERROR, "x failed: …") and \
        shown("bnstudy", logging.ERROR, "x failed: …")  # errors every time


@pytest.mark.slow
def test_a_resumed_runs_console_has_no_checkpoint_directory_notice(tiny_data, tmp_path):
    """Lightning warns that a resumed run's checkpoints/ exists: train.log keeps it (through
    Python's warnings, captured), the console does not show it."""
    import subprocess
    import sys

    from helpers import REPO, entry_point_env

    common = (*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
              "~callbacks.hallucinations", f"hydra.run.dir={tmp_path}")
    run_train(*common, "+callbacks.stop._target_=tests.faults.InterruptAtEpoch",
              "+callbacks.stop.epoch=1")
    env = {k: v for k, v in entry_point_env().items() if k != "PYTHONWARNINGS"}  # Python's own
    proc = subprocess.run([sys.executable, "-m", "bnstudy.train", *common, "resume=true"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notice = "exists and is not empty"
    assert notice not in proc.stdout + proc.stderr
    assert notice in (tmp_path / "train.log").read_text()
    assert f"Files: {tmp_path} (" in proc.stderr


def test_a_writer_threads_oserror_goes_to_the_log_not_the_console(capsys, caplog):
    """TensorBoard's event writer fails in its own thread on a full disk (and raises again in
    the run, which reports it): Python's thread traceback stays off the console."""
    import errno
    import logging
    import threading

    from bnstudy.train import _thread_exception

    def hook_args(error):
        return threading.ExceptHookArgs((type(error), error, None, threading.current_thread()))

    with caplog.at_level(logging.INFO, logger="py.threads"):
        _thread_exception(hook_args(OSError(errno.ENOSPC, "No space left on device")))
    assert capsys.readouterr().err == ""
    assert "No space left on device" in caplog.text
    _thread_exception(hook_args(ValueError("a bug")))  # any other error: Python's traceback
    assert "ValueError: a bug" in capsys.readouterr().err
