"""Picture measures: the numbers that say what a run's hallucinations and first-layer weights
show, so that the study's picture claims (P1–P3) are measured, not eyeballed.

Hallucinations (one image per class, pixels in [0, 1], shape (K, C, H, W)):

- `recognised`: whether a classifier trained independently of the run (`Referee`) reads each
  image as its class, and with what probability;
- `nearest_mean`: whether each image correlates best with the real images' mean of its own
  class (a template match, no network involved);
- `colour_fidelity`: how well the per-class mean colours follow the real class means' colours,
  once each channel's average over the classes is taken out (the class-typical tint, not the
  dataset's overall one); `blueness`, `greenness`: B − (R + G)/2, G − (R + B)/2 per image;
- `sharpness`: edge strength at the scale of shapes (mean gradient magnitude after a light blur
  that removes pixel noise); a constant image has 0;
- `distinctness`: how different the classes' images are (1 − their mean pairwise correlation);
  identical images have 0;
- `noise_correlation`, `stuck`: how much of its starting noise an image still shows, and
  whether it is still essentially that noise.

First-layer weights (rows of a Linear layer, one per hidden unit; `initial` and `final`):

- `change_share`: ||final − initial||² / ||final||² per unit: how much of the drawn weight is
  learned rather than the random initialisation;
- `high_frequency_share`: the share of a unit's spatial power above half the Nyquist frequency
  (white noise: ≈ 0.80; strokes and blobs: much less);
- `pc_alignment`: the share of a unit's energy inside the span of the data's top principal
  components (random: k / D); a unit is *noise-like* when its alignment is below
  `NOISE_ALIGNMENT` × that chance level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

PC_COUNT = 32  # principal components of the training inputs that `pc_alignment` projects on
NOISE_ALIGNMENT = 2.0  # noise-like: alignment below this multiple of a random direction's
HIGH_FREQUENCY = 0.25  # cycles per pixel: half the Nyquist frequency


# --- image operations ---------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of each image (N, C, H, W) blurred with a Gaussian of std `sigma` pixels
    (kernel 2 ceil(2 sigma) + 1, reflected borders); `sigma` <= 0 returns `x`."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
                                groups=channels)
    return nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
                                groups=channels)



@dataclass(frozen=True)
class ImageStats:
    """The training images' per-pixel mean and std (C, H, W) and the square root (C, C) of
    their channel correlation, all of normalised images: a hallucination parametrised by them
    (`images(d)` = mean + std ⊙ (colour · d) per pixel) varies where the data varies, and
    its colours vary together the way real colours do (mostly in brightness), instead of
    every channel on its own."""

    mean: torch.Tensor
    std: torch.Tensor
    colour: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, colour_images: int = 1000) -> ImageStats:
        """The statistics of normalised images `x` (N, C, H, W); the colour correlation from
        the first `colour_images` of them."""
        mean, std = x.mean(0), x.std(0)
        safe = torch.where(std > 0, std, torch.ones_like(std))
        u = ((x[:colour_images] - mean) / safe).transpose(0, 1).flatten(1).double()
        corr = (u @ u.T) / u.shape[1]  # (C, C) of the standardised pixels
        values, vectors = torch.linalg.eigh(corr)
        colour = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        return cls(mean.float(), std.float(), colour.float())

    def independent_channels(self) -> ImageStats:
        """The same per-pixel mean and std, without colour mixing."""
        return ImageStats(self.mean, self.std, torch.eye(len(self.colour)).to(self.colour))

    def to(self, like: torch.Tensor) -> ImageStats:
        return ImageStats(*(t.to(like) for t in (self.mean, self.std, self.colour)))

    def images(self, deviation: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, C, H, W) of deviations d: mean + std ⊙ (colour · d)."""
        mixed = torch.einsum("cd,ndhw->nchw", self.colour, deviation)
        return self.mean + self.std * mixed

    def deviation(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse of `images` (pixels the data never varies in give 0)."""
        safe = torch.where(self.std > 0, self.std, torch.ones_like(self.std))
        mixed = (images - self.mean) / safe
        return torch.einsum("cd,ndhw->nchw", torch.linalg.pinv(self.colour), mixed)


# --- hallucinations -------------------------------------------------------------------------


def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean image of each class, (K, *image shape)."""
    return torch.stack([x[y == k].mean(0) for k in range(num_classes)])


def _flat_centred(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1).double()
    return flat - flat.mean(1, keepdim=True)


def pairwise_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every image of `a` with every image of `b` (over all pixels and
    channels): (len(a), len(b)); an image without contrast correlates 0 with everything."""
    fa, fb = _flat_centred(a), _flat_centred(b)
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    corr = (fa @ fb.T) / (na * nb.T).clamp_min(1e-12)
    return corr.float()


def noise_correlation(images: torch.Tensor, noise: torch.Tensor,
                      base: torch.Tensor) -> torch.Tensor:
    """Per image, the correlation of what it shows beyond the noiseless start `base` with
    `noise − base`, where `noise` is what the recipe makes of the same starting noise without
    the model's gradient (`hallucinate` with `lr=0`): how much of the start is left (K,)."""
    return pairwise_correlation(images - base, noise - base).diagonal()


def stuck(images: torch.Tensor, noise: torch.Tensor, base: torch.Tensor,
          threshold: float = 0.9) -> torch.Tensor:
    """Per image of one run, whether it is stuck at its starting noise: its
    `noise_correlation` is above `threshold` (it is essentially that noise), or nothing grew
    in it: what it shows beyond `base` (root-mean-square) is under half the starting noise's
    strength or under half the median of the run's images (penalties shrank it while the
    other classes grew; the old recipe's no-gradient tile). A bool per image (K,)."""
    rms = (images - base).flatten(1).pow(2).mean(1).sqrt()
    noise_rms = (noise - base).flatten(1).pow(2).mean(1).sqrt()
    weak = rms < 0.5 * torch.maximum(noise_rms, rms.median())
    return (noise_correlation(images, noise, base) > threshold) | weak


def nearest_mean(images: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """For each class image, whether it correlates best with its own class's real mean image
    (of all the class means): a bool per class (K,)."""
    corr = pairwise_correlation(images, means)
    return corr.argmax(1) == torch.arange(len(images))


def distinctness(images: torch.Tensor) -> float:
    """1 − the mean Pearson correlation over all pairs of different class images: 0 when the
    images are identical (up to brightness and contrast), ≈ 1 when unrelated, up to 2."""
    corr = pairwise_correlation(images, images)
    k = len(images)
    off = corr.sum() - corr.diagonal().sum()
    return float(1 - off / (k * (k - 1)))


def blueness(pixels: torch.Tensor) -> torch.Tensor:
    """B − (R + G) / 2, averaged over each RGB image (K,); NaN for images that are not RGB."""
    if pixels.shape[1] != 3:
        return torch.full((len(pixels),), math.nan)
    r, g, b = pixels.mean(dim=(2, 3)).unbind(1)
    return b - (r + g) / 2


def greenness(pixels: torch.Tensor) -> torch.Tensor:
    """G − (R + B) / 2, averaged over each RGB image (K,); NaN for images that are not RGB."""
    if pixels.shape[1] != 3:
        return torch.full((len(pixels),), math.nan)
    r, g, b = pixels.mean(dim=(2, 3)).unbind(1)
    return g - (r + b) / 2


def colour_fidelity(pixels: torch.Tensor, real_means: torch.Tensor) -> float:
    """Pearson correlation, over classes × channels, of the images' mean colours with the real
    class means' mean colours, each channel's average over the classes taken out first (so it
    scores which classes are bluer, greener, brighter than the others, not the overall tint).
    NaN when either side has no variation across classes."""
    own = pixels.mean(dim=(2, 3)).double()
    real = real_means.mean(dim=(2, 3)).double()
    own, real = (own - own.mean(0)).flatten(), (real - real.mean(0)).flatten()
    denom = float(own.norm() * real.norm())
    return math.nan if denom < 1e-12 else float(own @ real) / denom


def sharpness(pixels: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Edge strength at the scale of shapes: the mean gradient magnitude (pixel units per
    pixel, channels averaged) of each image after a Gaussian blur of std `sigma`, which
    averages pixel noise away but keeps edges between regions. 0 for a constant image (K,)."""
    smooth = gaussian_blur(pixels.float(), sigma)
    dy = smooth[..., 1:, :-1] - smooth[..., :-1, :-1]
    dx = smooth[..., :-1, 1:] - smooth[..., :-1, :-1]
    return (dy.pow(2) + dx.pow(2)).sqrt().mean(dim=(1, 2, 3))


# --- first-layer weights --------------------------------------------------------------------


def change_share(final: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Per unit (row), ||final − initial||² / ||final||²: the learned share of what is drawn."""
    final, initial = final.flatten(1).double(), initial.flatten(1).double()
    return ((final - initial).pow(2).sum(1) / final.pow(2).sum(1).clamp_min(1e-30)).float()


def high_frequency_share(rows: torch.Tensor, shape: Sequence[int],
                         cutoff: float = HIGH_FREQUENCY) -> torch.Tensor:
    """Per unit, the share of its spatial power (2-D FFT, summed over channels) at radial
    frequencies above `cutoff` cycles per pixel. White noise gives the share of the frequency
    square outside that radius (≈ 0.80 for 0.25); smooth strokes and blobs much less; a
    constant row 0."""
    images = rows.reshape(len(rows), *shape).double()
    power = torch.fft.fft2(images).abs().pow(2).sum(1)  # (units, H, W)
    fy = torch.fft.fftfreq(shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(shape[-1], dtype=torch.float64)[None, :]
    high = (fy**2 + fx**2).sqrt() > cutoff
    return (power[:, high].sum(1) / power.sum(dim=(1, 2)).clamp_min(1e-30)).float()


def principal_components(x: torch.Tensor, k: int = PC_COUNT, seed: int = 0) -> torch.Tensor:
    """The top-`k` principal directions (k, D) of the inputs `x` (N, ...), centred."""
    flat = x.flatten(1).double()
    flat = flat - flat.mean(0)
    if flat.shape[1] <= 1024:
        _, vectors = torch.linalg.eigh(flat.T @ flat)
        return vectors[:, -k:].flip(1).T.float()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)  # svd_lowrank draws a random sketch from the global generator
        _, _, v = torch.svd_lowrank(flat, q=k + 20, niter=4)
    finally:
        torch.random.set_rng_state(state)
    return v[:, :k].T.float()


def pc_alignment(rows: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Per unit, the share of its energy in the span of `components` (orthonormal rows):
    1 for a direction the data varies in, k / D on average for a random one."""
    rows = rows.flatten(1).double()
    inside = (rows @ components.double().T).pow(2).sum(1)
    return (inside / rows.pow(2).sum(1).clamp_min(1e-30)).float()


def noise_like(rows: torch.Tensor, components: torch.Tensor,
               factor: float = NOISE_ALIGNMENT) -> torch.Tensor:
    """Per unit, whether it is noise-like: its `pc_alignment` is below `factor` times a random
    direction's (k / D)."""
    chance = len(components) / rows.flatten(1).shape[1]
    return pc_alignment(rows, components) < factor * chance


# --- an independent judge -------------------------------------------------------------------


class Referee:
    """A small CNN trained on a dataset's training split, independently of every run, that
    judges whether a hallucination looks like its class.

    Deterministic (seeded, one thread, fixed batch order) and cheap: `epochs` passes of Adam
    over the training images, each image shifted by up to ±2 pixels so that the judge does
    not hinge on exact positions.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels=(16, 32),
                 hidden_dim: int = 64, epochs: int = 3, lr: float = 2e-3,
                 batch_size: int = 64, seed: int = 0) -> None:
        from bnstudy.nets import CNN

        self.settings = {"channels": tuple(channels), "hidden_dim": hidden_dim, "epochs": epochs,
                         "lr": lr, "batch_size": batch_size, "seed": seed}
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            self.net = CNN(input_shape, num_classes, channels=channels, hidden_dim=hidden_dim,
                           norm="none")
        finally:
            torch.random.set_rng_state(generator_state)
        self.net.eval().requires_grad_(False)
        self.accuracy = math.nan  # on the images `fit` was given for checking

    def fit(self, x: torch.Tensor, y: torch.Tensor, check: tuple[torch.Tensor, torch.Tensor]
            | None = None) -> Referee:
        """Trains on normalised images `x` and labels `y`; `check`: (x, y) to measure
        `accuracy` on."""
        generator = torch.Generator().manual_seed(self.settings["seed"])
        threads = torch.get_num_threads()
        self.net.train().requires_grad_(True)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.settings["lr"])
        try:
            torch.set_num_threads(1)
            for _ in range(self.settings["epochs"]):
                order = torch.randperm(len(y), generator=generator)
                for idx in order.split(self.settings["batch_size"]):
                    dy, dx = torch.randint(-2, 3, (2,), generator=generator).tolist()
                    batch = torch.roll(x[idx], shifts=(dy, dx), dims=(-2, -1))
                    loss = nn.functional.cross_entropy(self.net(batch), y[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            torch.set_num_threads(threads)
            self.net.eval().requires_grad_(False)
        if check is not None:
            self.accuracy = float((self.probabilities(check[0]).argmax(1) == check[1])
                                  .float().mean())
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


def predict(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """The model's class probabilities (N, K) for normalised images, in eval mode (BatchNorm on
    its running statistics); the modules' modes are restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return torch.cat([model(chunk).softmax(1) for chunk in x.split(batch)])
    finally:
        for module, training in modes.items():
            module.train(training)


def recognised(probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For class images in class order, given a judge's class probabilities (K, K): whether
    each is read as its class, and the probability the judge gives its class."""
    own = torch.arange(len(probabilities))
    return probabilities.argmax(1) == own, probabilities[own, own]
