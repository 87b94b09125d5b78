"""Faults injected into real runs by the tests (loaded through Hydra overrides)."""

from lightning.pytorch.callbacks import Callback


class InterruptAtEpoch(Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) when `epoch` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


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
