"""Lightning callbacks of the study: the per-epoch record, the divergence guard, and pictures.

The pictures show the first layer's weight rows, their learned change (final − initial), and
one hallucinated input per class; `bnstudy.pictures` measures them for the report.
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
from torch import nn
from torch.utils.tensorboard.summary import image as image_summary
from torchvision.utils import make_grid

from bnstudy.dashboard import tensorboard_writer
from bnstudy.nets import first_layer
from bnstudy.pictures import ImageStats, gaussian_blur
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
    row-major in unit order, `ceil(sqrt(n))` per grid row (64 units: 8 × 8). The same
    function draws the learned change (final − initial weights).
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


OBJECTIVES = ("margin", "logit", "contrast", "log_softmax")
PARAMETRISATIONS = ("data", "data_colour", "pixel", "fourier")


def class_score(logits: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Per image, what a hallucination maximises, from the logits z and its class c:

    - `margin`: z_c − logsumexp of the other logits: rises only by beating the other classes,
      and never saturates;
    - `logit`: z_c alone (can rise with every logit at once: on some networks all classes then
      grow the same image);
    - `contrast`: z_c − the mean of the other logits;
    - `log_softmax`: log p_c, which saturates at 0 once the class wins: no gradient is left
      and the image can stay at its starting noise.
    """
    own = logits.gather(1, targets[:, None])[:, 0]
    if objective == "margin":
        return own - logits.scatter(1, targets[:, None], float("-inf")).logsumexp(1)
    if objective == "logit":
        return own
    if objective == "contrast":
        return own - logits.scatter(1, targets[:, None], 0.0).sum(1) / (logits.shape[1] - 1)
    if objective == "log_softmax":
        return logits.log_softmax(1).gather(1, targets[:, None])[:, 0]
    raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")


class ImageVariable:
    """What Adam moves, and the images it gives. The size budget, the blur and the starting
    noise act on the *deviation* d:

    - `data`: d is the image's deviation from the training images' per-pixel mean, in units of
      their per-pixel std (`bnstudy.pictures.ImageStats`): the image varies where the data
      varies (not in MNIST's always-black border), each channel on its own;
    - `data_colour`: as `data`, the channels mixed by the square root of the data's channel
      correlation, so colours vary together as real ones do (mostly in brightness);
    - `pixel`: d is the normalised image itself (0 is the dataset's mean colour);
    - `fourier`: d is the normalised image, moved through its 2-D real spectrum with each
      frequency scaled by 1/|f| (Lucid's decorrelated basis), so a step moves low frequencies
      more than high ones.
    """

    def __init__(self, start: torch.Tensor, parametrisation: str,
                 stats: ImageStats | None = None) -> None:
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation={parametrisation!r} is not one of "
                             f"{PARAMETRISATIONS}")
        self.kind = parametrisation
        self.stats = None
        if self.kind.startswith("data"):
            if stats is None:
                raise ValueError(f"parametrisation={self.kind!r} needs the training images' "
                                 "statistics (stats=bnstudy.pictures.ImageStats.of(images))")
            self.stats = stats.to(start)
            if self.kind == "data":
                self.stats = self.stats.independent_channels()
        height, width = start.shape[-2:]
        self.size = (height, width)
        if self.kind == "fourier":
            fy = torch.fft.fftfreq(height, device=start.device)[:, None]
            fx = torch.fft.rfftfreq(width, device=start.device)[None, :]
            self.scale = 1 / (fy**2 + fx**2).sqrt().clamp_min(1 / max(height, width))
        self.param = self._param_of(start).requires_grad_()

    def _param_of(self, deviation: torch.Tensor) -> torch.Tensor:
        if self.kind == "fourier":
            spectrum = torch.fft.rfft2(deviation, norm="ortho") / self.scale
            return torch.view_as_real(spectrum).contiguous()
        return deviation.clone()

    def deviation(self) -> torch.Tensor:
        if self.kind == "fourier":
            spectrum = torch.view_as_complex(self.param) * self.scale
            return torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return self.param

    def images(self, deviation: torch.Tensor) -> torch.Tensor:
        return deviation if self.stats is None else self.stats.images(deviation)

    def deviation_of(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.stats is None else self.stats.deviation(images)

    @torch.no_grad()
    def set_deviation(self, deviation: torch.Tensor) -> None:
        self.param.copy_(self._param_of(deviation))


def rescale(deviation: torch.Tensor, size: float | None) -> torch.Tensor:
    """Each image's deviation rescaled to a root-mean-square of `size` (None: unchanged)."""
    if size is None:
        return deviation
    rms = deviation.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    return deviation * (size / rms)


def hallucinate(model: nn.Module, input_shape: Sequence[int], num_classes: int,
                low: Sequence[float], high: Sequence[float], steps: int = 200,
                lr: float = 0.1, objective: str = "margin", size: float | None = 1.0,
                l2: float = 0.0, tv: float = 0.0, jitter: int = 2, blur_every: int = 4,
                blur_sigma: float = 0.5, seeds: int = 1, parametrisation: str = "pixel",
                stats: ImageStats | None = None, noise_std: float = 0.1,
                seed: int = 0) -> torch.Tensor:
    """One input per class (row c is class c) that the model finds most typical of that class.

    For each class, `seeds` starting images are drawn as seeded Gaussian noise of std
    `noise_std` in the deviation space of `parametrisation` (see `ImageVariable`; `data` and
    `data_colour` need the training images' `stats`) and optimised as one batch by `steps`
    Adam steps (`lr`) on `−score + l2 ||x||² + tv TV(x)`, the score being the class's
    `objective` of the model's logits (see `class_score`). Each step the model sees the images
    shifted by a random whole-pixel offset of up to ±`jitter` in each direction (wrapping
    round), so that they cannot rest on single pixels; every `blur_every`-th step (0: never)
    the deviations are blurred with a Gaussian of std `blur_sigma` pixels; after every step
    each deviation is held to a root-mean-square of `size` (None: free; 1 is a typical real
    image's) and the image clamped to the valid range [low, high]. A class's image is the mean
    of its seeds' deviations, held to `size` and clamped again. `steps=0` returns the starting
    images (the seeds' mean, clamped); with `noise_std=0` too, the noiseless start; `lr=0`
    what the recipe alone makes of the starting noise.

    The model runs frozen in eval mode (BatchNorm uses its running statistics); its modes,
    `requires_grad` flags and torch's CPU thread count are restored afterwards, its
    parameters, buffers and grads untouched, torch's global random state unused.
    Returns normalised images (K, *input_shape).
    """
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: at least one starting image per class is needed")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    low_t = torch.tensor(low, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    high_t = torch.tensor(high, device=device, dtype=torch.float32).view(1, -1, 1, 1)

    def clamp(x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, high_t), low_t)

    noise = torch.randn((seeds * num_classes, *input_shape), generator=generator) * noise_std
    image = ImageVariable(noise.to(device), parametrisation, stats)

    def result(budget: float | None) -> torch.Tensor:
        with torch.no_grad():
            deviation = image.deviation().view(seeds, num_classes, *input_shape).mean(0)
            return clamp(image.images(rescale(deviation, budget)))

    if steps == 0:
        return result(None)
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=generator).tolist()
    targets = torch.arange(num_classes, device=device).repeat(seeds)
    image.set_deviation(image.deviation_of(clamp(image.images(image.deviation().detach()))))
    optimizer = torch.optim.Adam([image.param], lr=lr)
    modes = {module: module.training for module in model.modules()}
    flags = {param: param.requires_grad for param in model.parameters()}
    threads = torch.get_num_threads()
    try:
        # K small images: on a CPU, waking a thread pool per op costs more than it saves.
        torch.set_num_threads(1)
        model.eval().requires_grad_(False)
        with torch.enable_grad():
            for step, (dy, dx) in enumerate(shifts, 1):
                if lr:  # lr=0: only what the recipe does to the noise, no model needed
                    optimizer.zero_grad()
                    x = image.images(image.deviation())
                    seen = torch.roll(x, shifts=(dy, dx), dims=(-2, -1)) if jitter else x
                    loss = -class_score(model(seen), targets, objective).sum()
                    if l2:
                        loss = loss + l2 * x.pow(2).sum()
                    if tv:
                        loss = loss + tv * total_variation(x).sum()
                    loss.backward()
                    optimizer.step()
                with torch.no_grad():
                    deviation = image.deviation()
                    if blur_every and step % blur_every == 0:
                        deviation = gaussian_blur(deviation, blur_sigma)
                    x = clamp(image.images(rescale(deviation, size)))
                    image.set_deviation(image.deviation_of(x))
    finally:
        torch.set_num_threads(threads)
        for module, training in modes.items():
            module.train(training)
        for param, flag in flags.items():
            param.requires_grad_(flag)
    return result(size)


def save_and_log_image(trainer: L.Trainer, tag: str, image: torch.Tensor, path: Path) -> None:
    """Encodes a (C, H, W) image in [0, 1] as PNG once, TensorBoard's way (values × 255,
    truncated), writes it to `path` and logs the same bytes as `tag` at the global step to the
    trainer's TensorBoard logger, if it has one."""
    summary = image_summary(tag, image.detach().cpu(), dataformats="CHW")
    path.write_bytes(summary.value[0].image.encoded_image_string)
    writer = tensorboard_writer(trainer)
    if writer is not None:
        writer.file_writer.add_summary(summary, trainer.global_step)


def save_tensors(path: Path, content: dict) -> None:
    """`torch.save` of plain tensors, lists, strings and numbers (loadable with
    `weights_only=True`), written to a temporary file and renamed, so no half file is left."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)


def data_source(trainer: L.Trainer) -> dict:
    """What the report needs to load the run's dataset again: the datamodule's class (module
    path) and its absolute data directory, and the class names."""
    data = trainer.datamodule
    return {"datamodule": f"{type(data).__module__}.{type(data).__qualname__}",
            "data_dir": str(Path(data.data_dir).resolve()), "classes": list(data.classes)}


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite (a diverged run's are not, and make no picture)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class ImageCallback(Callback):
    """Base: draws after every `every_n_epochs`-th epoch (0: never) and when training ends.

    Each drawing writes one PNG per name in `prefixes`, `<prefix>_<suffix>.png`.
    `on_train_end` also runs after an early stop; when the last epoch's pictures were drawn at
    the same global step and `epoch_is_final` (an epoch's drawing is as good as the final
    one), they are copied to the final files instead of drawn and logged again. Then `finish`
    saves what the report measures (a diverged run, whose parameters are not finite, gets no
    pictures and no data). Subclasses implement `draw` and `finish`.
    """

    epoch_is_final = True

    prefixes: tuple[str, ...]

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self._last: tuple[int, str] | None = None  # (global step, suffix) of the last pictures

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch{epoch}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last is not None and self._last[0] == trainer.global_step \
                and self.epoch_is_final:
            for prefix in self.prefixes:
                drawn = self.dirpath / f"{prefix}_{self._last[1]}.png"
                if drawn.is_file():
                    shutil.copyfile(drawn, self.dirpath / f"{prefix}_final.png")
        else:
            self._draw(trainer, pl_module, "final")
        if self._last is not None and self._last[0] == trainer.global_step:
            self.finish(trainer, pl_module)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        if not trainer.is_global_zero:
            return
        if not all_finite(pl_module):
            log.warning("%s: parameters are not finite; no %s image", type(self).__name__, suffix)
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.draw(trainer, pl_module, suffix)
        self._last = (trainer.global_step, suffix)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        """Saves `<prefix>_<suffix>.png` for each prefix and logs them to TensorBoard."""
        raise NotImplementedError

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Saves, next to the final pictures, the tensors the report measures."""
        raise NotImplementedError


class WeightGrid(ImageCallback):
    """The first layer's weights as images (see `weight_grid`), a tile per unit or conv filter,
    and next to them the learned change: final minus initial weights, each tile scaled on its
    own. With SGD the change is a few per cent of a unit's weight energy, so the weights alone
    mostly show the random initialisation; the change shows what training added.

    The initial weights are taken when fitting is set up and kept in the checkpoint, so a
    resumed run draws its change from the same start. TensorBoard images
    `weights/first_layer` and `weights/first_layer_change`; files `weights_epoch{E}.png`,
    `weights_change_epoch{E}.png` (E counted from 0, as in metrics.json), `weights_final.png`
    and `weights_change_final.png` in `dirpath`, and `weights_final.pt` (initial and final
    weights of every unit, half precision, for the report's measures).
    """

    prefixes = ("weights", "weights_change")

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, num_units: int = 64) -> None:
        super().__init__(dirpath, every_n_epochs)
        self.num_units = num_units
        self.initial: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.initial is None:
            self.initial = first_layer(pl_module).weight.detach().cpu().clone()

    def state_dict(self) -> dict:
        return {} if self.initial is None else {"initial": self.initial}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("initial") is not None:  # checkpoints written before the change grid
            self.initial = state_dict["initial"]

    def change(self, weight: torch.Tensor) -> torch.Tensor | None:
        """final − initial weights, or None when the initial weights are unknown."""
        if self.initial is None or self.initial.shape != weight.shape:
            return None
        return weight.detach().cpu() - self.initial

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        weight, shape = first_layer(pl_module).weight, trainer.datamodule.input_shape
        save_and_log_image(trainer, "weights/first_layer",
                           weight_grid(weight, shape, self.num_units),
                           self.dirpath / f"weights_{suffix}.png")
        change = self.change(weight)
        if change is not None:
            save_and_log_image(trainer, "weights/first_layer_change",
                               weight_grid(change, shape, self.num_units),
                               self.dirpath / f"weights_change_{suffix}.png")

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight = first_layer(pl_module).weight.detach().cpu()
        if self.change(weight) is None:
            return
        save_tensors(self.dirpath / "weights_final.pt", {
            "initial": self.initial.half(), "final": weight.half(),
            "input_shape": list(trainer.datamodule.input_shape), **data_source(trainer)})


class Hallucinations(ImageCallback):
    """One input per class that the model finds most typical of it (see `hallucinate`; the
    recipe's knobs are its keyword arguments, `conf/callbacks/default.yaml`).

    The drawings after every `every_n_epochs`-th epoch take `epoch_steps` steps (None: `steps`)
    to keep their cost small; the final drawing always takes `steps`. Class names, input
    shape, mean, std and (for the `data` parametrisations) the training images' statistics
    come from `trainer.datamodule`. Images are denormalised to pixels and
    tiled in class-index order, `nrow` per grid row. TensorBoard images `hallucination/all`
    and `hallucination/<class>`; files `hallucinations_epoch{E}.png` and
    `hallucinations_final.png` in `dirpath`, and `hallucinations_final.pt` for the report's
    measures: the final images; `noise`, what the recipe makes of the same starting noise
    without the model's gradient (`lr=0`: jitter, blur, size and clamping only); `base`, the
    noiseless start (all normalised); the model's own class probabilities for the images, the
    real training images' class means (pixels), the recipe and the seconds it took.
    """

    prefixes = ("hallucinations",)

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5, steps: int = 200,
                 lr: float = 0.1, objective: str = "margin", size: float | None = 1.0,
                 l2: float = 0.0, tv: float = 0.0, jitter: int = 2, blur_every: int = 4,
                 blur_sigma: float = 0.5, seeds: int = 1, parametrisation: str = "data",
                 noise_std: float = 0.1, seed: int = 0, nrow: int = 5,
                 epoch_steps: int | None = None) -> None:
        super().__init__(dirpath, every_n_epochs)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation={parametrisation!r} is not one of "
                             f"{PARAMETRISATIONS}")
        self.settings = {"steps": steps, "lr": lr, "objective": objective, "size": size,
                         "l2": l2, "tv": tv, "jitter": jitter, "blur_every": blur_every,
                         "blur_sigma": blur_sigma, "seeds": seeds,
                         "parametrisation": parametrisation, "noise_std": noise_std,
                         "seed": seed}
        self.nrow = nrow
        self.epoch_steps = steps if epoch_steps is None else epoch_steps
        self.epoch_is_final = self.epoch_steps == steps
        self.seconds = math.nan  # of the last drawing
        self._stats: ImageStats | None = None
        self._images: torch.Tensor | None = None  # the last drawing's normalised images

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.should_stop or (trainer.max_epochs is not None and trainer.max_epochs > 0
                                       and trainer.current_epoch + 1 >= trainer.max_epochs)
        if last and not self.epoch_is_final:
            return  # the final drawing follows at this very step: one picture per step
        super().on_train_epoch_end(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule,
             **override) -> torch.Tensor:
        data = trainer.datamodule
        mean, std = torch.tensor(data.mean), torch.tensor(data.std)
        if self._stats is None and self.settings["parametrisation"].startswith("data"):
            self._stats = ImageStats.of(data.train_set.x)
        return hallucinate(
            pl_module, data.input_shape, len(data.classes),
            low=(-mean / std).tolist(), high=((1 - mean) / std).tolist(), stats=self._stats,
            **{**self.settings, **override})

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> None:
        data = trainer.datamodule
        started = time.perf_counter()
        steps = self.settings["steps"] if suffix == "final" else self.epoch_steps
        self._images = self._run(trainer, pl_module, steps=steps)
        self.seconds = time.perf_counter() - started
        pixels = data.denormalise(self._images).cpu()
        save_and_log_image(trainer, "hallucination/all", make_grid(pixels, nrow=self.nrow),
                           self.dirpath / f"hallucinations_{suffix}.png")
        writer = tensorboard_writer(trainer)
        if writer is not None:
            for name, image in zip(data.classes, pixels, strict=True):
                writer.add_image(f"hallucination/{name}", image, trainer.global_step)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from bnstudy.pictures import class_means, predict

        data, images = trainer.datamodule, self._images
        noise = self._run(trainer, pl_module, lr=0.0)  # the recipe without the model's pull
        base = self._run(trainer, pl_module, steps=0, noise_std=0.0)
        real = class_means(data.denormalise(data.train_set.x), data.train_set.y,
                           len(data.classes))
        save_tensors(self.dirpath / "hallucinations_final.pt", {
            "images": images.cpu(), "noise": noise.cpu(), "base": base.cpu(),
            "own_probabilities": predict(pl_module, images).cpu(),
            "real_means": real.cpu(), "settings": dict(self.settings), "seconds": self.seconds,
            "mean": list(data.mean), "std": list(data.std), **data_source(trainer)})
