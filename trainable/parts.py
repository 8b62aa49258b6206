"""Which parts of a student train (`distill.train`), and how its BatchNorm layers behave meanwhile (`distill.bn`).

Order is the forward's: `record_calls` runs one forward of a sample input and notes when each module's
calls start and end. Registration order (`named_modules`) need not be the order a forward runs modules in,
so nothing here guesses it from names.

- `plugged`: the plugs only.
- `downstream`: every module with parameters of its own whose first call starts at or after the first
  plugged layer's; what runs before it stays the teacher's and is replayed from the teacher's forward.
- `all`: every parameter.

BatchNorm layers that see changed inputs (those from the first plugged layer on, every one under `all`):

- `batch`: normalise with the batch's statistics while training and update their running statistics.
- `frozen`: keep the teacher's running statistics (eval mode) throughout.
- `recalibrate`: frozen while training; before each evaluation their running statistics are estimated
  anew over unlabeled images (forward passes only, no gradients).
"""
from __future__ import annotations

import contextlib
from itertools import count
from typing import Iterable, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainable.modes import in_mode

Train = Literal["plugged", "downstream", "all"]
BatchNormMode = Literal["batch", "frozen", "recalibrate"]
Calls = dict[str, list[int]]


@torch.no_grad()
def record_calls(model: nn.Module, sample: Tensor) -> Calls:
    """For every named submodule the forward of `sample` runs: the ticks of its calls' starts and ends, in order."""
    calls: Calls = {}
    clock = count()
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: calls.setdefault(n, []).append(next(clock))))
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: calls[n].append(next(clock))))
    try:
        with in_mode(model, training=False):
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def start_of(calls: Calls, layers: Iterable[str]) -> int | None:
    """The tick at which the first of `layers` to run starts; None when the forward runs none of them."""
    ticks = [calls[name][0] for name in layers if name in calls]
    return min(ticks) if ticks else None


def in_forward_order(calls: Calls, layers: Iterable[str]) -> list[str]:
    """`layers` sorted by the start of their first call (layers the forward never runs last, in the given order)."""
    never = float("inf")
    return sorted(layers, key=lambda name: calls[name][0] if name in calls else never)


def downstream(model: nn.Module, calls: Calls, start: int) -> list[str]:
    """Modules with parameters of their own whose first call starts at or after `start`, in forward order."""
    owners = [name for name, module in model.named_modules()
              if name in calls and calls[name][0] >= start and any(True for _ in module.parameters(recurse=False))]
    return in_forward_order(calls, owners)


def configure(model: nn.Module, train: Train, plugged: Sequence[str], calls: Calls) -> None:
    """Set `requires_grad` for the trainable set `train`."""
    model.requires_grad_(train == "all")
    if train == "all" or not plugged:
        return
    names = plugged if train == "plugged" else downstream(model, calls, start_of(calls, plugged))
    for name in names:
        model.get_submodule(name).requires_grad_(True)


def affected_batchnorms(model: nn.Module, train: Train, plugged: Sequence[str], calls: Calls) -> list[str]:
    """BatchNorm layers whose inputs the plugs (or, under `all`, training) change."""
    start = 0 if train == "all" else start_of(calls, plugged)
    if start is None:
        return []
    return [name for name, module in model.named_modules()
            if isinstance(module, _BatchNorm) and name in calls and calls[name][0] >= start]


def shared_prefix(model: nn.Module, calls: Calls, start: int) -> list[str]:
    """Largest frozen modules that run, once each, before `start`: their outputs equal the teacher's, so the
    student can take them from the teacher's forward instead of computing them again."""
    modules = dict(model.named_modules())
    candidates = {
        name for name, ticks in calls.items()
        if len(ticks) == 2 and ticks[1] < start and name in modules
        and not any(p.requires_grad for p in modules[name].parameters())
    }
    return [name for name in candidates if name.rpartition(".")[0] not in candidates]


def batch_statistics(model: nn.Module, names: Sequence[str]) -> contextlib.AbstractContextManager[None]:
    """The named BatchNorm layers in train mode (batch statistics, running statistics updated) for the block."""
    return in_mode(*(model.get_submodule(name) for name in names), training=True)


@torch.no_grad()
def recalibrate(model: nn.Module, names: Sequence[str], batches: Iterable[Tensor]) -> int:
    """Estimate the named BatchNorm layers' running statistics anew: their plain average over `batches`
    (forward passes, no gradients). Returns the number of images seen; with none, nothing changes."""
    modules = [model.get_submodule(name) for name in names]
    saved = [{key: value.clone() for key, value in module.state_dict().items()} for module in modules]
    momenta = [module.momentum for module in modules]
    for module in modules:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over every batch
    seen = 0
    try:
        with batch_statistics(model, names):
            for images in batches:
                model(images)
                seen += images.shape[0]
    finally:
        for module, momentum, state in zip(modules, momenta, saved):
            module.momentum = momentum
            if not seen:
                module.load_state_dict(state)
    return seen
