"""Faults injected into real runs by the tests (loaded through Hydra overrides), most when
training's epoch `epoch` starts."""

import errno
import os
import shutil
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class AtEpoch(Callback):
    """Does `act(trainer)` when `epoch` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            self.act(trainer)


class InterruptAtEpoch(AtEpoch):
    """Raises KeyboardInterrupt (as Ctrl-C does)."""

    def act(self, trainer) -> None:
        raise KeyboardInterrupt


class InterruptWhenBuilt(Callback):
    """Raises KeyboardInterrupt as the run builds its trainer: Ctrl-C before training starts."""

    def __init__(self) -> None:
        raise KeyboardInterrupt


class SlowEpochs(Callback):
    """Each training epoch lasts `seconds` longer: a run that outlasts a time limit however fast
    the machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        time.sleep(self.seconds)


class DiskFullAtEpoch(AtEpoch):
    """From then on, writing a run file whose name contains `name` fails with ENOSPC (as on a
    full disk); the disk is "freed" when the fit ends, so the entry point can record the
    failure and a sweep's next job runs."""

    def __init__(self, epoch: int, name: str) -> None:
        super().__init__(epoch)
        self.name, self._open = name, None

    def act(self, trainer) -> None:
        self._open = real_open = os.open

        def full_disk(path, *args, **kwargs):
            if self.name in os.fspath(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
            return real_open(path, *args, **kwargs)

        os.open = full_disk

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._open is not None:
            os.open, self._open = self._open, None


class WriteFailsAtEpoch(AtEpoch):
    """Raises the OSError a library's own write of `<job dir>/<name>` raises on a full disk
    (ENOSPC), as Lightning's hparams.yaml or TensorBoard's events would."""

    def __init__(self, epoch: int, name: str) -> None:
        super().__init__(epoch)
        self.name = name

    def act(self, trainer) -> None:
        path = os.path.join(trainer.default_root_dir, self.name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class SignalAtEpoch(AtEpoch):
    """Sends this process `signal` (default USR2: what submitit's controller sends at a time
    limit), once: only if `marker` does not exist yet, which it creates, so a requeued job that
    resumes into `epoch` again trains on."""

    def __init__(self, epoch: int, marker: str, signal: str = "SIGUSR2") -> None:
        super().__init__(epoch)
        self.marker, self.signal = marker, signal

    def act(self, trainer) -> None:
        try:
            Path(self.marker).open("x").close()  # atomic: of two jobs at this epoch, one only
        except FileExistsError:
            return
        os.kill(os.getpid(), getattr(signal, self.signal))


class PauseAtEpoch(AtEpoch):
    """Creates `<until>.paused` and waits (up to `timeout` s) until the file `until` exists:
    the test acts on the run at a known point (a second process, a kill)."""

    def __init__(self, epoch: int, until: str, timeout: float = 120) -> None:
        super().__init__(epoch)
        self.until, self.timeout = until, timeout

    def act(self, trainer) -> None:
        Path(f"{self.until}.paused").touch()
        deadline = time.monotonic() + self.timeout
        while not Path(self.until).exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class BugAtEpoch(AtEpoch):
    """Raises a RuntimeError: a bug, not a mistake the user can fix."""

    def act(self, trainer) -> None:
        raise RuntimeError("a bug")


class RecordCopiedAtEpoch(AtEpoch):
    """Copies the run's `metrics.json` to `to` as it is then: what a kill would leave."""

    def __init__(self, epoch: int, to: str) -> None:
        super().__init__(epoch)
        self.to = to

    def act(self, trainer) -> None:
        shutil.copyfile(os.path.join(trainer.default_root_dir, "metrics.json"), self.to)
