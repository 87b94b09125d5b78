"""Checkpoints survive a kill and truncation (issue #18; a truncated one resumed, a full disk:
test_run.py), and the cadence of saves loses at most what it says."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import fail_fsync, make_classifier, tiny_fit
from lightning.pytorch.callbacks import ModelCheckpoint

from bnstudy.checkpoints import AtomicCheckpointIO, StudyCheckpoint, resume_checkpoint


def fit(data_dir: Path, directory: Path, max_epochs: int, checkpoint=None, io=None):
    """Fits a classifier with BatchNorm (its running stats in the checkpoint too) by Adam on tiny
    MNIST (11 steps an epoch), with checkpoints/last.ckpt in `directory`, as a run does."""
    checkpoint = checkpoint or ModelCheckpoint(
        dirpath=directory / "checkpoints", filename="last", save_top_k=1,
        enable_version_counter=False, save_on_train_epoch_end=True)
    model = make_classifier(optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    return tiny_fit(data_dir, model=model, callbacks=[checkpoint], max_epochs=max_epochs,
                    plugins=[io or AtomicCheckpointIO()], enable_checkpointing=True)[1]


def epoch_of(path: Path) -> int:
    """The epoch of a checkpoint, loaded as Lightning's resume loads it (weights_only)."""
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


class Killed(BaseException):
    """Stands for a kill (KeyboardInterrupt would make Lightning call sys.exit)."""


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """checkpoints/ after a 2-epoch fit: last.ckpt (epoch 1) and last.ckpt.prev (epoch 0)."""
    directory = tmp_path_factory.mktemp("trained")
    fit(tiny_data, directory, max_epochs=2)
    return directory / "checkpoints"


@pytest.fixture
def ckpts(trained, tmp_path) -> Path:
    """A private copy of the trained checkpoints/ directory."""
    return Path(shutil.copytree(trained, tmp_path / "checkpoints"))


def test_a_fit_keeps_the_previous_checkpoint_and_both_load_weights_only(ckpts):
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "last.ckpt.prev"]
    assert (epoch_of(ckpts / "last.ckpt"), epoch_of(ckpts / "last.ckpt.prev")) == (1, 0)
    assert resume_checkpoint(ckpts / "absent.ckpt") == (None, None, None, 0)
    stale = ckpts / ".last.ckpt.0badcafe.tmp"  # what a SIGKILL mid-write leaves: removed
    stale.write_bytes(b"partial")
    step = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert resume_checkpoint(ckpts / "last.ckpt") == (ckpts / "last.ckpt", None, step, 2)
    assert not stale.exists()


@pytest.mark.parametrize("moment", ["while writing", "between the renames"])
def test_a_kill_during_a_save_leaves_a_loadable_checkpoint(ckpts, monkeypatch, moment):
    last = ckpts / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["epoch"] = 2
    if moment == "while writing":
        fail_fsync(monkeypatch, Killed())
    else:  # after last.ckpt became last.ckpt.prev, before the new file takes its name
        replace = os.replace

        def killed_at_rename(src, dst) -> None:
            if str(src).endswith(".tmp"):
                raise Killed
            replace(src, dst)

        monkeypatch.setattr(os, "replace", killed_at_rename)
    with pytest.raises(Killed):
        AtomicCheckpointIO().save_checkpoint(checkpoint, last)
    monkeypatch.undo()
    assert list(ckpts.glob(".*.tmp")) == []
    if moment == "while writing":
        assert epoch_of(last) == 1  # last.ckpt is still the one saved before
    chosen, note, *_ = resume_checkpoint(last)
    assert epoch_of(chosen) == 1
    assert note is None if moment == "while writing" else f"{last} is missing" in note


@pytest.mark.parametrize("every, epochs, saves", [
    (2, 5, [22, 44, 55]),  # 11 steps an epoch: after epochs 2 and 4, then the last
    (1, 2, [11, 22]),  # the last epoch's save is the final state: not saved twice
])
def test_a_sparser_cadence_saves_every_nth_epoch_and_always_the_final_state(
        tiny_data, tmp_path, every, epochs, saves):
    saved = []

    class Recording(AtomicCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            saved.append(checkpoint["global_step"])
            super().save_checkpoint(checkpoint, path, storage_options)

    model = fit(tiny_data, tmp_path, epochs, io=Recording(), checkpoint=StudyCheckpoint(
        dirpath=tmp_path, filename="last", save_top_k=1, enable_version_counter=False,
        save_on_train_epoch_end=True, every_n_epochs=every))
    assert saved == saves
    final = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == saves[-1] and all(
        torch.equal(final["state_dict"][name], value) for name, value in model.state_dict().items())


class NotAWeight:
    """An arbitrary pickled object: what a weights-only load refuses."""


def test_a_file_that_is_not_a_lightning_checkpoint_is_set_aside_in_words(tmp_path, caplog):
    """Issue #36: the exact note, logged; a pickle holding code refused (weights only); none
    loads: started over; a third file set aside gets `.corrupt.2`, the earlier ones kept."""
    last, previous = tmp_path / "last.ckpt", tmp_path / "last.ckpt.prev"
    torch.save({"epoch": 3}, last)  # no state_dict
    torch.save({"state_dict": {}, "code": NotAWeight()}, previous)
    for n in ("last.ckpt.corrupt", "last.ckpt.corrupt.1", "last.ckpt.prev.corrupt"):
        (tmp_path / n).write_bytes(b"earlier")
    chosen, note, *_ = resume_checkpoint(last)
    assert chosen is None and (tmp_path / "last.ckpt.corrupt.2").is_file()
    assert {p.name for p in tmp_path.iterdir() if p.read_bytes() == b"earlier"} == \
        {"last.ckpt.corrupt", "last.ckpt.corrupt.1", "last.ckpt.prev.corrupt"}  # kept as they were
    assert note.startswith(f"{last} did not load (ValueError: not a Lightning checkpoint (no "
                           f"state_dict)); set aside as {tmp_path / 'last.ckpt.corrupt.2'}. "
                           f"{previous} did not load (UnpicklingError: Weights only load failed")
    assert note.endswith(f"; set aside as {previous}.corrupt.1. No checkpoint loads: started "
                         "over.")
    assert caplog.records[-1].getMessage() == note


@pytest.mark.parametrize(("saved", "said"), [({}, "after epoch 0, global step -1"),
                                             ({"epoch": 3, "global_step": 12},
                                              "after epoch 4, global step 12")])
def test_a_missing_last_checkpoint_resumes_from_the_previous_one_and_says_which(
        tmp_path, caplog, saved, said):
    last, previous = tmp_path / "last.ckpt", tmp_path / "last.ckpt.prev"
    torch.save({"state_dict": {}, **saved}, previous)
    chosen, note, *_ = resume_checkpoint(last)
    assert chosen == previous and note == (
        f"{last} is missing (a save was cut off before it finished). Resumed from the previous "
        f"checkpoint {previous} ({said}).")
    assert caplog.records[-1].getMessage() == note


def test_removing_a_checkpoint_removes_its_previous_one_and_refuses_storage_options(tmp_path,
                                                                                   monkeypatch):
    io_, path = AtomicCheckpointIO(), tmp_path / "a.ckpt"
    with pytest.raises(TypeError, match="^AtomicCheckpointIO takes no storage_options$"):
        io_.save_checkpoint({}, path, storage_options={})
    io_.remove_checkpoint(path)  # neither exists: nothing to do
    io_.save_checkpoint({}, path)
    io_.save_checkpoint({}, path)
    assert {p.name for p in tmp_path.iterdir()} == {"a.ckpt", "a.ckpt.prev"}
    io_.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # ddp_spawn's weights, saved in a
    path = Path(tempfile.mkdtemp()) / ".temp.ckpt"  # mkdtemp() folder, go with it
    io_.save_checkpoint({}, path)
    io_.remove_checkpoint(path)
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


def test_an_error_without_words_is_still_named(tmp_path, monkeypatch):
    def load(*args, **kwargs):
        raise EOFError

    torch.save({"state_dict": {}}, tmp_path / "last.ckpt")
    monkeypatch.setattr(torch, "load", load)
    _, note, *_ = resume_checkpoint(tmp_path / "last.ckpt")
    assert "last.ckpt did not load (EOFError: ); set aside as" in note
