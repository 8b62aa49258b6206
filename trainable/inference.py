"""Segmentation logits of whole images by NVIDIA's recipe: whole or sliding-window, flipped, multi-scale."""
from __future__ import annotations

import math
from itertools import product
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from data.settings import EvalSettings

Forward = Callable[[Tensor], Tensor]  # images (N, 3, h, w) -> logits (N, C, h', w')


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins at multiples of `stride`; the last one shifted back to end at `length` (tile <= length)."""
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def _sliding(model: Forward, images: Tensor, crop: int, overlap: float) -> Tensor:
    height, width = images.shape[-2:]
    tile_h, tile_w = min(crop, height), min(crop, width)
    stride = max(1, math.ceil(crop * (1 - overlap)))
    total: Tensor | None = None
    count = torch.zeros(height, width, device=images.device)
    for y, x in product(tile_starts(height, tile_h, stride), tile_starts(width, tile_w, stride)):
        logits = model(images[..., y:y + tile_h, x:x + tile_w]).float()
        if total is None:
            total = logits.new_zeros(*logits.shape[:2], height, width)
        total[..., y:y + tile_h, x:x + tile_w] += logits
        count[y:y + tile_h, x:x + tile_w] += 1
    return total / count


@torch.no_grad()
def infer_logits(model: Forward, images: Tensor, settings: EvalSettings) -> Tensor:
    """Raw logits (N, C, H, W) in float32 for normalised images (N, 3, H, W), NVIDIA's recipe (model in eval mode).

    Per scale the images are resized bilinearly (antialiased when shrinking, like PIL) and, in sliding mode,
    cut into tiles of crop * max(scale, 1) px; tile logits are averaged per pixel, resized back (bilinear,
    half-pixel, like OpenCV), flipped back, and averaged over flips and scales.
    """
    height, width = images.shape[-2:]
    flips = (False, True) if settings.flip else (False,)
    total: Tensor | None = None
    for scale in settings.scales:
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )
        for flipped in flips:
            view = scaled.flip(-1) if flipped else scaled
            if settings.mode == "sliding":
                logits = _sliding(model, view, round(settings.crop * max(scale, 1.0)), settings.overlap)
            else:
                logits = model(view).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
    return total / (len(settings.scales) * len(flips))
