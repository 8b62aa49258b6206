"""DataLoaders built from typed data settings, through the dataset kind the settings name."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from data.kinds import kind
from data.settings import DataSettings


def unlabeled_set(data: DataSettings) -> Dataset:
    """Every image below the `unlabeled` folders, with training augmentation, no labels."""
    return kind(data.dataset).unlabeled(data)


def labeled_train_set(data: DataSettings) -> Dataset:
    return kind(data.dataset).train(data)


def val_set(data: DataSettings) -> Dataset:
    dataset = kind(data.dataset).val(data)
    if data.max_val_images is not None and data.max_val_images < len(dataset):
        return Subset(dataset, range(data.max_val_images))
    return dataset


def train_loader(dataset: Dataset, data: DataSettings, seed: int) -> DataLoader:
    """Shuffled batches whose order and augmentation depend only on `seed` (one seed per epoch)."""
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= data.batch_size,
        num_workers=data.workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def val_loader(data: DataSettings, batch_size: int = 1) -> DataLoader:
    return DataLoader(val_set(data), batch_size=batch_size, shuffle=False, num_workers=data.workers)


def same_shape_batches(batches: Iterable[Sequence[Tensor]], size: int) -> Iterator[tuple[Tensor, ...]]:
    """`batches` with consecutive ones of equal item shapes concatenated, up to `size` items: fewer, larger forwards
    (a segmentation val loader yields one image at a time, since a data set's images may differ in size)."""
    group: list[Sequence[Tensor]] = []
    count = 0
    for batch in batches:
        shapes = [t.shape[1:] for t in batch]
        if group and (count + len(batch[0]) > size or shapes != [t.shape[1:] for t in group[0]]):
            yield tuple(torch.cat(parts) for parts in zip(*group))
            group, count = [], 0
        group.append(batch)
        count += len(batch[0])
    if group:
        yield tuple(torch.cat(parts) for parts in zip(*group))


def kept_in_memory(batches: Callable[[], Iterable[Sequence[Tensor]]], limit_bytes: int) -> Callable[[], Iterable[Sequence[Tensor]]]:
    """`batches` read once and kept, for code that passes over them many times, when they fit in `limit_bytes`;
    else `batches` itself (read anew on each pass)."""
    kept, total = [], 0
    for batch in batches():
        total += sum(t.numel() * t.element_size() for t in batch)
        if total > limit_bytes:
            return batches
        kept.append(batch)
    return lambda: iter(kept)
