"""DeepLabV3+ on WideResNet38 ("DeepWV3Plus") as published with NVIDIA's semantic-segmentation work.

Module names and state_dict order follow NVIDIA's checkpoint so that it loads with strict=True;
`width` scales every channel count and keeps every name.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainable.models import register

# (stage, blocks, channel spec, first-block stride, dilation, dropout before conv3)
_STAGES: tuple[tuple[str, int, tuple[int, ...], int, int, float], ...] = (
    ("mod2", 3, (128, 128), 1, 1, 0.0),
    ("mod3", 3, (256, 256), 1, 1, 0.0),
    ("mod4", 6, (512, 512), 2, 1, 0.0),
    ("mod5", 3, (512, 1024), 1, 2, 0.0),
    ("mod6", 1, (512, 1024, 2048), 1, 4, 0.3),
    ("mod7", 1, (1024, 2048, 4096), 1, 4, 0.5),
)
_ASPP_RATES = (12, 24, 36)


def _ch(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, bias=False)


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def _upsample(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual unit; basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) by channel spec."""

    def __init__(self, cin: int, channels: tuple[int, ...], stride: int, dilation: int, dropout: float):
        super().__init__()
        self.bn1 = _bn_relu(cin)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if len(channels) == 2:
            layers["conv1"] = _conv(cin, channels[0], 3, stride, dilation)
            layers["bn2"] = _bn_relu(channels[0])
            layers["conv2"] = _conv(channels[0], channels[1], 3, 1, dilation)
        else:
            layers["conv1"] = _conv(cin, channels[0], 1, stride)
            layers["bn2"] = _bn_relu(channels[0])
            layers["conv2"] = _conv(channels[0], channels[1], 3, 1, dilation)
            layers["bn3"] = _bn_relu(channels[1])
            layers["dropout"] = nn.Dropout2d(dropout)
            layers["conv3"] = _conv(channels[1], channels[2], 1)
        self.convs = nn.Sequential(layers)
        self.proj_conv = _conv(cin, channels[-1], 1, stride) if stride != 1 or cin != channels[-1] else None

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn1(x)
        shortcut = self.proj_conv(a) if self.proj_conv is not None else x
        return self.convs(a) + shortcut


class ASPP(nn.Module):
    """Image-pool branch plus 1x1 and three dilated 3x3 branches, concatenated image-pool first."""

    def __init__(self, cin: int, reduction: int):
        super().__init__()
        branches = [nn.Sequential(_conv(cin, reduction, 1), nn.BatchNorm2d(reduction), nn.ReLU(inplace=True))]
        for rate in _ASPP_RATES:
            branches.append(nn.Sequential(_conv(cin, reduction, 3, 1, rate), nn.BatchNorm2d(reduction), nn.ReLU(inplace=True)))
        self.features = nn.ModuleList(branches)
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(_conv(cin, reduction, 1), nn.BatchNorm2d(reduction), nn.ReLU(inplace=True))
        self.out_channels = (2 + len(_ASPP_RATES)) * reduction

    def forward(self, x: Tensor) -> Tensor:
        pooled = _upsample(self.img_conv(self.img_pooling(x)), x.shape[-2:])
        return torch.cat([pooled, *(branch(x) for branch in self.features)], dim=1)


def add_backbone(net: nn.Module, width: float) -> int:
    """Give `net` WideResNet38's mod1, pool2, pool3 and mod2-mod7 (NVIDIA's names, in their order); returns mod7's channels."""
    net.mod1 = nn.Sequential(OrderedDict(conv1=_conv(3, _ch(64, width), 3)))
    net.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
    net.pool3 = nn.MaxPool2d(3, stride=2, padding=1)
    cin = _ch(64, width)
    for stage, blocks, spec, stride, dilation, dropout in _STAGES:
        channels = tuple(_ch(c, width) for c in spec)
        units: OrderedDict[str, nn.Module] = OrderedDict()
        for index in range(blocks):
            units[f"block{index + 1}"] = IdentityResidualBlock(cin, channels, stride if index == 0 else 1, dilation, dropout)
            cin = channels[-1]
        setattr(net, stage, nn.Sequential(units))
    return cin


def add_decoder(net: nn.Module, aspp: ASPP, num_classes: int, width: float, head: str) -> None:
    """Give `net` its `aspp` and DeepLabV3+'s decoder: bot_fine (mod2's features), bot_aspp and the classifier head
    named `head` (the checkpoint's names, in their order); `decode` runs it."""
    reduction = _ch(256, width)
    net.aspp = aspp
    net.bot_fine = _conv(_ch(128, width), _ch(48, width), 1)
    net.bot_aspp = _conv(aspp.out_channels, reduction, 1)
    setattr(net, head, nn.Sequential(
        _conv(_ch(48, width) + reduction, reduction, 3),
        nn.BatchNorm2d(reduction),
        nn.ReLU(inplace=True),
        _conv(reduction, reduction, 3),
        nn.BatchNorm2d(reduction),
        nn.ReLU(inplace=True),
        _conv(reduction, num_classes, 1),
    ))


def decode(net: nn.Module, head: nn.Module, m2: Tensor, context: Tensor) -> Tensor:
    """The decoder's logits at mod2's resolution, from mod2's features and the ASPP's output (see `add_decoder`)."""
    context = _upsample(net.bot_aspp(context), m2.shape[-2:])
    return head(torch.cat([net.bot_fine(m2), context], dim=1))


class DeepWV3Plus(nn.Module):
    """WideResNet38 (output stride 8) with ASPP and a decoder fed by mod2 at half resolution."""

    def __init__(self, num_classes: int = 19, width: float = 1.0):
        super().__init__()
        cin = add_backbone(self, width)
        add_decoder(self, ASPP(cin, _ch(256, width)), num_classes, width, head="final")

    def forward(self, x: Tensor) -> Tensor:
        m2 = self.mod2(self.pool2(self.mod1(x)))
        deep = self.mod7(self.mod6(self.mod5(self.mod4(self.mod3(self.pool3(m2))))))
        return _upsample(decode(self, self.final, m2, self.aspp(deep)), x.shape[-2:])


@register("deepwv3plus", "segmentation")
def deepwv3plus(num_classes: int = 19, width: float = 1.0) -> nn.Module:
    return DeepWV3Plus(num_classes=num_classes, width=width)
