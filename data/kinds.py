"""Dataset kinds by name (`data.dataset` of a space): each builds the unlabeled, train and val sets of its layout.

A kind is one entry here: `@register("name")` on a class with the `DatasetKind` methods. Val and train
items are `(image, target)`: a normalised float image (3, H, W) and an int64 mask (H, W) with 255 =
ignore for segmentation, or an int class index for classification. Unlabeled items are images alone.
"""
from __future__ import annotations

from typing import Callable, Literal, Protocol

from torch.utils.data import Dataset

from data.errors import InputError
from data.folder import UnlabeledImages
from data.settings import DataSettings

Task = Literal["segmentation", "classification"]


class DatasetKind(Protocol):
    task: Task
    unlabeled_default: tuple[str, ...] | None  # `data.unlabeled` when a space omits it; None: a space must give it

    def unlabeled(self, s: DataSettings) -> Dataset:
        """Every image below the `unlabeled` folders, with training augmentation, no labels."""

    def train(self, s: DataSettings) -> Dataset:
        """The labeled `train` split with training augmentation."""

    def val(self, s: DataSettings) -> Dataset:
        """The labeled `val` split, deterministic eval transforms."""

    def input_size(self, s: DataSettings) -> tuple[int, int]:
        """(H, W) of one training input: what FLOPs and latency are measured at."""

    def num_classes(self, s: DataSettings) -> int | None:
        """Classes the val split holds, when the layout says (class folders); None when it cannot tell."""


_KINDS: dict[str, DatasetKind] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        _KINDS[name] = cls()
        return cls

    return add


def names() -> list[str]:
    return sorted(_KINDS)


def kind(name: str) -> DatasetKind:
    if name not in _KINDS:
        raise InputError(f"unknown dataset kind {name!r}: expected one of {', '.join(names())}")
    return _KINDS[name]


def unlabeled_folders(s: DataSettings) -> tuple[str, ...]:
    """`data.unlabeled`, or the dataset kind's default; InputError naming the field for a kind without one."""
    folders = s.unlabeled if s.unlabeled is not None else kind(s.dataset).unlabeled_default
    if folders is None:
        raise InputError(f"data.unlabeled: missing; expected folders of unlabeled images below data.root (dataset "
                         f"kind {s.dataset} has no default)")
    return folders


def unlabeled_images(s: DataSettings, transform: Callable) -> UnlabeledImages:
    """Every image below the unlabeled folders; a missing or empty folder is an InputError naming `data.unlabeled`."""
    folders = [s.folder(f) for f in unlabeled_folders(s)]
    try:
        return UnlabeledImages(folders, transform)
    except InputError as err:
        raise InputError(f"data.unlabeled: {err}") from None


def unlabeled_defaults() -> str:
    """Each kind's default `unlabeled` folders, as the space reference states them."""
    folders = {name: _KINDS[name].unlabeled_default for name in names()}
    return "; ".join(f"{name}: {', '.join(found) if found else 'none, required'}" for name, found in folders.items())


from data import cityscapes, imagefolder, pairs  # noqa: E402,F401  (registers the kinds)
