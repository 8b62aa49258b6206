"""Images for TensorBoard: input, teacher and student predictions side by side."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from data.labels import CLASS_COLORS
from data.settings import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD


def colorize(labels: Tensor) -> Tensor:
    """(H, W) class indices -> (3, H, W) uint8 in the Cityscapes palette (black beyond it)."""
    palette = torch.zeros(256, 3, dtype=torch.uint8)
    palette[: len(CLASS_COLORS)] = torch.tensor(CLASS_COLORS, dtype=torch.uint8)
    return palette[labels.long().clamp(0, 255).cpu()].permute(2, 0, 1)


def denormalize(image: Tensor) -> Tensor:
    """(3, H, W) normalised float -> (3, H, W) uint8."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (image.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def prediction_grid(images: Tensor, teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """One row per image: input, teacher argmax, student argmax, as a (3, H', W') uint8 grid."""
    tiles = []
    for image, t, s in zip(images, teacher_logits, student_logits):
        tiles += [denormalize(image), colorize(t.argmax(0)), colorize(s.argmax(0))]
    return make_grid(tiles, nrow=3, padding=2)
