"""The teacher's replaceable layers: every nn.Conv2d with its shape, parameter count and FLOPs.

FLOPs come from one forward of a zeros image under `torch.utils.flop_counter.FlopCounterMode`
(2 per multiply-add, forward only). The forward runs on the meta device through
`torch.func.functional_call` (shapes only, instant even for a full-width teacher at 1024x2048,
and the model's own tensors are not touched); a model whose forward cannot run on meta tensors
falls back to a real forward on the device of its parameters.
"""
from __future__ import annotations

import fnmatch
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from trainable.modes import in_mode
from trainable.tasks import read_logits


@dataclass(frozen=True)
class Layer:
    """One conv of a model; `padding` is a pair of ints, or "same"/"valid" as given to nn.Conv2d."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int] | str
    groups: int
    bias: bool
    params: int
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every nn.Conv2d of `model` by dotted name, in named_modules order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def _example_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _device(model: nn.Module) -> torch.device:
    return next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))


def _meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta copies of every parameter and buffer: a forward through them computes shapes only."""
    tensors = {name: torch.empty_like(t, device="meta") for name, t in model.named_parameters(remove_duplicate=False)}
    return tensors | {name: torch.empty_like(t, device="meta") for name, t in model.named_buffers(remove_duplicate=False)}


def _forward(model: nn.Module, image: torch.Tensor, on_meta: bool) -> None:
    if not on_meta:
        model(image)
        return
    functional_call(model, _meta_state(model), (image.to("meta"),))


def measure(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> tuple[int, dict[str, int]]:
    """Total forward FLOPs of `model` on a (1, in_channels, H, W) image and the FLOPs of each conv by name."""
    named = convs(model)
    image = torch.zeros(1, in_channels, *input_size, dtype=_example_dtype(model), device=_device(model))
    with in_mode(model, training=False):
        try:
            return _count(model, named, image, on_meta=True)
        except (NotImplementedError, RuntimeError):
            return _count(model, named, image, on_meta=False)


def _count(model: nn.Module, named: dict[str, nn.Conv2d], image: torch.Tensor, on_meta: bool) -> tuple[int, dict[str, int]]:
    per_conv: dict[str, int] = defaultdict(int)
    started: dict[str, int] = {}
    counter = FlopCounterMode(display=False)

    def pre_hook(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            started[name] = counter.get_total_flops()

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            per_conv[name] += counter.get_total_flops() - started.pop(name)

        return hook

    handles = []
    for name, conv in named.items():
        handles.append(conv.register_forward_pre_hook(pre_hook(name)))
        handles.append(conv.register_forward_hook(post_hook(name)))
    try:
        with torch.no_grad(), counter:
            _forward(model, image, on_meta)
    finally:
        for handle in handles:
            handle.remove()
    return counter.get_total_flops(), {name: per_conv.get(name, 0) for name in named}


def output_classes(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> int:
    """The number of classes (channel 1 of the logits) `model` outputs, from one forward on the meta device."""
    image = torch.zeros(1, in_channels, *input_size, dtype=_example_dtype(model), device="meta")
    with in_mode(model, training=False), torch.no_grad():
        return int(read_logits(functional_call(model, _meta_state(model), (image,))).shape[1])


def count_flops(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> int:
    """Forward FLOPs of the whole model on one (1, in_channels, H, W) image, 2 per multiply-add."""
    return measure(model, input_size, in_channels)[0]


def layers_from(model: nn.Module, flops: dict[str, int]) -> list[Layer]:
    """The Layer records of `model`'s convs with the given per-conv FLOPs."""
    return [
        Layer(
            name=name,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            dilation=tuple(conv.dilation),
            padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
            groups=conv.groups,
            bias=conv.bias is not None,
            params=count_params(conv),
            flops=flops[name],
        )
        for name, conv in convs(model).items()
    ]


def inventory(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> list[Layer]:
    """Every nn.Conv2d of `model` in module order, with its FLOPs at `input_size` (H, W)."""
    return layers_from(model, measure(model, input_size, in_channels)[1])


def select(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names matching any glob pattern (`*` crosses dots), in the order of `names`, without duplicates."""
    chosen = dict.fromkeys(name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns))
    return list(chosen)


def unmatched_patterns(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The patterns that match none of the names."""
    names = list(names)
    return [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in names)]
