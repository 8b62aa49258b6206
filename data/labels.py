"""Cityscapes label maps, taken from the official cityscapesscripts label table."""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS

IGNORE_INDEX = 255
_TRAIN = sorted((lab for lab in _LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId)
NUM_CLASSES = len(_TRAIN)
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN)
CLASS_COLORS: tuple[tuple[int, int, int], ...] = tuple(tuple(lab.color) for lab in _TRAIN)
TRAIN_TO_LABEL_ID: tuple[int, ...] = tuple(lab.id for lab in _TRAIN)


def label_to_train_lut() -> np.ndarray:
    """A 256-entry uint8 table mapping labelIds to trainIds (255 for ignored labels)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in _LABELS:
        if lab.id >= 0 and 0 <= lab.trainId < IGNORE_INDEX:
            lut[lab.id] = lab.trainId
    return lut


def train_to_label_lut() -> np.ndarray:
    """A 256-entry uint8 table mapping trainIds to labelIds (255 maps to 0, 'unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:NUM_CLASSES] = TRAIN_TO_LABEL_ID
    return lut
