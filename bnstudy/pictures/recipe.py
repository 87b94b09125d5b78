"""The hallucination recipe: one input per class that a trained network finds most typical of
that class, optimised from seeded noise (`docs/pictures.md` explains each knob)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bnstudy.config import picture_range
from bnstudy.pictures.measures import ImageStats, frozen, gaussian_blur

OBJECTIVES = ("margin", "logit", "contrast", "log_softmax")
PARAMETRISATIONS = ("data", "data_colour", "pixel", "fourier")


def check(objective: str, parametrisation: str, **values: float | None) -> None:
    """A ValueError naming an unknown objective or parametrisation or a value out of range."""
    for key, value, known in (("objective", objective, OBJECTIVES),
                              ("parametrisation", parametrisation, PARAMETRISATIONS)):
        if value not in known:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(known)}")
    for key, value in values.items():
        if need := picture_range(key, value):
            raise ValueError(f"{key}={value} is out of range; it must be {need}")


def class_score(logits: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Per image, what a hallucination maximises of the logits z for its class c: `margin`
    z_c − logsumexp(others), `logit` z_c, `contrast` z_c − mean(others), `log_softmax` log p_c."""
    check(objective, "pixel")
    own = logits.gather(1, targets[:, None])[:, 0]
    if objective == "margin":
        return own - logits.scatter(1, targets[:, None], float("-inf")).logsumexp(1)
    if objective == "contrast":
        return own - logits.scatter(1, targets[:, None], 0.0).sum(1) / (logits.shape[1] - 1)
    if objective == "log_softmax":
        return logits.log_softmax(1).gather(1, targets[:, None])[:, 0]
    return own


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Each image's sum of absolute neighbour differences."""
    return x.diff(dim=-1).abs().sum(dim=(1, 2, 3)) + x.diff(dim=-2).abs().sum(dim=(1, 2, 3))


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
    """One normalised input per class (K, *input_shape) that the model finds most typical of
    it: `seeds` noise starts a class, in `parametrisation`'s deviation d (`data*`: needs
    `stats`), take `steps` Adam steps on −`class_score` + l2 ||x||² + tv TV(x), rolled by up
    to ±`jitter` px; every `blur_every`-th step d is blurred; d is held to an RMS of `size`, the
    image clamped to [low, high]. `steps=0`: the start; `lr=0`: no model. The model and torch's
    global RNG are left alone (docs/pictures.md)."""
    check(objective, parametrisation, steps=steps, seeds=seeds, jitter=jitter,
          blur_every=blur_every)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    low_t, high_t = (torch.tensor(v, device=device, dtype=torch.float32).view(1, -1, 1, 1)
                     for v in (low, high))
    noise = (torch.randn((seeds * num_classes, *input_shape), generator=generator)
             * noise_std).to(device)
    if parametrisation.startswith("data"):
        if stats is None:
            raise ValueError(f"parametrisation={parametrisation!r} needs the training images' "
                             "statistics (stats=ImageStats.of(images))")
        colour = stats.colour if parametrisation == "data_colour" else torch.eye(len(stats.colour))
        stats = ImageStats(stats.mean.to(noise), stats.std.to(noise), colour.to(noise))
    else:
        stats = None
    shape = input_shape[-2:]
    scale = 1 / (torch.fft.fftfreq(shape[0], device=device)[:, None] ** 2  # fourier: 1/|f|
                 + torch.fft.rfftfreq(shape[1], device=device)[None, :] ** 2
                 ).sqrt().clamp_min(1 / max(shape))

    def to_param(d: torch.Tensor) -> torch.Tensor:
        if parametrisation == "fourier":
            return torch.view_as_real(torch.fft.rfft2(d, norm="ortho") / scale).contiguous()
        return d.clone()

    def deviation() -> torch.Tensor:
        if parametrisation == "fourier":
            return torch.fft.irfft2(torch.view_as_complex(param) * scale, s=shape, norm="ortho")
        return param

    def images(d: torch.Tensor, budget: float | None) -> torch.Tensor:
        d = rescale(d, budget)
        return (d if stats is None else stats.images(d)).clamp(low_t, high_t)

    def set_images(x: torch.Tensor) -> None:
        with torch.no_grad():
            param.copy_(to_param(x if stats is None else stats.deviation(x)))

    param = to_param(noise).requires_grad_()
    if steps == 0:
        with torch.no_grad():
            return images(deviation().view(seeds, num_classes, *input_shape).mean(0), None)
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=generator).tolist()
    targets = torch.arange(num_classes, device=device).repeat(seeds)
    set_images(images(deviation().detach(), None))
    optimizer = torch.optim.Adam([param], lr=lr)
    with frozen(model, threads=1), torch.enable_grad():
        for step, shift in enumerate(shifts, 1):
            if lr:  # lr=0: only what the recipe does to the noise, no model needed
                optimizer.zero_grad()
                x = deviation() if stats is None else stats.images(deviation())
                loss = -class_score(model(x.roll(shift, (-2, -1))), targets, objective).sum()
                if l2:
                    loss = loss + l2 * x.pow(2).sum()
                if tv:
                    loss = loss + tv * total_variation(x).sum()
                loss.backward()
                optimizer.step()
            with torch.no_grad():  # (a sigma of 0 leaves d unblurred)
                sigma = blur_sigma if blur_every and step % blur_every == 0 else 0.0
                set_images(images(gaussian_blur(deviation(), sigma), size))
    with torch.no_grad():
        return images(deviation().view(seeds, num_classes, *input_shape).mean(0), size)
