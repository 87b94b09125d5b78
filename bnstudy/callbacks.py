"""Lightning callbacks of the study: the per-epoch record, the divergence guard, and pictures.

The pictures show the first layer's weight rows and one hallucinated input per class.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import image as image_summary
from torchvision.utils import make_grid

from bnstudy.nets import first_layer
from bnstudy.records import update_record

log = logging.getLogger(__name__)

CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class MetricsHistory(Callback):
    """The one writer of `metrics.json` while a run trains: after each training epoch it
    appends the epoch's train/val loss and accuracy to `history` and stores the series of every
    other callback that keeps one (a `record_key` attribute and a `series()` method, as the
    probes have), then writes the record atomically.

    The history is part of the checkpoint, so a resumed run continues the same list.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict] = []
        self._fit_start = 0.0
        self._elapsed_before = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._elapsed_before = self.history[-1]["time_s"] if self.history else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({key: float(metrics[key]) for key in CURVE_KEYS if key in metrics})
        row["time_s"] = self._elapsed_before + time.perf_counter() - self._fit_start
        self.history.append(row)
        if trainer.is_global_zero:
            series = {c.record_key: c.series() for c in trainer.callbacks
                      if hasattr(c, "record_key")}
            update_record(self.path, history=self.history, **series)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])


class DivergenceGuard(Callback):
    """Stops training when a training loss is NaN or infinite, checked after every step.

    Sets `diverged_at = {"epoch", "step", "loss"}` (`step`: the steps taken up to and including
    the bad one); the entry point records `status: diverged` so that a sweep goes on with its
    other runs.
    """

    def __init__(self) -> None:
        self.diverged_at: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if bool(torch.isfinite(loss)):
            return
        self.diverged_at = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                            "loss": str(float(loss))}
        trainer.should_stop = True


# -- pictures of what the network learned ---------------------------------------------------
def weight_grid(weight: torch.Tensor, input_shape: Sequence[int], num_units: int = 64,
                padding: int = 2) -> torch.Tensor:
    """The first `num_units` rows of a weight as a (3, H, W) image grid in [0, 1].

    A Linear weight (units, inputs) gives one tile per row, reshaped to `input_shape`; a
    Conv2d weight (filters, in, k, k) one (in, k, k) tile per filter. Each tile is scaled on
    its own, symmetrically around 0: `w / (2 max|w|) + 0.5`, so mid-grey is a zero weight,
    white the tile's largest positive and black its largest negative weight. Tiles run
    row-major in unit order, `ceil(sqrt(n))` per grid row (64 units: 8 × 8).
    """
    shape = weight.shape[1:] if weight.dim() == 4 else input_shape
    rows = weight.detach()[:num_units].float().cpu().flatten(1)
    bound = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    tiles = (rows / (2 * bound) + 0.5).view(-1, *shape)
    return make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=padding)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (sum of absolute neighbour differences) of each image."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    return dx + dy


def hallucinate(model: nn.Module, input_shape: Sequence[int], num_classes: int,
                low: Sequence[float], high: Sequence[float], steps: int = 50, lr: float = 0.2,
                l2: float = 1e-3, tv: float = 1e-3, noise_std: float = 0.1,
                seed: int = 0) -> torch.Tensor:
    """One input per class (row c is class c) that the model finds most typical of that class.

    Starts from seeded Gaussian noise (`noise_std`, in normalised units, from a local
    generator; `steps=0` returns it) and runs `steps` Adam steps on all classes as one batch,
    minimising `-log_softmax(model(x))_c + l2 ||x||² + tv TV(x)` per image (the log-probability
    is bounded, so the penalties clean the image once the class wins) and clamping each channel
    to `[low, high]`, the valid normalised range. The model runs frozen in eval mode (BatchNorm
    uses its running statistics); its modes, `requires_grad` flags and torch's CPU thread count
    are restored afterwards, its parameters, buffers and grads untouched. Returns normalised
    images (K, *input_shape).
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    low_t = torch.tensor(low, device=device).view(-1, 1, 1)
    high_t = torch.tensor(high, device=device).view(-1, 1, 1)
    noise = torch.randn((num_classes, *input_shape), generator=generator) * noise_std
    x = noise.to(device).clamp(low_t, high_t).requires_grad_()
    targets = torch.arange(num_classes, device=device)
    optimizer = torch.optim.Adam([x], lr=lr)
    modes = {module: module.training for module in model.modules()}
    flags = {param: param.requires_grad for param in model.parameters()}
    threads = torch.get_num_threads()
    try:
        # K small images: on a CPU, waking a thread pool per op costs more than it saves.
        torch.set_num_threads(1)
        model.eval().requires_grad_(False)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                score = model(x).log_softmax(1).gather(1, targets[:, None]).sum()
                penalty = l2 * x.pow(2).sum() + tv * total_variation(x).sum()
                (penalty - score).backward()
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(low_t, high_t)
    finally:
        torch.set_num_threads(threads)
        for module, training in modes.items():
            module.train(training)
        for param, flag in flags.items():
            param.requires_grad_(flag)
    return x.detach()


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's TensorBoard logger, if it has one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def save_and_log_image(trainer: L.Trainer, tag: str, image: torch.Tensor, path: Path) -> None:
    """Encodes a (C, H, W) image in [0, 1] as PNG once, TensorBoard's way (values × 255,
    truncated), writes it to `path` and logs the same bytes as `tag` at the global step to the
    trainer's TensorBoard logger, if it has one."""
    summary = image_summary(tag, image.detach().cpu(), dataformats="CHW")
    path.write_bytes(summary.value[0].image.encoded_image_string)
    writer = tensorboard_writer(trainer)
    if writer is not None:
        writer.file_writer.add_summary(summary, trainer.global_step)


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite (a diverged run's are not, and make no picture)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class ImageCallback(Callback):
    """Base: draws after every `every_n_epochs`-th epoch (0: never) and when training ends.

    `on_train_end` also runs after an early stop; when the last epoch's picture was drawn at
    the same global step, it is copied to the final file instead of drawn and logged again.
    Subclasses implement `draw`.
    """

    prefix: str

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self._last: tuple[int, Path] | None = None  # (global step, file) of the last picture

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch{epoch}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last is not None and self._last[0] == trainer.global_step:
            shutil.copyfile(self._last[1], self.dirpath / f"{self.prefix}_final.png")
        else:
            self._draw(trainer, pl_module, "final")

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        if not trainer.is_global_zero:
            return
        if not all_finite(pl_module):
            log.warning("%s: parameters are not finite; no %s image", type(self).__name__, suffix)
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"{self.prefix}_{suffix}.png"
        self.draw(trainer, pl_module, path)
        self._last = (trainer.global_step, path)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> None:
        """Saves the image grid at `path` and logs it to TensorBoard."""
        raise NotImplementedError


class WeightGrid(ImageCallback):
    """The first layer's weights as images (see `weight_grid`), a tile per unit or conv filter.

    TensorBoard image `weights/first_layer`; files `weights_epoch{E}.png` (E counted from 0,
    as in metrics.json) and `weights_final.png` in `dirpath`.
    """

    prefix = "weights"

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, num_units: int = 64) -> None:
        super().__init__(dirpath, every_n_epochs)
        self.num_units = num_units

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> None:
        grid = weight_grid(first_layer(pl_module).weight, trainer.datamodule.input_shape,
                           self.num_units)
        save_and_log_image(trainer, "weights/first_layer", grid, path)


class Hallucinations(ImageCallback):
    """One input per class that the model finds most typical of it (see `hallucinate`).

    Class names, input shape, mean and std come from `trainer.datamodule`. Images are
    denormalised to pixels and tiled in class-index order, `nrow` per grid row. TensorBoard
    images `hallucination/all` and `hallucination/<class>`; files
    `hallucinations_epoch{E}.png` and `hallucinations_final.png` in `dirpath`.
    """

    prefix = "hallucinations"

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5, steps: int = 50,
                 lr: float = 0.2, l2: float = 1e-3, tv: float = 1e-3, noise_std: float = 0.1,
                 seed: int = 0, nrow: int = 5) -> None:
        super().__init__(dirpath, every_n_epochs)
        self.settings = {"steps": steps, "lr": lr, "l2": l2, "tv": tv, "noise_std": noise_std,
                         "seed": seed}
        self.nrow = nrow

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> None:
        data = trainer.datamodule
        mean, std = torch.tensor(data.mean), torch.tensor(data.std)
        images = hallucinate(
            pl_module, data.input_shape, len(data.classes),
            low=(-mean / std).tolist(), high=((1 - mean) / std).tolist(), **self.settings,
        )
        pixels = data.denormalise(images).cpu()
        save_and_log_image(trainer, "hallucination/all", make_grid(pixels, nrow=self.nrow), path)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            for name, image in zip(data.classes, pixels, strict=True):
                writer.add_image(f"hallucination/{name}", image, trainer.global_step)
