"""Segmentation on image/mask folder pairs (CamVid, Pascal VOC, ADE20K-style trees), masks as class-index PNGs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from data.errors import InputError
from data.folder import find_images, open_rgb, require_dir, suffix_list
from data.kinds import register, unlabeled_images
from data.labels import IGNORE_INDEX
from data.settings import DataSettings, Split
from data.transforms import eval_transforms, train_transforms

# Single-channel PIL modes whose pixel values are class indices ('P': palette indices, not colours).
MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def read_mask(path: str | Path, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """A class-index PNG as an int64 (H, W) array: `ignore_index` pixels become 255, others must be < num_classes."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.array(image) if mode in MASK_MODES else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot read mask ({err}); expected a class-index PNG") from err
    if values is None:
        raise InputError(f"{path}: mask is a mode {mode} image; expected one channel of class indices "
                         "(a mode L or palette P PNG), not colours")
    mask = values.astype(np.int64)
    ignored = mask == ignore_index
    bad = ~ignored & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        raise InputError(f"{path}: mask holds value {int(mask[bad].max())}; expected class indices "
                         f"0..{num_classes - 1} or ignore_index {ignore_index}")
    mask[ignored] = IGNORE_INDEX
    return mask


def match_pairs(image_dir: Path, mask_dir: Path, mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """One (image, mask) pair per `<stem><mask_suffix>.png` below `mask_dir`, sorted by mask.

    The image is `<stem>.<any image suffix>` at the same relative path below `image_dir`. Pairs are found
    from the masks: images without a mask are left out (Pascal VOC's JPEGImages holds far more images than
    SegmentationClass has masks); a mask without its image, or with several, is an InputError.
    """
    require_dir(image_dir, "a folder of images")
    require_dir(mask_dir, f"a folder of *{mask_suffix}.png masks")
    images: dict[Path, list[Path]] = {}
    for path in find_images(image_dir):
        images.setdefault(path.relative_to(image_dir).with_suffix(""), []).append(path)
    if not images:
        raise InputError(f"{image_dir}: no images found; expected {suffix_list()} files below it")
    masks = sorted(p for p in mask_dir.rglob("*") if p.suffix.lower() == ".png" and p.stem.endswith(mask_suffix)
                   and len(p.stem) > len(mask_suffix) and p.is_file())
    if not masks:
        raise InputError(f"{mask_dir}: no masks found; expected <stem>{mask_suffix}.png files below it")
    pairs = []
    for mask in masks:
        relative = mask.relative_to(mask_dir)
        key = relative.with_name(relative.stem[: len(relative.stem) - len(mask_suffix)])
        found = images.get(key, [])
        if len(found) != 1:
            state = "several images" if found else "no image"
            listed = f" ({', '.join(map(str, found))})" if found else ""
            raise InputError(f"{mask}: {state} for this mask{listed}; expected one image {image_dir / key}.* "
                             f"({suffix_list()})")
        pairs.append((found[0], mask))
    return pairs


class MaskPairs(Dataset):
    """`(image, mask)` items of one split: images and class-index masks in two folders, matched by `match_pairs`.

    Masks are read by `read_mask` (255 = ignore). Without a transform items are a uint8 tensor (3, H, W) and
    an int64 tensor (H, W); with one, `transform(PIL image, int64 array)`.
    """

    def __init__(self, root: str | Path, split: Split, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 mask_suffix: str = "", transform: Callable | None = None) -> None:
        root = Path(root)
        self.pairs = match_pairs(root / split.images, root / split.masks, mask_suffix)
        self.num_classes, self.ignore_index, self.transform = num_classes, ignore_index, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = open_rgb(image_path)
        mask = read_mask(mask_path, self.num_classes, self.ignore_index)
        if mask.shape != (image.height, image.width):
            raise InputError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from {image_path} "
                             f"({image.width}x{image.height}); expected the same size")
        if self.transform is None:
            return F.pil_to_tensor(image), torch.from_numpy(mask)
        return self.transform(image, mask)


def _split(split: str | Split, name: str) -> Split:
    if not isinstance(split, Split):
        raise InputError(f"data.{name}: {split!r} is one folder; expected an images folder and a masks folder "
                         "(images: DIR, masks: DIR) for dataset kind 'pairs'")
    return split


def _num_classes(s: DataSettings) -> int:
    if s.num_classes is None:
        raise InputError("data.num_classes: not set; expected the number of classes for dataset kind 'pairs'")
    return s.num_classes


@register("pairs")
class Pairs:
    """`val` (and `train`) are `Split(images, masks)` folders below the root; `unlabeled` folders of any images.

    A mask is `<stem><mask_suffix>.png` at the image's relative path (CamVid: train/ + trainannot/; VOC:
    JPEGImages/ + SegmentationClass/, only images with a mask; ADE20K: images/training/ +
    annotations/training/). Needs `num_classes`; `ignore_index` pixels (CamVid's void: 11) become 255.
    Transforms and eval modes as for cityscapes.
    """

    task = "segmentation"
    unlabeled_default = None

    def unlabeled(self, s: DataSettings) -> Dataset:
        return unlabeled_images(s, train_transforms(s.crop, s.scale, s.mean, s.std))

    def train(self, s: DataSettings) -> Dataset:
        return MaskPairs(s.root, _split(s.train, "train"), _num_classes(s), s.ignore_index, s.mask_suffix,
                         train_transforms(s.crop, s.scale, s.mean, s.std))

    def val(self, s: DataSettings) -> Dataset:
        return MaskPairs(s.root, _split(s.val, "val"), _num_classes(s), s.ignore_index, s.mask_suffix,
                         eval_transforms(s.mean, s.std))

    def input_size(self, s: DataSettings) -> tuple[int, int]:
        return tuple(s.crop)

    def num_classes(self, s: DataSettings) -> int | None:
        return _num_classes(s)
