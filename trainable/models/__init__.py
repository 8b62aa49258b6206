"""The teacher zoo: builders registered by name, built with `build(arch, num_classes=..., width=...)`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

from data.errors import InputError

Task = Literal["segmentation", "classification"]


@dataclass(frozen=True)
class ArchInfo:
    name: str
    task: Task
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ArchInfo] = {}


def register(name: str, task: Task) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder to the zoo under `name`."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ArchInfo(name, task, builder)
        return builder

    return add


def archs() -> list[str]:
    return sorted(_REGISTRY)


def info(arch: str) -> ArchInfo:
    if arch not in _REGISTRY:
        raise InputError(f"unknown arch {arch!r}: expected one of {', '.join(archs())}")
    return _REGISTRY[arch]


def build(arch: str, num_classes: int = 19, width: float = 1.0, **kwargs) -> nn.Module:
    """Build teacher `arch` with random weights; `width` scales every channel count."""
    if width <= 0:
        raise InputError(f"width must be > 0, got {width}")
    return info(arch).builder(num_classes=num_classes, width=width, **kwargs)


from trainable.models import deepwv3plus, tv  # noqa: E402,F401  (registers the builders)
