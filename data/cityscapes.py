"""Cityscapes on its official folder layout, labels read as trainIds."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from data.errors import InputError
from data.folder import open_rgb, require_dir
from data.kinds import register, unlabeled_images
from data.labels import label_to_train_lut
from data.settings import DataSettings
from data.transforms import eval_transforms, train_transforms

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
_STEM = re.compile(r"(.+_\d+_\d+)_[A-Za-z].*")
_LUT = label_to_train_lut()


def frame_stem(path: str | Path) -> str:
    """The `<city>_<seq>_<frame>` part of a Cityscapes file name."""
    match = _STEM.fullmatch(Path(path).name)
    if match is None:
        raise InputError(f"{path}: file name is not a Cityscapes name; expected <city>_<seq>_<frame>_<type>.png")
    return match.group(1)


def read_train_ids(path: str | Path) -> np.ndarray:
    """Read a `_gtFine_labelIds.png` as a uint8 (H, W) array of trainIds (255 = ignore)."""
    try:
        with Image.open(path) as image:
            ids = np.array(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot read label image ({err}); expected a labelIds PNG") from err
    if ids.ndim != 2 or ids.size == 0 or ids.min() < 0 or ids.max() > 255:
        raise InputError(f"{path}: label image has shape {ids.shape}; expected one channel of labelIds 0..255")
    return _LUT[ids.astype(np.uint8)]


def find_label_files(gt_dir: str | Path) -> dict[str, Path]:
    """Every `*_gtFine_labelIds.png` below `gt_dir`, keyed by frame stem."""
    folder = require_dir(Path(gt_dir), f"a folder of <city>/*{LABEL_SUFFIX} files")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob(f"*{LABEL_SUFFIX}")):
        stem = frame_stem(path)
        if stem in found:
            raise InputError(f"{path}: frame {stem} is labelled twice (also {found[stem]}); expected one label file")
        found[stem] = path
    return found


class CityscapesSegmentation(Dataset):
    """`(image, mask)` pairs of one split; the mask holds trainIds with 255 for ignored pixels.

    Without a transform, items are a uint8 tensor (3, H, W) and an int64 tensor (H, W); with one,
    `transform(PIL image, uint8 array of trainIds)`.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        root = require_dir(Path(root), "a Cityscapes root with leftImg8bit/ and gtFine/")
        image_dir = require_dir(root / "leftImg8bit" / split, f"split '{split}' images as <city>/*{IMAGE_SUFFIX}")
        gt_dir = root / "gtFine" / split
        self.images: list[Path] = sorted(image_dir.rglob(f"*{IMAGE_SUFFIX}"))
        if not self.images:
            raise InputError(f"{image_dir}: split '{split}' has no images; expected <city>/*{IMAGE_SUFFIX} files")
        labels = find_label_files(gt_dir)
        self.labels: list[Path] = []
        for image in self.images:
            stem = frame_stem(image)
            if stem not in labels:
                expected = gt_dir / image.parent.name / f"{stem}{LABEL_SUFFIX}"
                raise InputError(f"{image}: no label file; expected {expected}")
            self.labels.append(labels[stem])
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = open_rgb(self.images[index])
        mask = read_train_ids(self.labels[index])
        if mask.shape != (image.height, image.width):
            raise InputError(
                f"{self.labels[index]}: label size {mask.shape[1]}x{mask.shape[0]} differs from "
                f"{self.images[index]} ({image.width}x{image.height}); expected the same size"
            )
        if self.transform is None:
            return F.pil_to_tensor(image), torch.from_numpy(mask).long()
        return self.transform(image, mask)


@register("cityscapes")
class Cityscapes:
    """The official layout: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/` labelIds."""

    task = "segmentation"
    unlabeled_default = ("leftImg8bit/train",)

    def unlabeled(self, s: DataSettings) -> Dataset:
        return unlabeled_images(s, train_transforms(s.crop, s.scale, s.mean, s.std))

    def train(self, s: DataSettings) -> Dataset:
        return CityscapesSegmentation(s.root, s.train, train_transforms(s.crop, s.scale, s.mean, s.std))

    def val(self, s: DataSettings) -> Dataset:
        return CityscapesSegmentation(s.root, s.val, eval_transforms(s.mean, s.std))

    def input_size(self, s: DataSettings) -> tuple[int, int]:
        return tuple(s.crop)

    def num_classes(self, s: DataSettings) -> int | None:
        return None
