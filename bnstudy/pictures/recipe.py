"""The hallucination recipe: one input per class that a trained network finds most typical of
that class, optimised from seeded noise (`hallucinate`). `bnstudy.pictures.drawing.Hallucinator`
applies it with a run's data, for the `Hallucinations` callback during training and for
`python -m bnstudy.draw` after it; `docs/pictures.md` explains each knob.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bnstudy.pictures.measures import ImageStats, gaussian_blur


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
      their per-pixel std (`bnstudy.pictures.measures.ImageStats`): the image varies where the data
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
                                 "statistics (stats=ImageStats.of(images))")
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
