"""Image grids: first-layer weights as tiles, and images labelled with their class names."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

LABEL_HEIGHT = 14  # pixels of the strip that carries a tile's name
MIN_TILE_WIDTH = 96  # tiles are enlarged (nearest neighbour) until a class name fits


def weight_grid(weight: torch.Tensor, input_shape: Sequence[int], num_units: int = 64,
                padding: int = 2) -> torch.Tensor:
    """The first `num_units` rows of a weight (or change) as a (3, H, W) grid in [0, 1],
    ceil(sqrt(n)) tiles a row: a tile per Linear row (shaped `input_shape`) or Conv2d filter,
    each scaled on its own, w / (2 max|w|) + 0.5 (mid-grey is 0)."""
    shape = weight.shape[1:] if weight.dim() == 4 else input_shape
    rows = weight.detach()[:num_units].float().cpu().flatten(1)
    bound = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    tiles = (rows / (2 * bound) + 0.5).view(-1, *shape)
    return make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=padding)


def name_strip(name: str, width: int) -> torch.Tensor:
    """A (3, LABEL_HEIGHT, width) white strip in [0, 1] with `name` in black."""
    strip = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    ImageDraw.Draw(strip).text((2, 1), name, fill="black", font=ImageFont.load_default())
    return pil_to_tensor(strip).float() / 255


def labelled_grid(images: torch.Tensor, names: Sequence[str], nrow: int,
                  padding: int = 2) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] as one grid, each enlarged under its `name_strip`."""
    scale = max(1, math.ceil(MIN_TILE_WIDTH / images.shape[-1]))
    big = images.detach().cpu().repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    big = big.expand(-1, 3, -1, -1)
    tiles = [torch.cat([name_strip(name, big.shape[-1]), tile], dim=1)
             for name, tile in zip(names, big, strict=True)]
    return make_grid(torch.stack(tiles), nrow=nrow, padding=padding)
