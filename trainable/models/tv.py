"""torchvision teachers, built with weights=None; the user supplies a checkpoint path."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

from data.errors import InputError
from trainable.models import register


class SegmentationLogits(nn.Module):
    """A torchvision segmenter with the same state_dict keys whose forward returns the logits tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.backbone = net.backbone
        self.classifier = net.classifier

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.backbone(x)["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _full_width(arch: str, width: float) -> None:
    if width != 1.0:
        raise InputError(f"{arch} is built at width 1.0 only (torchvision architecture), got width {width}")


@register("tv_resnet18", "classification")
def tv_resnet18(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    _full_width("tv_resnet18", width)
    return resnet18(weights=None, num_classes=num_classes)


@register("tv_resnet50", "classification")
def tv_resnet50(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    _full_width("tv_resnet50", width)
    return resnet50(weights=None, num_classes=num_classes)


@register("tv_deeplabv3_resnet50", "segmentation")
def tv_deeplabv3_resnet50(num_classes: int = 21, width: float = 1.0) -> nn.Module:
    _full_width("tv_deeplabv3_resnet50", width)
    return SegmentationLogits(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False))


@register("tv_deeplabv3_resnet101", "segmentation")
def tv_deeplabv3_resnet101(num_classes: int = 21, width: float = 1.0) -> nn.Module:
    _full_width("tv_deeplabv3_resnet101", width)
    return SegmentationLogits(deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False))
