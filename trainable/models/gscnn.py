"""Gated-SCNN (nv-tlabs, ICCV 2019): WideResNet38 DeepLabV3+ with a gated shape stream and a Canny input edge map.

Module names and state_dict order follow nv-tlabs' `best_cityscapes_checkpoint.pth` so that it loads with
strict=True; `width` scales every channel count and keeps every name. The forward runs OpenCV's Canny on the
CPU exactly as the published code does: on the network input cast to bytes, not on the visible image.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from trainable.models import register
from trainable.models.deepwv3plus import ASPP, _ch, _conv, _upsample, add_backbone, add_decoder, decode

CANNY_THRESHOLDS = (10, 100)


def canny_bytes(x: Tensor) -> np.ndarray:
    """The (N, H, W, 3) uint8 array that the reference feeds to Canny: trunc(x) modulo 256, no de-normalisation.

    This is numpy's float32 -> uint8 `astype` on x86-64 (truncate toward zero, keep the low 8 bits), computed
    portably as float -> int32 (truncation) -> uint8 (modular): -1.2 -> 255, -0.3 -> 0, 2.6 -> 2.
    """
    integers = x.detach().to("cpu").to(torch.int32).numpy()
    return np.ascontiguousarray(integers.astype(np.uint8).transpose(0, 2, 3, 1))


def canny_map(x: Tensor) -> Tensor:
    """OpenCV Canny (10, 100, aperture 3, L1) of each image of `x` as (N, 1, H, W) values 0.0 / 255.0.

    Runs on the CPU outside the autograd graph; the result has the device and dtype of `x`. On the meta
    device (shape-only passes such as FLOP counting) it returns zeros without running OpenCV.
    """
    n, _, h, w = x.shape
    if x.device.type == "meta":
        return x.new_zeros(n, 1, h, w)
    edges = np.stack([cv2.Canny(image, *CANNY_THRESHOLDS) for image in canny_bytes(x)])
    return torch.from_numpy(edges[:, None]).to(device=x.device, dtype=x.dtype)


class GatedSpatialConv2d(nn.Module):
    """1x1 conv (no bias) of features * (1 + alpha), alpha a sigmoid gate computed from [features, side output]."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._gate_conv = nn.Sequential(
            nn.BatchNorm2d(channels + 1),
            nn.Conv2d(channels + 1, channels + 1, 1),
            nn.ReLU(),
            nn.Conv2d(channels + 1, 1, 1),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )

    def forward(self, features: Tensor, side: Tensor) -> Tensor:
        alpha = self._gate_conv(torch.cat([features, side], dim=1))
        return F.conv2d(features * (alpha + 1), self.weight)


class EdgeASPP(ASPP):
    """DeepWV3Plus's ASPP plus an edge branch on the fusion map, concatenated right after the image pool."""

    def __init__(self, cin: int, reduction: int):
        super().__init__(cin, reduction)
        self.edge_conv = nn.Sequential(_conv(1, reduction, 1), nn.BatchNorm2d(reduction), nn.ReLU(inplace=True))
        self.out_channels += reduction

    def forward(self, x: Tensor, acts: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = _upsample(self.img_conv(self.img_pooling(x)), size)
        edge = self.edge_conv(_upsample(acts, size))
        return torch.cat([pooled, edge, *(branch(x) for branch in self.features)], dim=1)


class GSCNN(nn.Module):
    """WideResNet38 (output stride 8), gated shape stream at full resolution, edge-aware ASPP, DeepLabV3+ decoder."""

    onnx_unsupported = (
        "GSCNN runs OpenCV's Canny edge detector on the CPU inside forward (on a detached NumPy copy of "
        "the input), which has no ONNX equivalent and cannot be exported to ONNX."
    )

    def __init__(self, num_classes: int = 19, width: float = 1.0):
        super().__init__()
        cin = add_backbone(self, width)
        c64, c32, c16, c8 = (_ch(c, width) for c in (64, 32, 16, 8))
        self.dsn1 = nn.Conv2d(c64, 1, 1)  # unused in forward; kept because the checkpoint stores it
        self.dsn3 = nn.Conv2d(_ch(256, width), 1, 1)
        self.dsn4 = nn.Conv2d(_ch(512, width), 1, 1)
        self.dsn7 = nn.Conv2d(cin, 1, 1)
        self.res1 = BasicBlock(c64, c64)
        self.d1 = nn.Conv2d(c64, c32, 1)
        self.res2 = BasicBlock(c32, c32)
        self.d2 = nn.Conv2d(c32, c16, 1)
        self.res3 = BasicBlock(c16, c16)
        self.d3 = nn.Conv2d(c16, c8, 1)
        self.fuse = _conv(c8, 1, 1)
        self.cw = _conv(2, 1, 1)
        self.gate1 = GatedSpatialConv2d(c32)
        self.gate2 = GatedSpatialConv2d(c16)
        self.gate3 = GatedSpatialConv2d(c8)
        add_decoder(self, EdgeASPP(cin, _ch(256, width)), num_classes, width, head="final_seg")

    def forward(self, x: Tensor, return_edge: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Segmentation logits (N, C, H, W); with `return_edge`, also the boundary probabilities (N, 1, H, W)."""
        size = x.shape[-2:]
        m1 = self.mod1(x)
        m2 = self.mod2(self.pool2(m1))
        m3 = self.mod3(self.pool3(m2))
        m4 = self.mod4(m3)
        m7 = self.mod7(self.mod6(self.mod5(m4)))
        # The reference also resizes full-resolution tensors to their own size; those are exact identities.
        shape = self.gate1(self.d1(self.res1(m1)), _upsample(self.dsn3(m3), size))
        shape = self.gate2(self.d2(self.res2(shape)), _upsample(self.dsn4(m4), size))
        shape = self.gate3(self.d3(self.res3(shape)), _upsample(self.dsn7(m7), size))
        edge = torch.sigmoid(self.fuse(shape))
        acts = torch.sigmoid(self.cw(torch.cat([edge, canny_map(x)], dim=1)))
        logits = decode(self, self.final_seg, m2, self.aspp(m7, acts))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return (logits, edge) if return_edge else logits


@register("gscnn", "segmentation")
def gscnn(num_classes: int = 19, width: float = 1.0) -> nn.Module:
    return GSCNN(num_classes=num_classes, width=width)
