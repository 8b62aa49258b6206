"""Typed settings of one distillation run; `search/` turns space files into these."""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from trainable import models
from trainable.checkpoint import load_weights


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher: a zoo arch or `module:callable`, its keyword arguments, its task and its weights file."""

    arch: str
    args: tuple[tuple[str, Any], ...] = ()
    task: str = "segmentation"
    checkpoint: Path | None = None
    strip_prefix: str | None = None
    search_path: Path | None = None  # the space file's folder: a `module:callable` is imported from here first

    @classmethod
    def of(cls, arch: str, task: str | None = None, **fields) -> TeacherSettings:
        """Settings from keyword arguments (`args` a mapping); a zoo arch's task is the zoo's."""
        args = fields.pop("args", {})
        if task is None:
            task = models.info(arch).task if models.is_zoo(arch) else "classification"
        return cls(arch, tuple(sorted(dict(args).items())), task, **fields)

    @property
    def arch_args(self) -> dict[str, Any]:
        return dict(self.args)

    @property
    def num_classes(self) -> int | None:
        """The classes the teacher's builder was asked for, when its arguments say."""
        return self.arch_args.get("num_classes")

    def structure(self) -> nn.Module:
        """The teacher's modules on the meta device: instant at any size, no weights read."""
        with torch.device("meta"):
            return models.build(self.arch, self.search_path, **self.arch_args)

    def build(self, load: bool = True) -> nn.Module:
        """The teacher in eval mode with frozen weights, loaded from `checkpoint` when `load` and one is set."""
        teacher = models.build(self.arch, self.search_path, **self.arch_args)
        if load and self.checkpoint is not None:
            load_weights(teacher, self.checkpoint, strip_prefix=self.strip_prefix)
        teacher.eval().requires_grad_(False)
        return teacher


@dataclass(frozen=True)
class DistillSettings:
    epochs: int = 10
    steps_per_epoch: int | None = None
    w_hint: float = 1.0
    w_kd: float = 1.0
    w_ce: float = 0.0
    w_edge: float = 0.0
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
    init: Literal["library", "scratch"] = "library"
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


def describe_device(device: torch.device) -> str:
    """What a latency was measured on: the GPU's name, or the CPU's architecture and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
