"""Mean IoU on the Cityscapes protocol: confusion matrices and class IoUs, as cityscapesscripts computes them."""
from __future__ import annotations

import torch
from torch import Tensor

from data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
    *, other_column: bool = False,
) -> Tensor:
    """(C, C) int64 counts, rows = ground-truth class, cols = predicted class; gt == ignore_index is dropped.

    With `other_column`, the result is (C, C + 1) and predictions outside [0, C) are counted in the last
    column ("no evaluated class"): false negatives of the gt class, false positives of none. Without it,
    such predictions raise ValueError.
    """
    keep = target != ignore_index
    gt = target[keep].long()
    guess = pred[keep].long()
    guess = torch.where((guess < 0) | (guess >= num_classes), num_classes, guess)
    width = num_classes + 1
    counts = torch.bincount(gt * width + guess, minlength=num_classes * width)
    if counts.numel() != num_classes * width:
        raise ValueError(f"target holds a class >= {num_classes} that is not ignore_index {ignore_index}")
    conf = counts.view(num_classes, width)
    if other_column:
        return conf
    if conf[:, num_classes].any():
        raise ValueError(f"pred holds values outside [0, {num_classes}); use other_column=True to count them")
    return conf[:, :num_classes]


def iou_per_class(conf: Tensor) -> list[float | None]:
    """tp / (tp + fp + fn) per class, None where the denominator is 0; `conf` is (C, C) or (C, C + 1)."""
    conf = conf.detach().cpu().long()
    num_classes = conf.shape[0]
    tp = conf.diagonal()[:num_classes]
    fn = conf.sum(1) - tp
    fp = conf[:, :num_classes].sum(0) - tp
    ious: list[float | None] = []
    for t, p, n in zip(tp.tolist(), fp.tolist(), fn.tolist()):
        denom = t + p + n
        ious.append(t / denom if denom else None)
    return ious


def mean_iou(conf: Tensor) -> float:
    """Mean of the defined class IoUs (nan if none is defined), summed in class order like the official script."""
    valid = [iou for iou in iou_per_class(conf) if iou is not None]
    return sum(valid) / len(valid) if valid else float("nan")


def class_names(num_classes: int) -> tuple[str, ...]:
    return CLASS_NAMES if num_classes == NUM_CLASSES else tuple(f"class{i}" for i in range(num_classes))
