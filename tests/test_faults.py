"""Bad input, faults and interruptions, each through the real entry point."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST, run_train, write_mnist

from bnstudy.callbacks import DivergenceGuard
from bnstudy.records import read_record, write_json_atomic


def record(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.mark.parametrize(
    "override,group,options",
    [
        ("dataset=imagenet", "dataset", ["cifar10", "mnist"]),
        ("norm=group", "norm", ["bn", "none"]),
        ("optim=rmsprop", "optim", ["adam", "sgd"]),
    ],
)
def test_unknown_option_names_the_group_and_its_options(override, group, options, tmp_path):
    proc = run_train(override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert f"Could not find '{group}/" in proc.stderr
    assert f"Available options in '{group}'" in proc.stderr
    assert all(option in proc.stderr for option in options)


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "dataset.batch_size=0",
            "dataset.batch_size=0 is out of range; it must be an integer >= 1",
        ),
        ("dataset.lr=-0.1", "dataset.lr=-0.1 is out of range; it must be a number > 0"),
        ("optim.optimizer.lr=0", "optim.optimizer.lr=0 is out of range; it must be a number > 0"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1 is out of range"),
        ("model.net.hidden_dim=0", "model.net.hidden_dim=0 is out of range"),
        (
            "dataset.train_size=100000",
            "ask for 100000 training and 60 validation images, but the training files hold 600",
        ),
    ],
)
def test_invalid_value_stops_before_training(override, message, tiny_data, tmp_path):
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert record(tmp_path)["status"] == "failed" and message in record(tmp_path)["error"]
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_with_download_disabled(tmp_path):
    proc = run_train(
        *FAST,
        f"paths.data_dir={tmp_path / 'nowhere'}",
        "dataset.datamodule.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert "files not found" in proc.stderr and "nowhere/MNIST/raw/train-images-idx3-ubyte" in (
        proc.stderr
    )
    assert "download is disabled" in proc.stderr and "paths.data_dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_truncated_data_file_is_named(tmp_path):
    write_mnist(tmp_path / "data", n_train=50, n_test=20)
    labels = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])
    proc = run_train(
        *FAST,
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert "t10k-labels-idx1-ubyte" in proc.stderr and "corrupt or truncated" in proc.stderr


def test_divergence_stops_early_and_exits_zero(tiny_data, tmp_path):
    proc = run_train(
        *FAST,
        f"paths.data_dir={tiny_data}",
        "norm=none",
        "dataset.lr=1e12",
        "trainer.max_epochs=5",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = record(tmp_path)
    assert rec["status"] == "diverged"
    assert rec["diverged_at"]["epoch"] == 0 and rec["diverged_at"]["step"] >= 1
    assert rec["test"] is None and rec["epochs_trained"] <= 1


def test_divergence_guard_stops_at_the_first_bad_step():
    guard = DivergenceGuard()
    trainer = SimpleNamespace(current_epoch=2, global_step=40, should_stop=False)
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 3)
    assert guard.diverged_at is None and not trainer.should_stop
    trainer.global_step = 41
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 4)
    assert guard.diverged_at == {"epoch": 2, "step": 41, "loss": "nan"} and trainer.should_stop


def test_one_failing_job_does_not_stop_the_sweep(tiny_data, tmp_path):
    proc = run_train(
        "-m",
        *FAST,
        f"paths.data_dir={tiny_data}",
        "dataset.batch_size=0,32",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 1
    failed, good = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert record(failed)["status"] == "failed" and "batch_size=0" in record(failed)["error"]
    assert record(good)["status"] == "ok" and record(good)["test"]["acc"] is not None
    assert "1 job(s)" in proc.stderr and failed.name in proc.stderr


def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    common = [*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=3", "seed=7"]
    straight = run_train(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-2000:]

    interrupted = run_train(
        *common,
        f"hydra.run.dir={tmp_path / 'b'}",
        "+callbacks.interrupt._target_=tests.faults.InterruptAtEpoch",
        "+callbacks.interrupt.epoch=2",
    )
    assert interrupted.returncode != 0
    assert record(tmp_path / "b")["status"] == "interrupted"
    before = record(tmp_path / "b")["history"]
    assert len(before) == 2 and (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()

    resumed = run_train(*common, f"hydra.run.dir={tmp_path / 'b'}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = record(tmp_path / "a"), record(tmp_path / "b")
    assert b["status"] == "ok"
    assert b["history"][:2] == before  # epochs 0 and 1 come from the checkpoint, not redone
    strip = ("time_s",)
    assert [{k: v for k, v in row.items() if k not in strip} for row in a["history"]] == [
        {k: v for k, v in row.items() if k not in strip} for row in b["history"]
    ]
    assert a["test"] == b["test"]

    again = run_train(*common, f"hydra.run.dir={tmp_path / 'b'}", "resume=true")
    assert again.returncode == 0 and "already finished" in again.stderr
    assert record(tmp_path / "b") == b


def test_same_seed_gives_identical_metrics(tiny_data, tmp_path):
    common = [*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2", "dataset=cifar10"]
    runs = []
    for name in ("x", "y"):
        assert run_train(*common, f"hydra.run.dir={tmp_path / name}").returncode == 0
        rec = record(tmp_path / name)
        runs.append(
            ([{k: v for k, v in r.items() if k != "time_s"} for r in rec["history"]], rec["test"])
        )
    assert runs[0] == runs[1]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object()})  # not JSON-serialisable, fails mid-write
    assert read_record(path) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_json_atomic(path, {"loss": float("nan")})
    assert read_record(path) == {"loss": None}


def test_interrupted_sweep_resumes_skipping_finished_jobs(tiny_data, tmp_path):
    common = ["-m", *FAST, f"paths.data_dir={tiny_data}", "norm=bn,none", "trainer.max_epochs=2",
              f"hydra.sweep.dir={tmp_path}"]
    # Ctrl-C as job 0 starts its second epoch stops the whole sweep: job 1 never starts.
    interrupted = run_train(*common, "+callbacks.interrupt._target_=tests.faults.InterruptAtEpoch",
                            "+callbacks.interrupt.epoch=1")
    assert interrupted.returncode != 0
    (first,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert first.name == "0_mnist-bn-sgd-seed0" and record(first)["status"] == "interrupted"
    epoch0 = record(first)["history"]
    assert len(epoch0) == 1

    resumed = run_train(*common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert record(first)["status"] == record(second)["status"] == "ok"
    assert record(first)["history"][:1] == epoch0  # continued from the checkpoint, not redone
    assert [row["epoch"] for row in record(second)["history"]] == [0, 1]
    done = [record(first), record(second)]

    again = run_train(*common, "resume=true")
    assert again.returncode == 0 and again.stderr.count("already finished") == 2
    assert [record(first), record(second)] == done
