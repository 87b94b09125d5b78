"""Picture measures, the numbers behind claims P1–P3: class images are (K, C, H, W), pixels in
[0, 1] unless said normalised; weights are rows, one per hidden unit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur as _blur

PC_COUNT = 32  # principal components of the training inputs that `pc_alignment` projects on
NOISE_ALIGNMENT = 2.0  # noise-like: alignment below this multiple of a random direction's
HIGH_FREQUENCY = 0.25  # cycles per pixel: half the Nyquist frequency


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images (N, C, H, W) blurred with a Gaussian of std `sigma` px (<= 0: unchanged)."""
    size = 2 * max(1, math.ceil(2 * sigma)) + 1
    return _blur(x, [size, size], [sigma, sigma]) if sigma > 0 else x


@contextmanager
def frozen(model: nn.Module, threads: int | None = None):
    """`model` in eval mode without gradients, on `threads` torch threads, all restored after."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or was)
        yield model.eval().requires_grad_(False)
    finally:
        torch.set_num_threads(was)
        for module, training in modes:
            module.train(training)
        for param, flag in flags:
            param.requires_grad_(flag)


@dataclass(frozen=True)
class ImageStats:
    """Normalised training images' per-pixel mean and std (C, H, W) and the square root (C, C)
    of their channel correlation: `images(d)` = mean + std ⊙ (colour · d)."""

    mean: torch.Tensor
    std: torch.Tensor
    colour: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, colour_images: int = 1000) -> ImageStats:
        """Of images `x` (N, C, H, W); the colour from the first `colour_images`."""
        mean = x.mean(0)  # torch.std's, in two passes (4x faster over dim 0 on a CPU)
        std = (x - mean).square_().sum(0).div_(len(x) - 1).sqrt_()
        u = (x[:colour_images] - mean) / std.where(std > 0, 1.0)
        u = u.transpose(0, 1).flatten(1).double()
        values, vectors = torch.linalg.eigh((u @ u.T) / u.shape[1])
        colour = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        return cls(mean.float(), std.float(), colour.float())

    def images(self, deviation: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, C, H, W) of deviations d."""
        return self.mean + self.std * torch.einsum("cd,ndhw->nchw", self.colour, deviation)

    def deviation(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse of `images` (pixels the data never varies in give 0)."""
        return torch.einsum("cd,ndhw->nchw", self._unmix, (images - self.mean) / self._scale)

    @cached_property
    def _unmix(self) -> torch.Tensor:  # once, not at each of a hallucination's steps
        return torch.linalg.pinv(self.colour)

    @cached_property
    def _scale(self) -> torch.Tensor:  # as `_unmix`
        return self.std.where(self.std > 0, 1.0)


def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean image of each class, (K, *image shape)."""
    return torch.stack([x[y == k].mean(0) for k in range(num_classes)])


def pairwise_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation (len(a), len(b)) of images; 0 for one without contrast."""
    flat = torch.cat([a.flatten(1), b.flatten(1)]).double()
    return torch.corrcoef(flat)[: len(a), len(a) :].nan_to_num(0.0).float()


def noise_correlation(images: torch.Tensor, noise: torch.Tensor,
                      base: torch.Tensor) -> torch.Tensor:
    """Per image (K,), the correlation of `images − base` with `noise − base` (lr=0)."""
    return pairwise_correlation(images - base, noise - base).diagonal()


def stuck(images: torch.Tensor, noise: torch.Tensor, base: torch.Tensor,
          threshold: float = 0.9) -> torch.Tensor:
    """Per image (K, bool): `noise_correlation` above `threshold`, or faded (its RMS beyond
    `base` under half the noise's or half the run's median)."""
    rms, noise_rms = ((x - base).flatten(1).pow(2).mean(1).sqrt() for x in (images, noise))
    weak = rms < 0.5 * torch.maximum(noise_rms, rms.median())
    return (noise_correlation(images, noise, base) > threshold) | weak


def nearest_mean(images: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Per class image (K, bool), whether it correlates best with its own class's real mean."""
    return pairwise_correlation(images, means).argmax(1) == torch.arange(len(images))


def distinctness(images: torch.Tensor) -> float:
    """1 − the mean correlation between different class images: 0 identical, ≈ 1 unrelated."""
    corr, k = pairwise_correlation(images, images), len(images)
    return float(1 - (corr.sum() - corr.diagonal().sum()) / (k * (k - 1)))


def tint(pixels: torch.Tensor, channel: int) -> torch.Tensor:
    """`channel` − the mean of the two others, of each image's mean colour (K,); NaN if not RGB."""
    if pixels.shape[1] != 3:
        return torch.full((len(pixels),), math.nan)
    rgb = pixels.mean(dim=(2, 3))
    return rgb[:, channel] - rgb[:, [c for c in range(3) if c != channel]].sum(1) / 2


def colour_fidelity(pixels: torch.Tensor, real_means: torch.Tensor) -> float:
    """Pearson correlation over classes × channels of the images' mean colours with the real
    class means', each channel's class average taken out; NaN when a side does not vary."""
    own, real = pixels.mean(dim=(2, 3)).double(), real_means.mean(dim=(2, 3)).double()
    own, real = (own - own.mean(0)).flatten(), (real - real.mean(0)).flatten()
    denom = float(own.norm() * real.norm())
    return math.nan if denom < 1e-12 else float(own @ real) / denom


def sharpness(pixels: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Edge strength (K,): mean gradient magnitude (per px) after a blur of std `sigma` px."""
    smooth = gaussian_blur(pixels.float(), sigma)
    dy = smooth[..., 1:, :-1] - smooth[..., :-1, :-1]
    dx = smooth[..., :-1, 1:] - smooth[..., :-1, :-1]
    return (dy.pow(2) + dx.pow(2)).sqrt().mean(dim=(1, 2, 3))


def change_share(final: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Per unit (row), ||final − initial||² / ||final||²: the learned share of what is drawn."""
    final, initial = final.flatten(1).double(), initial.flatten(1).double()
    return ((final - initial).pow(2).sum(1) / final.pow(2).sum(1).clamp_min(1e-30)).float()


def high_frequency_share(rows: torch.Tensor, shape: Sequence[int],
                         cutoff: float = HIGH_FREQUENCY) -> torch.Tensor:
    """Per unit, the share of its power above `cutoff` cycles per px (white noise: 0.8)."""
    power = torch.fft.fft2(rows.reshape(len(rows), *shape).double()).abs().pow(2).sum(1)
    fy = torch.fft.fftfreq(shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(shape[-1], dtype=torch.float64)[None, :]
    high = (fy**2 + fx**2).sqrt() > cutoff
    return (power[:, high].sum(1) / power.sum(dim=(1, 2)).clamp_min(1e-30)).float()


def principal_components(x: torch.Tensor, k: int = PC_COUNT, seed: int = 0) -> torch.Tensor:
    """The top-`k` principal directions (k, D) of the centred inputs `x` (N, ...); above 1024
    inputs by a seeded randomised SVD (the global RNG left alone)."""
    flat = x.flatten(1).double()
    flat = flat - flat.mean(0)
    if flat.shape[1] <= 1024:
        return torch.linalg.eigh(flat.T @ flat)[1][:, -k:].flip(1).T.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.svd_lowrank(flat, q=k + 20, niter=4)[2][:, :k].T.float()


def pc_alignment(rows: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Per unit, the share of its energy in the span of `components` (random: k / D)."""
    rows = rows.flatten(1).double()
    inside = (rows @ components.double().T).pow(2).sum(1)
    return (inside / rows.pow(2).sum(1).clamp_min(1e-30)).float()


def noise_like(rows: torch.Tensor, components: torch.Tensor,
               factor: float = NOISE_ALIGNMENT) -> torch.Tensor:
    """Per unit, whether its `pc_alignment` is below `factor` × a random direction's (k / D)."""
    return pc_alignment(rows, components) < factor * len(components) / rows.flatten(1).shape[1]


def predict(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """The model's class probabilities (N, K) of normalised images, `frozen` (eval mode)."""
    with frozen(model), torch.no_grad():
        return torch.cat([model(chunk).softmax(1) for chunk in x.split(batch)])


def recognised(probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether a judge (K, K probabilities) reads each class image as its class, and how sure."""
    own = torch.arange(len(probabilities))
    return probabilities.argmax(1) == own, probabilities[own, own]


class Referee:
    """A small CNN judging whether a hallucination looks like its class: `fit` on a training
    split (seeded, one thread, Adam, batches shifted by up to ±2 px); `accuracy` on `check`."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels=(16, 32),
                 hidden_dim: int = 64, epochs: int = 3, lr: float = 2e-3,
                 batch_size: int = 64, seed: int = 0) -> None:
        from bnstudy.nets import CNN

        self.settings = {"channels": tuple(channels), "hidden_dim": hidden_dim, "epochs": epochs,
                         "lr": lr, "batch_size": batch_size, "seed": seed}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = CNN(input_shape, num_classes, channels=channels, hidden_dim=hidden_dim,
                           norm="none").eval().requires_grad_(False)
        self.accuracy = math.nan

    def fit(self, x: torch.Tensor, y: torch.Tensor,
            check: tuple[torch.Tensor, torch.Tensor] | None = None) -> Referee:
        """Trains on normalised images `x` (N, C, H, W) and labels `y`."""
        generator = torch.Generator().manual_seed(self.settings["seed"])
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.settings["lr"])
        with frozen(self.net, threads=1):
            self.net.train().requires_grad_(True)
            for _ in range(self.settings["epochs"]):
                order = torch.randperm(len(y), generator=generator)
                for idx in order.split(self.settings["batch_size"]):
                    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
                    batch = torch.roll(x[idx], shifts=shift, dims=(-2, -1))
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(self.net(batch), y[idx]).backward()
                    optimizer.step()
        if check is not None:
            read = self.probabilities(check[0]).argmax(1) == check[1]
            self.accuracy = float(read.float().mean())
        return self

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K) of normalised images."""
        return predict(self.net, x.to(next(self.net.parameters()).device))

    def state_dict(self) -> dict:
        return {"settings": self.settings, "net": self.net.state_dict(),
                "accuracy": self.accuracy}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.accuracy = state["accuracy"]
