"""Typed settings of one distillation run; `search/` turns space files into these."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from trainable import models
from trainable.checkpoint import load_weights


@dataclass(frozen=True)
class TeacherSettings:
    arch: str
    num_classes: int = 19
    width: float = 1.0
    checkpoint: Path | None = None

    @property
    def arch_args(self) -> dict:
        return {"num_classes": self.num_classes, "width": self.width}

    def build(self, load: bool = True) -> nn.Module:
        """The teacher in eval mode with frozen weights, loaded from `checkpoint` when `load` and one is set."""
        teacher = models.build(self.arch, **self.arch_args)
        if load and self.checkpoint is not None:
            load_weights(teacher, self.checkpoint)
        teacher.eval().requires_grad_(False)
        return teacher


@dataclass(frozen=True)
class DistillSettings:
    epochs: int = 10
    steps_per_epoch: int | None = None
    w_hint: float = 1.0
    w_kd: float = 1.0
    w_ce: float = 0.0
    temperature: float = 1.0
    schedule: Literal["oneshot", "progressive"] = "oneshot"
    train: Literal["plugged", "all"] = "plugged"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_schedule: Literal["cosine", "poly"] = "cosine"
    warmup_steps: int = 0
    accumulate: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
