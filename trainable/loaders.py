"""DataLoaders built from typed data settings, through the dataset kind the settings name."""
from __future__ import annotations

import torch
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
