"""`python -m bnstudy.draw`: a finished sweep's final pictures drawn again from its checkpoints
with another recipe, no training; the earlier drawings kept, nothing else touched, and the
report reading the new ones."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, run_module

from bnstudy import draw
from bnstudy.pictures.drawing import FINAL_FILES


def digests(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path → sha256)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def untouched(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files that were there before and are now changed or gone, outside the final pictures
    (which draw replaces)."""
    replaced = {f"images/{name}" for name in FINAL_FILES}
    return [path for path, digest in before.items()
            if path not in replaced and after.get(path) != digest]


@pytest.fixture
def sweep(tiny_sweep, tmp_path) -> Path:
    """A copy of the session's tiny sweep (2 epochs, hallucinations of 5 steps)."""
    return Path(shutil.copytree(tiny_sweep.dir, tmp_path / "sweep"))


def final_hallucinations(job: Path, folder: str = "") -> dict:
    return torch.load(job / "images" / folder / "hallucinations_final.pt", weights_only=True)


def test_the_training_recipe_drawn_again_gives_the_training_pictures(sweep, capsys):
    # No setting given: the run's own recipe (the tiny sweep's 5 steps), so the drawing
    # functions must give what the callbacks gave when training ended, to the byte.
    job = next(sweep.glob("0_*"))
    assert draw.main([str(job)]) == 0
    kept = job / "images" / "steps=5"  # named after the earlier recipe: steps differ from 200
    assert sorted(p.name for p in kept.iterdir()) == sorted(FINAL_FILES)
    for name in ("weights_final.png", "weights_change_final.png", "hallucinations_final.png",
                 "hallucinations_final.npz"):
        assert (kept / name).read_bytes() == (job / "images" / name).read_bytes(), name
    old, new = final_hallucinations(job, "steps=5"), final_hallucinations(job)
    for key in ("images", "noise", "base", "real_means"):
        assert torch.equal(old[key], new[key]), key
    assert new["settings"] == old["settings"]
    old_w, new_w = (torch.load(p / "weights_final.pt", weights_only=True) for p in (kept, job /
                                                                                     "images"))
    assert torch.equal(old_w["initial"], new_w["initial"])  # from the checkpoint's callback state
    assert torch.equal(old_w["final"], new_w["final"])
    assert f"{job.name}: drawn (steps=5)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_drawn_with_another_recipe(sweep, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    before = {job: digests(job) for job in jobs}
    earlier = {job: final_hallucinations(job) for job in jobs}
    assert draw.main([str(sweep), "hallucinations.steps=12", "objective=logit",
                      "callbacks.weight_grid.num_units=16"]) == 0
    out = capsys.readouterr().out
    assert out.count(": drawn (") == 8 and "Drew 8 of 8 run(s)" in out

    for job in jobs:
        after = digests(job)
        # Checkpoints, records, config, epoch drawings and earlier events: byte for byte.
        assert untouched(before[job], after) == [], job.name
        new_files = set(after) - set(before[job])
        events = {p for p in new_files if p.startswith("events.out.tfevents.")}
        assert len(events) == 1, new_files  # one new TensorBoard events file
        name = "num_units=16,steps=12,objective=logit"
        assert new_files - events == {f"images/steps=5/{f}" for f in FINAL_FILES} | {
            f"images/{draw.RECIPE_FILE}"}
        recipe = json.loads((job / "images" / draw.RECIPE_FILE).read_text())
        assert recipe["name"] == name and recipe["hallucinations"]["steps"] == 12
        assert recipe["weight_grid"] == {"num_units": 16}
        new = final_hallucinations(job)
        assert new["settings"]["steps"] == 12 and new["settings"]["objective"] == "logit"
        assert not torch.equal(new["images"], earlier[job]["images"])
        with np.load(job / "images" / "hallucinations_final.npz") as arrays:
            assert np.allclose(arrays[new["classes"][0]], (new["images"][0] * torch.tensor(
                new["std"]).view(-1, 1, 1) + torch.tensor(new["mean"]).view(-1, 1, 1)).clamp(
                0, 1).permute(1, 2, 0).squeeze(-1).numpy())
        # TensorBoard: the new drawings after the training's, the same PNG bytes as the files.
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        tb = EventAccumulator(str(job), size_guidance={"images": 0}).Reload()
        for tag, file in (("hallucination/all", "hallucinations_final.png"),
                          ("weights/first_layer", "weights_final.png"),
                          ("weights/first_layer_change", "weights_change_final.png")):
            last = tb.Images(tag)[-1]
            assert last.step == checkpoint["global_step"] + 1 == recipe["step"]
            assert last.encoded_image_string == (job / "images" / file).read_bytes()
            assert len(tb.Images(tag)) >= 2  # the training's are still there
        side = 4 * ((28 if "mnist" in job.name else 32) + 2) + 2  # 16 units: 4 x 4 tiles
        assert (last.height, last.width) == (side, side)

    # Drawn again: the step moves on and the previous recipe is kept under its own name.
    job = jobs[0]
    assert draw.main([str(job), "steps=3"]) == 0
    assert (job / "images" / name / "hallucinations_final.pt").is_file()
    assert json.loads((job / "images" / draw.RECIPE_FILE).read_text())["step"] == \
        recipe_step(job) == checkpoint_step(job) + 2


def recipe_step(job: Path) -> int:
    return json.loads((job / "images" / draw.RECIPE_FILE).read_text())["step"]


def checkpoint_step(job: Path) -> int:
    return torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


@pytest.mark.slow
def test_the_report_reads_the_redrawn_pictures(sweep, figures_not_rendered):
    import csv

    from bnstudy.report.write import write_report

    assert draw.main([str(sweep), "steps=9", "--replace"]) == 0
    for job in (p.parent for p in sweep.glob("*/metrics.json")):
        assert [p.name for p in (job / "images").iterdir() if p.is_dir()] == []  # replaced
    write_report(sweep, {"mnist": 0.9, "cifar10": 0.4})
    rows = {row["job"]: row for row in csv.DictReader(open(sweep / "report" / "pictures.csv"))}
    assert len(rows) == 8
    for job, row in rows.items():
        saved = final_hallucinations(sweep / job)
        assert saved["settings"]["steps"] == 9
        own = saved["own_probabilities"].diagonal().mean().item()
        assert float(row["own_conf"]) == pytest.approx(own, abs=1e-6)
        assert float(row["seconds"]) == pytest.approx(saved["seconds"], abs=1e-6)


def few_jobs(sweep: Path, tmp_path: Path, n: int) -> Path:
    """A sweep of the first `n` jobs of `sweep` (a CIFAR-10 one among them)."""
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    small = tmp_path / "small"
    for job in [*jobs[:n - 1], jobs[-1]]:
        shutil.copytree(job, small / job.name)
    return small


def test_a_run_without_checkpoint_is_named_and_the_others_are_drawn(sweep, tmp_path, capsys):
    sweep = few_jobs(sweep, tmp_path, 3)
    broken = next(sweep.glob("0_*"))
    (broken / "checkpoints" / "last.ckpt").unlink()
    before = digests(broken)
    assert draw.main([str(sweep), "steps=2"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count(": drawn (steps=2)") == 2
    assert f"{broken.name}: no checkpoint" in captured.err
    assert "could not be drawn: " + broken.name in captured.out
    assert digests(broken) == before  # nothing written into it
    assert [p for p in (broken / "images").iterdir() if p.name.startswith(".")] == []


def test_unfinished_and_diverged_runs_are_skipped_with_a_line(sweep, tmp_path, capsys):
    sweep = few_jobs(sweep, tmp_path, 3)
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    for job, status in ((jobs[0], "running"), (jobs[1], "diverged")):
        record = json.loads((job / "metrics.json").read_text())
        (job / "metrics.json").write_text(json.dumps({**record, "status": status}))
    assert draw.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"{jobs[0].name}: not finished (status running): skipped" in out
    assert f"{jobs[1].name}: diverged: no pictures" in out
    assert "Drew 1 of 3 run(s); 2 skipped" in out
    assert not (jobs[0] / "images" / draw.RECIPE_FILE).exists()


@pytest.mark.parametrize("setting, message", [
    ("hallucinations.stepz=3", "hallucinations.stepz: no such picture setting"),
    ("steps=abc", "steps takes a whole number"),
    ("size=big", "size takes a number or null"),
    ("objective=softmax", "objective='softmax' is not one of margin, logit"),
    ("seeds=0", "seeds=0 is out of range"),
    ("every_n_epochs=2", "only matters while a run trains"),
    ("lr", "is not a setting"),
])
def test_bad_settings_are_refused_before_anything_is_drawn(sweep, setting, message, capsys):
    before = digests(sweep)
    assert draw.main([str(sweep), setting]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("bnstudy.draw: ") and err.count("\n") == 1
    assert digests(sweep) == before


def test_the_entry_point_refuses_a_path_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    for path, message in ((tmp_path / "missing", "does not exist"),
                          (tmp_path / "empty", "holds no runs")):
        proc = run_module("bnstudy.draw", str(path), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_a_log_file_does_not(sweep, tmp_path):
    job = next(sweep.glob("0_*"))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.run([sys.executable, "-m", "bnstudy.draw", str(job), "steps=2"],
                          cwd=REPO, stdout=subprocess.PIPE,
                          stderr=slave, timeout=300)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"drawing:" in shown and b"1/1" in shown  # the bar, on the terminal
    assert b"drawing:" not in proc.stdout and b"\r" not in proc.stdout  # the lines: plain
    assert f"{job.name}: drawn (steps=2)".encode() in proc.stdout
    piped = run_module("bnstudy.draw", str(job), "steps=3", cwd=tmp_path)
    assert piped.returncode == 0 and "drawing:" not in piped.stderr  # no bar in a log file
