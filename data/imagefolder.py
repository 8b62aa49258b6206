"""Classification on torchvision's ImageFolder layout: a split is a folder of class folders."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from data.errors import InputError
from data.folder import find_images, open_rgb, require_dir, suffix_list
from data.kinds import register, unlabeled_images
from data.settings import DataSettings, Split
from data.transforms import classification_eval_transforms, classification_train_transforms


def class_folders(root: Path) -> list[str]:
    """The sorted names of the folders right below `root` (torchvision's class order); InputError if none."""
    names = sorted(entry.name for entry in require_dir(root, "a folder of class folders").iterdir() if entry.is_dir())
    if not names:
        raise InputError(f"{root}: no class folders; expected one folder of images per class")
    return names


class ClassFolders(Dataset):
    """`(image, class index)` items of one split: images found recursively in each class folder.

    Class indices follow `classes` (the teacher's order) when given, and the folder names must then be
    exactly those; without it they follow the sorted folder names (torchvision's ImageFolder). An empty
    class folder is fine, a split without any image is not. Without a transform items are a uint8 tensor
    (3, H, W) and an int; with one, `transform(PIL image)` and an int.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None,
                 transform: Callable | None = None) -> None:
        root = Path(root)
        found = class_folders(root)
        classes = found if classes is None else classes
        duplicates = sorted({name for name in classes if list(classes).count(name) > 1})
        if duplicates:
            raise InputError(f"data.classes: {', '.join(duplicates)} listed more than once; "
                             "expected distinct class names")
        if set(found) != set(classes):
            missing, unexpected = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise InputError(
                f"{root}: class folders differ from the classes (missing: {', '.join(missing) or 'none'}; "
                f"unexpected: {', '.join(unexpected) or 'none'}); expected exactly the folders {', '.join(classes)}"
            )
        self.classes: tuple[str, ...] = tuple(classes)
        self.samples: list[tuple[Path, int]] = [
            (path, index) for index, name in enumerate(self.classes) for path in find_images(root / name)
        ]
        if not self.samples:
            raise InputError(f"{root}: no images in any class folder; expected {suffix_list()} files in <class>/")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        image = open_rgb(path)
        if self.transform is None:
            return F.pil_to_tensor(image), target
        return self.transform(image), target


def _folder(split: str | Split, name: str) -> str:
    if isinstance(split, Split):
        raise InputError(f"data.{name}: images/masks folders given; expected one folder of class folders for "
                         "dataset kind 'imagefolder'")
    return split


@register("imagefolder")
class ImageFolder:
    """`val` (and `train`) a folder of class folders; `unlabeled` folders of images in any sub-folders.

    Class indices follow `classes` when set, else the sorted class folders of `val`; `train` must hold the
    same class folders. Transforms: `classification_train_transforms` / `classification_eval_transforms`
    (`image_size`, `eval_resize`, `augment`).
    """

    task = "classification"
    unlabeled_default = ("train",)

    def unlabeled(self, s: DataSettings) -> Dataset:
        return unlabeled_images(s, _train_transforms(s))

    def train(self, s: DataSettings) -> Dataset:
        return ClassFolders(s.folder(_folder(s.train, "train")), self._classes(s), _train_transforms(s))

    def val(self, s: DataSettings) -> Dataset:
        transform = classification_eval_transforms(s.image_size, s.eval_resize, s.mean, s.std)
        return ClassFolders(s.folder(_folder(s.val, "val")), self._classes(s), transform)

    def input_size(self, s: DataSettings) -> tuple[int, int]:
        return (s.image_size, s.image_size)

    def num_classes(self, s: DataSettings) -> int | None:
        return len(self._classes(s))

    def _classes(self, s: DataSettings) -> Sequence[str]:
        """`classes` when set, else the val split's class folders."""
        return s.classes if s.classes is not None else class_folders(s.folder(_folder(s.val, "val")))


def _train_transforms(s: DataSettings) -> Callable[..., torch.Tensor]:
    return classification_train_transforms(s.image_size, s.augment, s.eval_resize, s.mean, s.std)
