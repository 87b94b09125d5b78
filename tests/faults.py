"""Faults injected into real runs by the tests (loaded through Hydra overrides)."""

import time

from lightning.pytorch.callbacks import Callback


class InterruptAtEpoch(Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) when `epoch` starts; each epoch before it
    lasts `seconds` longer."""

    def __init__(self, epoch: int, seconds: float = 0.0) -> None:
        self.epoch, self.seconds = epoch, seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt
        time.sleep(self.seconds)


class DiskFullAtEpoch(Callback):
    """From the start of `epoch`, writing a run file whose name contains `name` fails with
    ENOSPC (as on a full disk); the disk is "freed" when the fit ends, so the entry point
    can record the failure and a sweep's next job runs."""

    def __init__(self, epoch: int, name: str) -> None:
        self.epoch, self.name = epoch, name
        self._open = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import errno
        import os

        if trainer.current_epoch != self.epoch or self._open is not None:
            return
        self._open = real_open = os.open

        def full_disk(path, *args, **kwargs):
            if self.name in os.fspath(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
            return real_open(path, *args, **kwargs)

        os.open = full_disk

    def on_exception(self, trainer, pl_module, exception) -> None:
        import os

        if self._open is not None:
            os.open, self._open = self._open, None


class SignalAtEpoch(Callback):
    """Sends this process `signal` (default USR2: what submitit's controller sends at a time
    limit) when `epoch` starts, once: only if `marker` does not exist yet, which it creates,
    so a requeued job that resumes into `epoch` again trains on."""

    def __init__(self, epoch: int, marker: str, signal: str = "SIGUSR2") -> None:
        self.epoch, self.marker, self.signal = epoch, marker, signal

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import os
        import signal
        from pathlib import Path

        if trainer.current_epoch != self.epoch:
            return
        try:
            Path(self.marker).open("x").close()  # atomic: of two jobs at this epoch, one only
        except FileExistsError:
            return
        os.kill(os.getpid(), getattr(signal, self.signal))


class PauseAtEpoch(Callback):
    """When `epoch` starts, creates `<until>.paused` and waits (up to `timeout` s) until the
    file `until` exists: the test acts on the run at a known point (a second process, a kill)."""

    def __init__(self, epoch: int, until: str, timeout: float = 120) -> None:
        self.epoch, self.until, self.timeout = epoch, until, timeout

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import time
        from pathlib import Path

        if trainer.current_epoch != self.epoch:
            return
        Path(f"{self.until}.paused").touch()
        deadline = time.monotonic() + self.timeout
        while not Path(self.until).exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class WriteFailsAtEpoch(Callback):
    """When `epoch` starts, raises the OSError a library's own write of `<job dir>/<name>`
    raises on a full disk (ENOSPC), as Lightning's hparams.yaml or TensorBoard's events would."""

    def __init__(self, epoch: int, name: str) -> None:
        self.epoch, self.name = epoch, name

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import errno
        import os

        if trainer.current_epoch == self.epoch:
            path = os.path.join(trainer.default_root_dir, self.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class BugAtEpoch(Callback):
    """Raises a RuntimeError (as a bug would) when `epoch` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("a bug")
