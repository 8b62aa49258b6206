"""Transforms on torchvision.transforms.v2: joint image/mask ones for segmentation, image ones for classification."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from data.labels import IGNORE_INDEX
from data.settings import IMAGENET_MEAN, IMAGENET_STD, Augment

ImageLike = Image.Image | np.ndarray | torch.Tensor
Sample = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from `scale`: bilinear for images, nearest-exact for masks."""

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        self.scale = (float(scale[0]), float(scale[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        height, width = F.get_size(image)
        factor = torch.empty(()).uniform_(*self.scale).item()
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return F.resize(inpt, params["size"], antialias=True)


class SegmentationTransform:
    """Apply a v2 pipeline to `(image, mask)` or to an image alone; returns plain tensors."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: ImageLike | tuple[ImageLike, ImageLike], mask: ImageLike | None = None) -> Sample:
        if mask is None and isinstance(image, tuple):
            image, mask = image
        if mask is None:
            return self.pipeline(_as_image(image)).as_subclass(torch.Tensor)
        out_image, out_mask = self.pipeline(_as_image(image), _as_mask(mask))
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def _as_image(image: ImageLike) -> tv_tensors.Image:
    if isinstance(image, Image.Image):
        return tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        return tv_tensors.Image(torch.tensor(image).permute(2, 0, 1))
    return tv_tensors.Image(image)


def _as_mask(mask: ImageLike) -> tv_tensors.Mask:
    if isinstance(mask, torch.Tensor):
        return tv_tensors.Mask(mask)
    return tv_tensors.Mask(torch.tensor(np.asarray(mask)))


Stats = tuple[float, float, float]


def _finish(mean: Stats, std: Stats) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]


def train_transforms(
    crop: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0), mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD
) -> Callable[..., Sample]:
    """Random scale, random crop of `crop` (H, W) padded with 0 / 255, horizontal flip, float, normalise."""
    height, width = int(crop[0]), int(crop[1])
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
    return SegmentationTransform(
        v2.Compose(
            [
                RandomScale(scale),
                v2.RandomCrop((height, width), pad_if_needed=True, fill=fill),
                v2.RandomHorizontalFlip(),
                *_finish(mean, std),
            ]
        )
    )


def eval_transforms(mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> Callable[..., Sample]:
    """Convert to float and normalise; nothing random."""
    return SegmentationTransform(v2.Compose(_finish(mean, std)))


def normalize(image: Image.Image | torch.Tensor, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> torch.Tensor:
    """A PIL image or a uint8 tensor (..., 3, H, W) as a normalised float tensor."""
    tensor = _as_image(image) if isinstance(image, Image.Image) else image
    tensor = F.to_dtype(tensor.as_subclass(torch.Tensor), torch.float32, scale=True)
    return F.normalize(tensor, list(mean), list(std))


def classification_eval_transforms(
    image_size: int, eval_resize: int | None = None, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD
) -> v2.Compose:
    """PIL image -> normalised float tensor (3, image_size, image_size); nothing random.

    With `eval_resize` None the image is resized to image_size x image_size (an image already that size,
    CIFAR's 32 x 32 at image_size 32, passes untouched); with it, its shorter side is resized to
    `eval_resize` and the centre image_size x image_size cropped (ImageNet: 256 then 224).
    """
    geometry = _classification_geometry(image_size, eval_resize)
    return v2.Compose([v2.ToImage(), *geometry, *_classification_finish(mean, std)])


def classification_train_transforms(
    image_size: int, augment: Augment = Augment(), eval_resize: int | None = None, mean: Stats = IMAGENET_MEAN,
    std: Stats = IMAGENET_STD,
) -> v2.Compose:
    """PIL image -> augmented, normalised float tensor (3, image_size, image_size).

    `augment.crop`: `pad` = the eval geometry, then pad 4 px with 0 and random crop of image_size (CIFAR);
    `resized` = RandomResizedCrop(image_size) of the whole image (ImageNet); `none` = the eval geometry.
    Then a random horizontal flip when `augment.flip`.
    """
    if augment.crop == "resized":
        geometry: list[v2.Transform] = [v2.RandomResizedCrop(image_size)]
    elif augment.crop == "pad":
        geometry = [*_classification_geometry(image_size, eval_resize), v2.RandomCrop(image_size, padding=4)]
    else:
        geometry = _classification_geometry(image_size, eval_resize)
    flip = [v2.RandomHorizontalFlip()] if augment.flip else []
    return v2.Compose([v2.ToImage(), *geometry, *flip, *_classification_finish(mean, std)])


def _classification_geometry(image_size: int, eval_resize: int | None) -> list[v2.Transform]:
    if eval_resize is None:
        return [v2.Resize((image_size, image_size))]
    return [v2.Resize(eval_resize), v2.CenterCrop(image_size)]


def _classification_finish(mean: Stats, std: Stats) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)), v2.ToPureTensor()]
