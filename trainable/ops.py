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
- `lowrank<r>`: truncated SVD of each teacher group's kernel (out/G, in/G*kh*kw): kxk in -> r*G
  (groups G) with weight sqrt(S)*Vh, then 1x1 r*G -> out (groups G) with weight U*sqrt(S) and
  the teacher's bias; 1 <= r <= min(out/G, in/G*kh*kw). At the largest r it reproduces the
  teacher conv to float precision.

`lowrank` is initialised from the teacher's weights; `dws`, `group` and `bottleneck` keep
PyTorch's default conv initialisation (kaiming uniform) and are trained by distillation.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from data.errors import InputError

_OP_RE = re.compile(r"(keep|dws)|(group|bottleneck|lowrank)([0-9]+)")


class Plug(nn.Sequential):
    """The convs that replace one teacher conv; `op` names the cheap op they implement."""

    def __init__(self, op: str, layers: OrderedDict[str, nn.Conv2d]):
        super().__init__(layers)
        self.op = op

    def extra_repr(self) -> str:
        return f"op={self.op!r}"


def parse_op(op: str) -> tuple[str, int | None]:
    """Split an op name into its kind and its integer argument (None for `keep` and `dws`)."""
    match = _OP_RE.fullmatch(op) if isinstance(op, str) else None
    if match is None:
        raise InputError(f"unknown op {op!r}: expected keep, dws, group<g>, bottleneck<b> or lowrank<r>")
    if match.group(1):
        return match.group(1), None
    kind, arg = match.group(2), int(match.group(3))
    if arg < 1:
        raise InputError(f"op {op!r}: the number after {kind} must be >= 1")
    return kind, arg


def max_rank(conv: nn.Conv2d) -> int:
    """The largest rank `lowrank` accepts for `conv` (full rank of one group's kernel matrix)."""
    kh, kw = conv.kernel_size
    return min(conv.out_channels // conv.groups, conv.in_channels // conv.groups * kh * kw)


def check_op(conv: nn.Conv2d, op: str) -> tuple[str, int | None]:
    """Parse `op` and check it fits `conv`; InputError naming the op and the reason otherwise."""
    kind, arg = parse_op(op)
    cin, cout, groups = conv.in_channels, conv.out_channels, conv.groups
    of_groups = f" ({groups} teacher groups times {arg})" if groups > 1 else ""
    if kind == "group" and (cin % (groups * arg) or cout % (groups * arg)):
        raise InputError(
            f"op {op!r}: in_channels {cin} and out_channels {cout} must both be divisible by {groups * arg}{of_groups}"
        )
    if kind == "bottleneck":
        if arg > cin:
            raise InputError(f"op {op!r}: the factor {arg} is larger than in_channels {cin}")
        if (cin // arg) % groups:
            raise InputError(f"op {op!r}: {cin // arg} reduced channels are not divisible by the teacher's {groups} groups")
    if kind == "lowrank" and arg > max_rank(conv):
        raise InputError(f"op {op!r}: rank {arg} exceeds the full rank {max_rank(conv)} of this conv")
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


def _layers(conv: nn.Conv2d, kind: str, arg: int | None, device: torch.device) -> OrderedDict[str, nn.Conv2d]:
    cin, cout, g, bias, dtype = conv.in_channels, conv.out_channels, conv.groups, conv.bias is not None, conv.weight.dtype
    if kind == "dws":
        return OrderedDict(
            spatial=_conv(cin, cin, cin, False, conv, device, dtype),
            pointwise=_conv(cin, cout, g, bias, None, device, dtype),
        )
    if kind == "group":
        return OrderedDict(
            spatial=_conv(cin, cout, g * arg, False, conv, device, dtype),
            pointwise=_conv(cout, cout, g, bias, None, device, dtype),
        )
    if kind == "bottleneck":
        mid = cin // arg
        return OrderedDict(
            reduce=_conv(cin, mid, g, False, None, device, dtype),
            spatial=_conv(mid, mid, g, False, conv, device, dtype),
            expand=_conv(mid, cout, g, bias, None, device, dtype),
        )
    return OrderedDict(
        spatial=_conv(cin, arg * g, g, False, conv, device, dtype),
        pointwise=_conv(arg * g, cout, g, bias, None, device, dtype),
    )


def _factors(kernel: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U_r*sqrt(S_r) and sqrt(S_r)*Vh_r of `kernel`'s truncated SVD (their product is its best rank-r approximation).

    Computed in float64 from the eigendecomposition of the smaller Gram matrix, several times faster
    than linalg.svd on the wide kernels of big convs. The product is exact at full rank (a projection
    onto an orthonormal basis); components with a negligible singular value are set to zero.
    """
    wide = kernel.shape[0] <= kernel.shape[1]
    matrix = kernel if wide else kernel.T
    eigenvalues, vectors = torch.linalg.eigh(matrix @ matrix.T)
    vectors = vectors.flip(-1)[:, :rank]
    root = eigenvalues.flip(-1)[:rank].clamp_min(0).sqrt().sqrt()
    inverse = torch.where(root > root[0] * 1e-4, 1 / root, torch.zeros_like(root))
    near, far = vectors * root, (vectors.T @ matrix) * inverse[:, None]
    return (near, far) if wide else (far.T, near.T)


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
    if conv.bias is not None:
        plug.pointwise.bias.copy_(conv.bias)


def make_op(conv: nn.Conv2d, op: str) -> Plug:
    """Build the replacement for `conv` named by `op` (not `keep`) on the conv's device and dtype."""
    kind, arg = check_op(conv, op)
    if kind == "keep":
        raise InputError(f"op {op!r}: keep replaces nothing, it leaves the conv as it is")
    plug = Plug(op, _layers(conv, kind, arg, conv.weight.device))
    plug.train(conv.training)
    if kind == "lowrank" and not conv.weight.is_meta:
        _init_lowrank(plug, conv, arg)
    return plug


def op_params(conv: nn.Conv2d, op: str) -> int:
    """Parameter count of `conv` after applying `op`, counted on the built module (on the meta device)."""
    kind, arg = check_op(conv, op)
    if kind == "keep":
        return sum(p.numel() for p in conv.parameters())
    return sum(p.numel() for p in Plug(op, _layers(conv, kind, arg, torch.device("meta"))).parameters())
