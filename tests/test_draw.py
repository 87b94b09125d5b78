"""`python -m bnstudy.draw`: a finished sweep's final pictures drawn again from its checkpoints
with another recipe; the earlier drawings kept, nothing else touched, the report reading them."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import csv_rows, help_words, run_module
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnstudy import draw
from bnstudy.data import TensorDataModule
from bnstudy.jobdir import JobDirLock
from bnstudy.pictures.drawing import FINAL_FILES
from bnstudy.report.picture_section import pictures_section
from bnstudy.report.runs import load_runs


def digests(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path → sha256)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def final_pictures(job: Path, folder: str = "") -> tuple[dict, dict]:
    """The hallucinations' and the weights' saved tensors."""
    return tuple(torch.load(job / "images" / folder / f"{kind}_final.pt", weights_only=True)
                 for kind in ("hallucinations", "weights"))


def recipe(job: Path) -> dict:
    return json.loads((job / "images" / draw.RECIPE_FILE).read_text())


def test_the_training_recipe_drawn_again_gives_the_training_pictures(sweep, capsys, monkeypatch):
    # No setting: the run's own recipe, so the drawing gives what the callbacks gave, to the byte.
    job, read = next(sweep.glob("0_*")), []
    prepared = TensorDataModule.prepared
    monkeypatch.setattr(TensorDataModule, "prepared",
                        lambda self, train: read.append(train) or prepared(self, train))
    assert draw.main([str(job)]) == 0
    assert read == [True]  # the training images only: no picture needs the test split
    kept = job / "images" / "steps=5"  # named after the earlier recipe: steps differ from 200
    assert sorted(p.name for p in kept.iterdir()) == sorted(FINAL_FILES)
    for name in (f for f in FINAL_FILES if not f.endswith(".pt")):  # (.pt: timings differ)
        assert (kept / name).read_bytes() == (job / "images" / name).read_bytes(), name
    (old, old_w), (new, new_w) = final_pictures(job, "steps=5"), final_pictures(job)
    for key in ("images", "noise", "base", "real_means"):
        assert torch.equal(old[key], new[key]), key
    assert new["settings"] == old["settings"]
    assert torch.equal(old_w["initial"], new_w["initial"])  # from the checkpoint's callback state
    assert torch.equal(old_w["final"], new_w["final"])
    out, err = capsys.readouterr()  # stderr captured: not a terminal, so no progress bar
    assert f"{job.name}: drawn (steps=5)" in out and "drawing:" not in err
    assert out.endswith("Drew 1 of 1 run(s).\n")  # a run named: no report to point at


def test_a_recipe_is_drawn_once_unless_replaced_and_each_earlier_one_kept(sweep, capsys):
    """A recipe differing in the weight grid only is drawn; an earlier one's name taken: `-2`."""
    job = next(sweep.glob("0_*"))
    for args, said in ((["steps=3"], "drawn (steps=3)"),
                       (["steps=3"], "already drawn with this recipe (steps=3)"),
                       (["steps=3", "--replace"], "drawn (steps=3)"),
                       (["steps=3", "num_units=16"], "drawn (num_units=16,steps=3)"),
                       (["steps=3"], "drawn (steps=3)"),
                       (["steps=3", "num_units=16"], "drawn (num_units=16,steps=3)")):
        assert draw.main([str(job), *args]) == 0
        assert f"{job.name}: {said}" in capsys.readouterr().out, args
    assert sorted(p.name for p in (job / "images").iterdir() if p.is_dir()) == [
        "num_units=16,steps=3", "steps=3", "steps=3-2", "steps=5"]  # (--replace kept none)


def test_a_checkpoint_without_initial_weights_or_finite_ones(sweep, capsys):
    """No initial weights (an older run's): the earlier change picture kept aside, not current."""
    job = next(sweep.glob("0_*"))
    path = job / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["callbacks"] = {k: {**state, "initial": None} if k.startswith("WeightGrid")
                               else state for k, state in checkpoint["callbacks"].items()}
    torch.save(checkpoint, path)
    assert draw.main([str(job), "steps=3"]) == 0
    images = job / "images"
    assert not (images / "weights_change_final.png").exists()
    assert (images / "steps=5" / "weights_change_final.png").is_file()
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], math.nan)
    torch.save(checkpoint, path)
    before = digests(images)
    assert draw.main([str(job), "steps=4"]) == 0
    assert f"{job.name}: its parameters are not finite: no pictures" in capsys.readouterr().out
    assert digests(images) == before
    assert draw.main([str(job), "steps=4", f"paths.data_dir={sweep / 'nowhere'}"]) == 1
    assert f"{sweep / 'nowhere'}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_drawn_with_another_recipe_and_the_report_reading_it(sweep, tmp_path, capsys):
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    before = {job: digests(job) for job in jobs}
    earlier = {job: final_pictures(job)[0] for job in jobs}
    assert draw.main([str(sweep), "hallucinations.steps=12", "objective=logit",
                      "callbacks.weight_grid.num_units=16"]) == 0
    out = capsys.readouterr().out
    assert out.count(": drawn (") == 8 and f"Drew 8 of 8 run(s). Report: python -m " \
        f"bnstudy.report {sweep}\n" in out
    pictures_section(load_runs(sweep), tmp_path)  # the report's `## Pictures`, pictures.csv
    rows = {row["job"]: row for row in csv_rows(tmp_path / "pictures.csv")}
    assert sorted(rows) == [job.name for job in jobs]
    cell = sweep / "search" / "mnist-bn-sgd"  # a tuned study's cell: the study is reported
    (sweep / "multirun.yaml").write_text("{}")
    shutil.copytree(jobs[0], cell / jobs[0].name)
    assert draw.main([str(cell)]) == 0 and capsys.readouterr().out.endswith(
        f"Report: python -m bnstudy.report {sweep}\n")

    name = "num_units=16,steps=12,objective=logit"
    for job in jobs:
        after = digests(job)
        # Checkpoints, records, config, epoch drawings and earlier events: byte for byte.
        assert [p for p, digest in before[job].items() if after.get(p) != digest
                and p not in {f"images/{f}" for f in FINAL_FILES}] == [], job.name
        new_files = set(after) - set(before[job])
        events = {p for p in new_files if p.startswith("events.out.tfevents.")}
        assert len(events) == 1, new_files  # one new TensorBoard events file
        assert new_files - events == {f"images/steps=5/{f}" for f in FINAL_FILES} | {
            f"images/{draw.RECIPE_FILE}"}
        drawn = recipe(job)
        assert drawn["name"] == name and drawn["hallucinations"]["steps"] == 12
        assert drawn["weight_grid"] == {"num_units": 16}
        new = final_pictures(job)[0]
        assert new["settings"]["steps"] == 12 and new["settings"]["objective"] == "logit"
        assert not torch.equal(new["images"], earlier[job]["images"])
        own = new["own_probabilities"].diagonal().mean().item()
        assert float(rows[job.name]["own_conf"]) == pytest.approx(own, abs=1e-6)
        assert float(rows[job.name]["seconds"]) == pytest.approx(new["seconds"], abs=1e-6)
        npz = "images/hallucinations_final.npz"  # its content: test_visuals (the same writer)
        assert after[npz] != before[job][npz]
        # TensorBoard: the new drawings after the training's, the same PNG bytes as the files.
        step = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        tb = EventAccumulator(str(job), size_guidance={"images": 0}).Reload()
        for tag, file in (("hallucination/all", "hallucinations_final.png"),
                          ("weights/first_layer", "weights_final.png"),
                          ("weights/first_layer_change", "weights_change_final.png")):
            last = tb.Images(tag)[-1]
            assert last.step == step + 1 == drawn["step"]
            assert last.encoded_image_string == (job / "images" / file).read_bytes()
            assert len(tb.Images(tag)) >= 2  # the training's are still there
        side = 4 * ((28 if "mnist" in job.name else 32) + 2) + 2  # 16 units: 4 x 4 tiles
        assert (last.height, last.width) == (side, side)

    # The same recipe again (a Ctrl-C'd draw run again): no run drawn twice, nothing changed.
    kept = {job: digests(job) for job in jobs}
    assert draw.main([str(sweep), "steps=12", "objective=logit", "num_units=16"]) == 0
    out = capsys.readouterr().out
    assert out.count(f": already drawn with this recipe ({name}); --replace draws it") == 8
    assert "Drew 0 of 8 run(s); 8 already drawn with this recipe. Report:" in out
    assert {job: digests(job) for job in jobs} == kept

    # Drawn again: the step moves on and the previous recipe is kept under its own name.
    first_step = recipe(jobs[0])["step"]
    assert draw.main([str(jobs[0]), "steps=3"]) == 0
    assert (jobs[0] / "images" / name / "hallucinations_final.pt").is_file()
    assert recipe(jobs[0])["step"] == first_step + 1


def test_a_run_without_checkpoint_is_named_unfinished_ones_skipped_and_the_others_drawn(
        sweep, tmp_path, capsys):
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))  # 4, a CIFAR-10 one among them
    broken, running, diverged, ok = [Path(shutil.copytree(job, tmp_path / "small" / job.name))
                                     for job in [*jobs[:3], jobs[-1]]]
    held = Path(shutil.copytree(ok, tmp_path / "small" / f"9_{ok.name.split('_', 1)[1]}"))
    (broken / "checkpoints" / "last.ckpt").unlink()
    for job, status in ((running, "running"), (diverged, "diverged")):
        record = json.loads((job / "metrics.json").read_text())
        (job / "metrics.json").write_text(json.dumps({**record, "status": status}))
    with JobDirLock(held) as lock:  # one writer per job directory: another draw, say
        lock.acquire("another draw")
        before = {job: digests(job) for job in (broken, running, diverged, held)}
        assert draw.main([str(broken.parent), "steps=2"]) == 1
        after = {job: digests(job) for job in before}
    out, err = capsys.readouterr()
    assert out.count(": drawn (steps=2)") == 1 and f"{ok.name}: drawn" in out
    assert f"{broken.name}: no checkpoint" in err
    assert f"{running.name}: not finished (status running), so it has no final pictures to " \
        "draw again. Finish its training first (its command with resume=true), then draw it.\n" \
        in err
    assert f"{held.name}: not drawn, it is in use: another draw in process {os.getpid()}" in err
    assert f"{diverged.name}: diverged: no pictures" in out
    assert f"Drew 1 of 5 run(s); 1 diverged (no pictures); 3 could not be drawn: {broken.name}, " \
        f"{running.name}, {held.name}. Report: python -m bnstudy.report {ok.parent}\n" in out
    assert after == before  # nothing written into them
    assert not list((broken / "images").glob(".*"))  # no drawing folder left
    (running / "metrics.json").unlink()  # one run named: exit 1 when it cannot be drawn
    assert draw.main([str(running)]) == 1
    assert f"{running.name}: not finished (no metrics.json)" in capsys.readouterr().err
    for job in ok.parent.iterdir():  # single runs (`outputs/runs`), which the report refuses:
        (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")  # not named
    draw.main([str(ok.parent), "steps=2"])
    assert capsys.readouterr().out.endswith(f"could not be drawn: {broken.name}, {running.name}.\n")


@pytest.mark.parametrize("args, message", [
    (["hallucinations.stepz=3"], "hallucinations.stepz: no such picture setting"),
    (["steps=abc"], "steps takes a whole number"),
    (["size=big"], "size takes a number or null"),
    (["objective=softmax"], "objective='softmax' is not one of margin, logit"),
    (["seeds=0"], "seeds=0 is out of range"),
    (["lr=-5"], "lr=-5 is out of range; it must be > 0"),
    (["size=0"], "size=0 is out of range; it must be > 0"),
    (["noise_std=-1"], "noise_std=-1 is out of range; it must be >= 0"),
    (["nrow=0"], "nrow=0 is out of range; it must be >= 1"),
    (["weight_grid.num_units=0"], "weight_grid.num_units=0 is out of range; it must be >= 1"),
    (["every_n_epochs=2"], "only matters while a run trains"),
    (["lr"], "is not a setting"),
    (["steps=10", "hallucinations.steps=400"], "hallucinations.steps is given twice (10 and 400)"),
    (["paths.data_dir=a", "paths.data_dir=b"], "paths.data_dir is given twice (a and b)"),
])
def test_bad_settings_are_refused_in_one_paragraph_before_anything_is_drawn(sweep, args,
                                                                           message, capsys):
    before = digests(sweep)
    assert draw.main([str(sweep), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("bnstudy.draw: ") and err.count("\n") == 1
    assert digests(sweep) == before


def test_ctrl_c_is_one_paragraph_naming_the_run_and_what_was_drawn(sweep, capsys, monkeypatch):
    calls = []

    def interrupted(run, *args):
        calls.append(run.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return f"{run.name}: drawn"

    monkeypatch.setattr(draw, "draw_run", interrupted)
    assert draw.main([str(sweep)]) == 1
    assert capsys.readouterr().err == (
        f"bnstudy.draw: interrupted while drawing {calls[1]} (its pictures are as they were); "
        "drew 1 of 8 run(s). The same command draws the rest (a run drawn with this recipe is "
        "skipped); a run's directory draws that run alone.\n")


def test_a_run_drawn_on_a_terminal_without_tensorboard_or_hallucinations_in_its_config(
        sweep, capsys, monkeypatch):
    """No events; the earlier pictures kept as such; a bar (on a log file not: first test)."""
    job = next(sweep.glob("0_*"))
    config = job / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.logger = {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": "x"}}
    del cfg.callbacks.hallucinations
    OmegaConf.save(cfg, config)
    for path in (job / "images").glob("hallucinations_final.*"):
        path.unlink()
    events = sorted(job.glob("events.out.tfevents.*"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert draw.main([str(job), "steps=3"]) == 0
    assert sorted(job.glob("events.out.tfevents.*")) == events
    out, err = capsys.readouterr()
    assert f"{job.name}: drawn (steps=3) in " in out and "TensorBoard step" not in out
    assert "the earlier ones (without_hallucinations) are in images/without_hallucinations/" in out
    assert (job / "images" / "without_hallucinations" / "weights_final.png").is_file()
    assert "drawing:" in err and "0/1 [" in err  # the bar (1/1 if drawing outlasts 0.1 s)
    assert "drawing:" not in out and "\r" not in out  # the lines: plain


def test_the_entry_point_exits_2_with_one_paragraph(tmp_path, capsys):
    """(A path that is no run, each way: test_eval's bad paths, through the same finder.)"""
    proc = run_module("bnstudy.draw", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("bnstudy.draw: ") and proc.stderr.count("\n") == 1
    assert "does not exist" in proc.stderr and list(tmp_path.iterdir()) == []
    for module in ("bnstudy.draw", "bnstudy.eval"):  # the settings are optional, the path not
        proc = run_module(module, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.endswith("arguments are required: path\n")
    with pytest.raises(SystemExit, match="2"):  # a misspelt flag is not taken for another
        draw.main([str(tmp_path), "--replac"])
    assert draw.main([str(tmp_path / "missing"), "--replace", "steps=100"]) == 2  # for the path
    (tmp_path / "metrics.json").write_text("{}")  # a file: draw takes folders only
    capsys.readouterr()
    assert draw.main([str(tmp_path / "metrics.json")]) == 2
    assert capsys.readouterr().err == f"bnstudy.draw: {tmp_path}/metrics.json is a file, not a " \
        "run's or a sweep's directory. Pass the directory a run or sweep of `python -m " \
        "bnstudy.train` wrote.\n"


def test_the_help_says_what_draw_takes_with_an_example_and_no_abbreviation_is_taken():
    doc = " ".join(draw.__doc__.split("\n\n")[0].split())
    assert help_words(draw.main, ["nowhere", "--rep"]) == (
        f"usage: python -m bnstudy.draw [-h] [--replace] path [KEY=VALUE ...] {doc} positional "
        "arguments: path a sweep's or a run's directory KEY=VALUE picture settings "
        "(conf/callbacks/default.yaml), paths.data_dir options: -h, --help show this help "
        "message and exit --replace replace the earlier final drawings instead of keeping them "
        "e.g. python -m bnstudy.draw outputs/multirun/2026-01-01_10-00-00 hallucinations.steps=400 "
        "objective=logit")
