"""Checkpoints that survive a kill or a full disk (`AtomicCheckpointIO`), the one a resume
loads (`resume_checkpoint`), the save cadence (`StudyCheckpoint`)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bnstudy.errors import first_line
from bnstudy.records import replace_file

log = logging.getLogger("bnstudy")


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint saved before the one at `path` is kept."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves as Lightning does, but atomically (`replace_file`), keeping the previous one as
    `<path>.prev`; local paths only. A failed write raises `RunFileError`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        replace_file(path, buffer.getbuffer(), previous=previous_path(path))

    def remove_checkpoint(self, path: str | Path) -> None:
        """Removes the checkpoint at `path` and the previous one kept beside it, and the
        `tempfile.mkdtemp()` folder `ddp_spawn` saved its weights in (Lightning leaves it)."""
        super().remove_checkpoint(path)
        previous_path(path).unlink(missing_ok=True)
        folder = Path(path).parent
        if folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("tmp"):
            with contextlib.suppress(OSError):  # not empty: not only its own
                folder.rmdir()


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint loaded weights-only on the CPU; ValueError if it is not one."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a Lightning checkpoint (no state_dict)")
    return checkpoint


def resume_checkpoint(last: str | Path) -> tuple[Path | None, str | None, int | None, int]:
    """The checkpoint to resume from (`last`, else its `.prev`, else None), a note when it is
    not simply `last`, its global step and the epochs it holds (0 without one); one that does
    not load is set aside as `.corrupt`."""
    last = Path(last)
    for stale in last.parent.glob(f".{last.name}.*.tmp"):
        stale.unlink()
    previous, problems, chosen = previous_path(last), [], None
    if not last.exists() and previous.exists():
        problems.append(f"{last} is missing (a save was cut off before it finished).")
    for candidate in (c for c in (last, previous) if c.exists()):
        try:  # as Lightning's resume loads it
            checkpoint, chosen = read_checkpoint(candidate), candidate
            break
        except Exception as err:  # whatever torch.load raises, the file is unusable
            aside, n = candidate.with_name(candidate.name + ".corrupt"), 0
            while aside.exists():
                n += 1
                aside = candidate.with_name(f"{candidate.name}.corrupt.{n}")
            candidate.rename(aside)
            problems.append(f"{candidate} did not load ({first_line(err)}); "
                            f"set aside as {aside}.")
    step = checkpoint.get("global_step") if chosen else None
    epochs = checkpoint.get("epoch", -1) + 1 if chosen else 0  # saved as each epoch ends
    if not problems:
        return chosen, None, step, epochs
    problems.append("No checkpoint loads: started over." if chosen is None else
                    f"Resumed from the previous checkpoint {chosen} (after epoch {epochs}, "
                    f"global step {checkpoint.get('global_step', -1)}).")
    log.warning(note := " ".join(problems))
    return chosen, note, step, epochs


class StudyCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` plus a final save if needed: `last.ckpt` is the final state."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # (skips a step already saved)
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
