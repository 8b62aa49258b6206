"""Image-only (unlabeled) datasets: every picture below a set of folders."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from data.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def open_rgb(path: Path) -> Image.Image:
    """Read an image fully as RGB; an unreadable or corrupt file raises InputError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot read image ({err}); expected a readable image file") from err


def require_dir(path: Path, expected: str) -> Path:
    """Return `path` if it is a folder, else raise InputError naming it and what was `expected` there."""
    if not path.is_dir():
        state = "not a folder" if path.exists() else "no such folder"
        raise InputError(f"{path}: {state}; expected {expected}")
    return path


def find_images(root: Path) -> list[Path]:
    """Every image file (`IMAGE_SUFFIXES`, any case) below `root`, searched recursively, sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def suffix_list() -> str:
    """The image suffixes as a phrase for error messages."""
    return ", ".join(IMAGE_SUFFIXES[:-1]) + " or " + IMAGE_SUFFIXES[-1]


class UnlabeledImages(Dataset):
    """Every image below `roots`; items are `transform(image)`, or a uint8 tensor (3, H, W) without one."""

    def __init__(self, roots: Sequence[str | Path], transform: Callable | None = None) -> None:
        if isinstance(roots, (str, Path)):
            roots = [roots]
        folders = [require_dir(Path(root), "a folder of unlabeled images") for root in roots]
        if not folders:
            raise InputError("unlabeled image folders: none given; expected at least one folder")
        self.paths: list[Path] = sorted({path for folder in folders for path in find_images(folder)})
        if not self.paths:
            names = ", ".join(str(folder) for folder in folders)
            raise InputError(f"{names}: no images found; expected {suffix_list()} files below it")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = open_rgb(self.paths[index])
        if self.transform is None:
            return F.pil_to_tensor(image)
        return self.transform(image)
