"""DataLoaders built from typed data settings."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from data.cityscapes import CityscapesSegmentation
from data.folder import UnlabeledImages
from data.transforms import eval_transforms, train_transforms
from trainable.config import DataSettings


def unlabeled_set(data: DataSettings) -> Dataset:
    """Every image below the `unlabeled` folders, with training augmentation, no labels."""
    return UnlabeledImages([data.root / folder for folder in data.unlabeled], train_transforms(data.crop, data.scale))


def labeled_train_set(data: DataSettings) -> Dataset:
    return CityscapesSegmentation(data.root, data.train, train_transforms(data.crop, data.scale))


def val_set(data: DataSettings) -> Dataset:
    dataset = CityscapesSegmentation(data.root, data.val, eval_transforms())
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


def val_loader(data: DataSettings) -> DataLoader:
    return DataLoader(val_set(data), batch_size=1, shuffle=False, num_workers=data.workers)
