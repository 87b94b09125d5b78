"""The entry point end to end: one real-data run and the 8-job sweep on tiny data."""

import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import FAST, run_train

CURVES = {"train/loss", "train/acc", "val/loss", "val/acc"}


def scalar_tags(job_dir: Path) -> set[str]:
    acc = EventAccumulator(str(job_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_one_run_on_real_mnist_learns(shared_data, tmp_path):
    proc = run_train(
        *FAST, f"paths.data_dir={shared_data}", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}"
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


def test_sweep_of_eight_jobs(tiny_data, tmp_path):
    proc = run_train(
        "-m",
        "dataset=mnist,cifar10",
        "norm=bn,none",
        "optim=sgd,adam",
        *FAST,
        f"paths.data_dir={tiny_data}",
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if (p / ".hydra").is_dir())
    names = {job.name.split("_", 1)[1] for job in jobs}
    assert names == {
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
