"""Teachers: the zoo's builders by name, or any `module:callable` that returns an nn.Module.

`build(arch, **args)` builds either. A zoo arch takes `num_classes` and `width` (every channel count
scaled); a `module:callable` is called with the keyword arguments given. Its module is imported from
`search_path` (the space file's folder) first, then from `sys.path`.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
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


def is_zoo(arch: str) -> bool:
    return ":" not in arch


def info(arch: str) -> ArchInfo:
    if arch not in _REGISTRY:
        raise InputError(f"unknown arch {arch!r}: expected one of {', '.join(archs())}, or module:callable")
    return _REGISTRY[arch]


@dataclass(frozen=True)
class Origin:
    """Where a `module:callable` arch was imported from: what a fresh process needs to import it again."""

    module: str
    file: str | None
    root: str | None  # the folder the module was found under (a sys.path entry)


def _import(module: str, search_path: Path | None):
    folders = [str(search_path)] if search_path is not None else []
    sys.path[:0] = folders
    try:
        return importlib.import_module(module)
    except ImportError as err:
        where = f" (looked beside {search_path}, then on sys.path)" if search_path is not None else " (on sys.path)"
        raise InputError(f"arch module {module!r}: cannot import it{where}: {err}") from None
    finally:
        del sys.path[: len(folders)]


def resolve(arch: str, search_path: Path | None = None) -> tuple[Callable[..., nn.Module], Origin]:
    """The callable named by `module:callable` and where its module came from."""
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise InputError(f"arch {arch!r}: expected a zoo name or module:callable (e.g. torchvision.models:resnet50)")
    module = _import(module_name, search_path)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"arch {arch!r}: module {module_name} ({getattr(module, '__file__', '?')}) has no {attr}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"arch {arch!r}: {attr} is not callable")
    file = getattr(module, "__file__", None)
    root = None
    if file is not None:
        depth = module_name.count(".") + (Path(file).name == "__init__.py")
        root = str(Path(file).resolve().parents[depth])
    return target, Origin(module_name, file and str(Path(file).resolve()), root)


def build(arch: str, search_path: Path | None = None, **kwargs) -> nn.Module:
    """Build teacher `arch` with random weights (a zoo name, or `module:callable` called with `kwargs`)."""
    if is_zoo(arch):
        if kwargs.get("width", 1.0) <= 0:
            raise InputError(f"width must be > 0, got {kwargs['width']}")
        return info(arch).builder(**kwargs)
    builder, _ = resolve(arch, search_path)
    try:
        model = builder(**kwargs)
    except TypeError as err:
        raise InputError(f"arch {arch!r} called with {kwargs}: {err}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"arch {arch!r} returned a {type(model).__name__}; expected an nn.Module")
    return model


from trainable.models import deepwv3plus, gscnn, tv  # noqa: E402,F401  (registers the builders)
