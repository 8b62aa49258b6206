"""Typed settings of a dataset: which kind (registry name), where it lives, and how its images are shaped.

`search/space.py` reads these from a space file's `data` section through their schema (`data.schema`); the
dataset kinds (`data.kinds`) read them. Every default of a data setting lives here, but `unlabeled`'s: the
dataset kind's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from data.schema import setting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _kinds() -> Sequence[str]:
    from data import kinds  # the registry imports this module

    return kinds.names()


def _unlabeled_defaults() -> str:
    from data import kinds

    return kinds.unlabeled_defaults()


@dataclass(frozen=True)
class EvalSettings:
    """How segmentation logits are computed: one forward pass or tiles of `crop` px; optional flip and multi-scale."""

    mode: Literal["whole", "sliding"] = setting("segmentation eval: one forward pass, or tiles of eval_crop px",
                                                "whole", key="eval")
    crop: int = setting("the tile size (px) of sliding eval", 1024, low=1, key="eval_crop")
    overlap: float = 1 / 3
    flip: bool = setting("also evaluate the mirrored image and average", False, key="eval_flip")
    scales: tuple[float, ...] = setting("image scales evaluated and averaged", (1.0,), above=0, key="eval_scales")


@dataclass(frozen=True)
class Augment:
    """Training augmentation of a classification kind: `pad` (pad 4, random crop: CIFAR), `resized`
    (RandomResizedCrop: ImageNet) or `none`, and a random horizontal flip."""

    crop: Literal["pad", "resized", "none"] = setting(
        "pad (pad 4, random crop: CIFAR), resized (RandomResizedCrop: ImageNet) or none", "pad")
    flip: bool = setting("a random horizontal flip", True)


@dataclass(frozen=True)
class Split:
    """A labeled split of image/mask pairs: two folders below the root, matched by relative path and stem."""

    images: str = setting("the images folder below data.root")
    masks: str = setting("the masks folder below data.root")


@dataclass(frozen=True)
class DataSettings:
    root: Path = setting("the dataset's folder")
    dataset: str = setting("the dataset kind: its layout and task", "cityscapes", choices=_kinds)
    unlabeled: tuple[str, ...] | None = setting(
        "folders below root of the images distillation trains on (read recursively, labels unused)", None,
        default_text=_unlabeled_defaults)
    train: str | Split = setting("the labeled train split: a folder below root ({images, masks} for pairs)", "train")
    val: str | Split = setting("the labeled val split: a folder below root ({images, masks} for pairs)", "val")
    mean: tuple[float, float, float] = setting("per-channel normalisation mean", IMAGENET_MEAN, low=0)
    std: tuple[float, float, float] = setting("per-channel normalisation std", IMAGENET_STD, above=0)
    batch_size: int = setting("images per training batch", 2, low=1)
    workers: int = setting("data loader worker processes", 0, low=0)
    max_val_images: int | None = setting("evaluate on the first N val images only; null: all", None, low=1)
    # segmentation kinds
    crop: tuple[int, int] = setting("segmentation: training crop (H, W), also what FLOPs and latency are measured at",
                                    (768, 768), low=1)
    scale: tuple[float, float] = setting("segmentation: random rescale range before the crop", (0.5, 2.0), above=0,
                                         ordered=True)
    eval: EvalSettings = setting("segmentation eval", factory=EvalSettings, inline=True)
    num_classes: int | None = setting("pairs: the number of classes of the masks", None, low=1)
    ignore_index: int = setting("pairs: the mask value to ignore (becomes 255)", 255, low=0)
    mask_suffix: str = setting("pairs: a mask is <image stem><mask_suffix>.png", "", empty=True)
    # classification kinds
    classes: tuple[str, ...] | None = setting(
        "classification: class folder names in index order; null: the val split's folders, sorted", None, distinct=True)
    image_size: int = setting("classification: training and eval image size (px)", 224, low=1)
    eval_resize: int | None = setting("classification: resize the shorter side to this, then centre-crop "
                                      "image_size; null: resize to image_size", None, low=1)
    augment: Augment = setting("classification: training augmentation", factory=Augment)

    def folder(self, relative: str) -> Path:
        return self.root / relative
