"""Faults injected into real runs by the tests (loaded through Hydra overrides)."""

from lightning.pytorch.callbacks import Callback


class InterruptAtEpoch(Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) when `epoch` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt
