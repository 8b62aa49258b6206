"""Optimizer and learning-rate schedule (linear warm-up, then cosine or poly decay) per step."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from trainable.config import DistillSettings


def make_optimizer(params: Iterable[nn.Parameter], settings: DistillSettings) -> torch.optim.Optimizer:
    params = list(params)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "poly":
        return (1.0 - progress) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, settings: DistillSettings, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(settings.warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, settings.lr_schedule)
    )
