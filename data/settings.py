"""Typed settings of a dataset: which kind (registry name), where it lives, and how its images are shaped.

`search/space.py` builds these from a space file; the dataset kinds (`data.kinds`) read them. Every default
of a data setting lives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalSettings:
    """How segmentation logits are computed: one forward pass or tiles of `crop` px; optional flip and multi-scale."""

    mode: Literal["whole", "sliding"] = "whole"
    crop: int = 1024
    overlap: float = 1 / 3
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class Augment:
    """Training augmentation of a classification kind: `pad` (pad 4, random crop: CIFAR), `resized`
    (RandomResizedCrop: ImageNet) or `none`, and a random horizontal flip."""

    crop: Literal["pad", "resized", "none"] = "pad"
    flip: bool = True


@dataclass(frozen=True)
class Split:
    """A labeled split of image/mask pairs: two folders below the root, matched by relative path and stem."""

    images: str
    masks: str


@dataclass(frozen=True)
class DataSettings:
    root: Path
    dataset: str = "cityscapes"
    unlabeled: tuple[str, ...] = ("leftImg8bit/train",)
    train: str | Split = "train"
    val: str | Split = "val"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 2
    workers: int = 0
    max_val_images: int | None = None
    # segmentation kinds
    crop: tuple[int, int] = (768, 768)
    scale: tuple[float, float] = (0.5, 2.0)
    eval: EvalSettings = field(default_factory=EvalSettings)
    num_classes: int | None = None
    ignore_index: int = 255
    mask_suffix: str = ""
    # classification kinds
    classes: tuple[str, ...] | None = None
    image_size: int = 224
    eval_resize: int | None = None
    augment: Augment = field(default_factory=Augment)

    def folder(self, relative: str) -> Path:
        return self.root / relative
