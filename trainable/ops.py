"""Cheap ops: drop-in replacements for one nn.Conv2d with the same in/out channels and output shape.

Every replacement is a `Plug` (an nn.Sequential of convs). Its spatial (kxk) conv takes the
teacher conv's kernel, stride, dilation, padding and padding mode; its 1x1 convs have stride 1
and no padding, so the output shape equals the teacher's for any input size. The teacher's bias,
if any, goes on the last conv; the others have none. A teacher conv with `groups = G` is replaced
group by group (no channel mixing across its groups): every conv of the plug has a multiple of G
groups.

- `dws`: depthwise kxk (in -> in, groups = in), then pointwise 1x1 in -> out (groups G).
- `group<g>`: kxk in -> out with G*g groups, then pointwise 1x1 out -> out (groups G);
  G*g must divide in and out.
- `bottleneck<b>`: 1x1 in -> m with m = in // b, kxk m -> m, 1x1 m -> out (all groups G);
  needs b <= in and m divisible by G.
- `lowrank<r>`: kxk in -> r*G (groups G), then 1x1 r*G -> out (groups G); 1 <= r <= min(out/G, in/G*kh*kw).

Every op but `keep` starts from the teacher conv's weights, data-free: its convs are set to the best
approximation of the teacher's kernel that their shape can hold, by truncated SVD.

- `dws`: per input channel, the rank-1 SVD of the (out, kh*kw) slice of the kernel that reads it
  (the depthwise filter and the pointwise column).
- `group<g>`: per spatial group, the rank-(out/(G*g)) SVD of the kernel's block that reads its input
  channels (the group's filters and its pointwise columns).
- `bottleneck<b>`: per teacher group, a truncated higher-order SVD (Tucker-2): the reduce and expand
  1x1 convs are the leading singular vectors of the kernel's input and output unfoldings, the kxk conv
  is the kernel projected onto them. Where the output side has fewer channels than the bottleneck,
  the extra channels keep PyTorch's initialisation and expand from zero weights.
- `lowrank<r>`: per teacher group, the rank-r SVD of the (out/G, in/G*kh*kw) kernel matrix (weights
  sqrt(S)*Vh and U*sqrt(S)); at the largest r it reproduces the teacher conv to float precision.

The teacher's bias goes on the last conv. A 3x3 conv replaced by `dws` with this start keeps much
of its network's accuracy before any training (measured: a real CIFAR ResNet-20 with `dws` on layer3's
three `conv2` scores 57% top-1 at the start, against 10% from PyTorch's random initialisation).

Each op is one `OpSpec` in a registry (`register`): its name, whether it takes a number, what stops it
fitting a conv, the convs it builds and, optionally, its initialisation from the teacher's conv.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from data.errors import InputError
from data.names import KEEP

class Plug(nn.Sequential):
    """The convs that replace one teacher conv; `op` names the cheap op they implement."""

    def __init__(self, op: str, layers: OrderedDict[str, nn.Conv2d]):
        super().__init__(layers)
        self.op = op

    def extra_repr(self) -> str:
        return f"op={self.op!r}"


Layers = Callable[[nn.Conv2d, "int | None", torch.device], "OrderedDict[str, nn.Conv2d]"]


@dataclass(frozen=True)
class OpSpec:
    """One kind of op: its name (`<name>` or `<name><n>`), what stops it fitting a conv, its convs, its init."""

    name: str
    takes_arg: bool
    misfit: Callable[[nn.Conv2d, "int | None"], "str | None"]  # why the op does not fit the conv, or None
    layers: Layers | None  # None: the op replaces nothing (keep)
    init: Callable[[Plug, nn.Conv2d, int], None] | None = None  # from the teacher's weights, when it can


_OPS: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    _OPS[spec.name] = spec
    return spec


def op_names() -> list[str]:
    """How each registered op is written, e.g. `keep`, `group<n>`."""
    return [spec.name + ("<n>" if spec.takes_arg else "") for spec in _OPS.values()]


def parse_op(op: str) -> tuple[str, int | None]:
    """Split an op name into its kind and its integer argument (None for ops without one)."""
    match = re.fullmatch(r"([a-z]+?)([0-9]*)", op) if isinstance(op, str) else None
    spec = _OPS.get(match.group(1)) if match else None
    if spec is None or spec.takes_arg != bool(match.group(2)):
        raise InputError(f"unknown op {op!r}: expected one of {', '.join(op_names())}")
    if not spec.takes_arg:
        return spec.name, None
    arg = int(match.group(2))
    if arg < 1:
        raise InputError(f"op {op!r}: the number after {spec.name} must be >= 1")
    return spec.name, arg


def max_rank(conv: nn.Conv2d) -> int:
    """The largest rank `lowrank` accepts for `conv` (full rank of one group's kernel matrix)."""
    kh, kw = conv.kernel_size
    return min(conv.out_channels // conv.groups, conv.in_channels // conv.groups * kh * kw)


def check_op(conv: nn.Conv2d, op: str) -> tuple[str, int | None]:
    """Parse `op` and check it fits `conv`; InputError naming the op and the reason otherwise."""
    kind, arg = parse_op(op)
    reason = _OPS[kind].misfit(conv, arg)
    if reason is not None:
        raise InputError(f"op {op!r}: {reason}")
    return kind, arg


def _conv(
    cin: int, cout: int, groups: int, bias: bool, like: nn.Conv2d | None, device: torch.device, dtype: torch.dtype
) -> nn.Conv2d:
    """A 1x1 conv, or a conv with the spatial settings of `like`."""
    if like is None:
        return nn.Conv2d(cin, cout, 1, groups=groups, bias=bias, device=device, dtype=dtype)
    return nn.Conv2d(
        cin, cout, like.kernel_size, stride=like.stride, padding=like.padding, dilation=like.dilation,
        groups=groups, bias=bias, padding_mode=like.padding_mode, device=device, dtype=dtype,
    )


def _fits_always(conv: nn.Conv2d, arg: int | None) -> str | None:
    return None


def _group_misfit(conv: nn.Conv2d, arg: int) -> str | None:
    cin, cout, groups = conv.in_channels, conv.out_channels, conv.groups
    if cin % (groups * arg) or cout % (groups * arg):
        of_groups = f" ({groups} teacher groups times {arg})" if groups > 1 else ""
        return f"in_channels {cin} and out_channels {cout} must both be divisible by {groups * arg}{of_groups}"
    return None


def _bottleneck_misfit(conv: nn.Conv2d, arg: int) -> str | None:
    if arg > conv.in_channels:
        return f"the factor {arg} is larger than in_channels {conv.in_channels}"
    if (conv.in_channels // arg) % conv.groups:
        return f"{conv.in_channels // arg} reduced channels are not divisible by the teacher's {conv.groups} groups"
    return None


def _lowrank_misfit(conv: nn.Conv2d, arg: int) -> str | None:
    return f"rank {arg} exceeds the full rank {max_rank(conv)} of this conv" if arg > max_rank(conv) else None


def _dws(conv: nn.Conv2d, arg: None, device: torch.device) -> OrderedDict[str, nn.Conv2d]:
    cin, cout, g, bias, dtype = conv.in_channels, conv.out_channels, conv.groups, conv.bias is not None, conv.weight.dtype
    return OrderedDict(
        spatial=_conv(cin, cin, cin, False, conv, device, dtype),
        pointwise=_conv(cin, cout, g, bias, None, device, dtype),
    )


def _group(conv: nn.Conv2d, arg: int, device: torch.device) -> OrderedDict[str, nn.Conv2d]:
    cin, cout, g, bias, dtype = conv.in_channels, conv.out_channels, conv.groups, conv.bias is not None, conv.weight.dtype
    return OrderedDict(
        spatial=_conv(cin, cout, g * arg, False, conv, device, dtype),
        pointwise=_conv(cout, cout, g, bias, None, device, dtype),
    )


def _bottleneck(conv: nn.Conv2d, arg: int, device: torch.device) -> OrderedDict[str, nn.Conv2d]:
    cin, cout, g, bias, dtype = conv.in_channels, conv.out_channels, conv.groups, conv.bias is not None, conv.weight.dtype
    mid = cin // arg
    return OrderedDict(
        reduce=_conv(cin, mid, g, False, None, device, dtype),
        spatial=_conv(mid, mid, g, False, conv, device, dtype),
        expand=_conv(mid, cout, g, bias, None, device, dtype),
    )


def _lowrank(conv: nn.Conv2d, arg: int, device: torch.device) -> OrderedDict[str, nn.Conv2d]:
    cout, g, bias, dtype = conv.out_channels, conv.groups, conv.bias is not None, conv.weight.dtype
    return OrderedDict(
        spatial=_conv(conv.in_channels, arg * g, g, False, conv, device, dtype),
        pointwise=_conv(arg * g, cout, g, bias, None, device, dtype),
    )


def _factors(kernel: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U_r*sqrt(S_r) and sqrt(S_r)*Vh_r of `kernel`'s truncated SVD (their product is its best rank-r approximation).

    Computed in float64 from the eigendecomposition of the smaller Gram matrix, several times faster
    than linalg.svd on the wide kernels of big convs. The product is exact at full rank (a projection
    onto an orthonormal basis); components with a negligible singular value are set to zero. A rank
    above the matrix's smaller side gives that many components only.
    """
    wide = kernel.shape[0] <= kernel.shape[1]
    matrix = kernel if wide else kernel.T
    eigenvalues, vectors = torch.linalg.eigh(matrix @ matrix.T)
    vectors = vectors.flip(-1)[:, :rank]
    root = eigenvalues.flip(-1)[:rank].clamp_min(0).sqrt().sqrt()
    inverse = torch.where(root > root[0] * 1e-4, 1 / root, torch.zeros_like(root))
    near, far = vectors * root, (vectors.T @ matrix) * inverse[:, None]
    return (near, far) if wide else (far.T, near.T)


def _leading(matrix: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` leading left singular vectors of `matrix` as columns (fewer when it has fewer rows)."""
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)
    return vectors.flip(-1)[:, :count]


def _group_kernels(conv: nn.Conv2d) -> list[torch.Tensor]:
    """The teacher's kernel per group, (out/G, in/G, kh, kw) each, in float64."""
    return list(conv.weight.detach().double().chunk(conv.groups, dim=0))


def _set_bias(plug: Plug, conv: nn.Conv2d) -> None:
    if conv.bias is not None:
        plug[-1].bias.copy_(conv.bias)


@torch.no_grad()
def _init_dws(plug: Plug, conv: nn.Conv2d, arg: None) -> None:
    """Per input channel, the rank-1 SVD of the kernel slice (out/G, kh*kw) that reads it."""
    dtype = conv.weight.dtype
    for group, kernel in enumerate(_group_kernels(conv)):
        out, cin, kh, kw = kernel.shape
        slices = kernel.permute(1, 0, 2, 3).reshape(cin, out, kh * kw)
        u, s, vh = torch.linalg.svd(slices, full_matrices=False)
        root = s[:, :1].sqrt()
        plug.pointwise.weight[group * out:(group + 1) * out, :, 0, 0] = (u[:, :, 0] * root).T.to(dtype)
        plug.spatial.weight[group * cin:(group + 1) * cin, 0] = (vh[:, 0] * root).reshape(cin, kh, kw).to(dtype)
    _set_bias(plug, conv)


@torch.no_grad()
def _init_group(plug: Plug, conv: nn.Conv2d, arg: int) -> None:
    """Per spatial group, the truncated SVD of the kernel block that reads its input channels."""
    dtype = conv.weight.dtype
    for group, kernel in enumerate(_group_kernels(conv)):
        out, cin, kh, kw = kernel.shape
        rank, width = out // arg, cin // arg
        for part in range(arg):
            block = kernel[:, part * width:(part + 1) * width].reshape(out, -1)
            left, right = _factors(block, rank)
            found = left.shape[1]
            channels = slice((group * arg + part) * rank, (group * arg + part) * rank + found)
            plug.spatial.weight[channels] = right.reshape(found, width, kh, kw).to(dtype)
            columns = plug.pointwise.weight[group * out:(group + 1) * out, part * rank:(part + 1) * rank, 0, 0]
            columns.zero_()
            columns[:, :found] = left.to(dtype)
    _set_bias(plug, conv)


@torch.no_grad()
def _init_bottleneck(plug: Plug, conv: nn.Conv2d, arg: int) -> None:
    """Per teacher group, the truncated higher-order SVD (Tucker-2) of the kernel."""
    dtype = conv.weight.dtype
    mid = plug.reduce.out_channels // conv.groups
    for group, kernel in enumerate(_group_kernels(conv)):
        out, cin = kernel.shape[:2]
        inputs = _leading(kernel.transpose(0, 1).reshape(cin, -1), mid)  # (in/G, mid)
        outputs = _leading(kernel.reshape(out, -1), mid)  # (out/G, found <= mid)
        found = outputs.shape[1]
        core = torch.einsum("oikl,or,is->rskl", kernel, outputs, inputs)
        rows = slice(group * mid, (group + 1) * mid)
        plug.reduce.weight[rows, :, 0, 0] = inputs.T.to(dtype)
        plug.spatial.weight[group * mid:group * mid + found] = core.to(dtype)
        expand = plug.expand.weight[group * out:(group + 1) * out, :, 0, 0]
        expand.zero_()
        expand[:, :found] = outputs.to(dtype)
    _set_bias(plug, conv)


@torch.no_grad()
def _init_lowrank(plug: Plug, conv: nn.Conv2d, rank: int) -> None:
    """Set the plug's weights to the rank-`rank` truncated SVD of each teacher group's kernel."""
    out_per_group, dtype = conv.out_channels // conv.groups, conv.weight.dtype
    for group in range(conv.groups):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        kernel = conv.weight[rows].double()
        left, right = _factors(kernel.flatten(1), rank)
        plug.spatial.weight[group * rank : (group + 1) * rank] = right.reshape(rank, *kernel.shape[1:]).to(dtype)
        plug.pointwise.weight[rows] = left.reshape(out_per_group, rank, 1, 1).to(dtype)
    _set_bias(plug, conv)


register(OpSpec(KEEP, False, _fits_always, None))
register(OpSpec("dws", False, _fits_always, _dws, init=_init_dws))
register(OpSpec("group", True, _group_misfit, _group, init=_init_group))
register(OpSpec("bottleneck", True, _bottleneck_misfit, _bottleneck, init=_init_bottleneck))
register(OpSpec("lowrank", True, _lowrank_misfit, _lowrank, init=_init_lowrank))


def make_op(conv: nn.Conv2d, op: str) -> Plug:
    """Build the replacement for `conv` named by `op` (not `keep`) on the conv's device and dtype."""
    kind, arg = check_op(conv, op)
    spec = _OPS[kind]
    if spec.layers is None:
        raise InputError(f"op {op!r}: {kind} replaces nothing, it leaves the conv as it is")
    plug = Plug(op, spec.layers(conv, arg, conv.weight.device))
    plug.train(conv.training)
    if spec.init is not None and not conv.weight.is_meta:
        spec.init(plug, conv, arg)
    return plug


def op_params(conv: nn.Conv2d, op: str) -> int:
    """Parameter count of `conv` after applying `op`, counted on the built module (on the meta device)."""
    kind, arg = check_op(conv, op)
    spec = _OPS[kind]
    if spec.layers is None:
        return sum(p.numel() for p in conv.parameters())
    return sum(p.numel() for p in Plug(op, spec.layers(conv, arg, torch.device("meta"))).parameters())
