"""Tasks: what a network predicts, and everything that differs with it.

A task owns how a model's output is read (a tensor, torchvision's `{"out": ...}` dict, or a tuple whose
first entry is the logits), the logit distillation loss, the supervised loss, its metrics (names,
which one is the score, their labels) and how a model is scored on a val loader. Nothing outside this
module names a metric: callers use `task.score`, `task.metrics(num_classes)` and `TaskResult`.

A new task is one `@register` class.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.errors import InputError
from data.labels import IGNORE_INDEX
from data.settings import DataSettings
from trainable import losses
from trainable.evaluate import class_names, confusion_matrix, infer_logits, iou_per_class, mean_iou
from trainable.precision import autocast
from trainable.visualize import prediction_grid


@dataclass
class TaskResult:
    """A model's scores on a val split: `values` by metric name (fractions), `details` for people (JSON)."""

    values: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> float:
        return self.values[metric]

    def to_json(self) -> dict[str, Any]:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.values.items()}
        return {**clean, **self.details}


def read_logits(output: Any) -> Tensor:
    """The logits inside a model's output: the tensor itself, `output["out"]`, or the first entry of a tuple."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        if "out" not in output:
            raise InputError(f"model output is a dict with keys {sorted(output)}; expected the logits under 'out'")
        return output["out"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise InputError(f"model output is a {type(output).__name__}; expected a tensor, a dict with 'out' or a tuple")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode for the block, then back in the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Task:
    """The interface every task implements; see the module docstring."""

    name: str
    score: str  # the metric ASHA prunes on and the front is drawn over (higher is better)
    label: str  # how people call the score metric
    eval_batch_size: Callable[[DataSettings], int]

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        """The model's logits for a batch (N, C) or (N, C, H, W)."""
        return read_logits(model(images))

    def metrics(self, num_classes: int) -> tuple[str, ...]:
        """The metric names this task reports for a model of `num_classes` outputs; the score first."""
        return (self.score,)

    def kd_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        return losses.kd_loss(student, teacher, temperature)

    def preview(self, images: Tensor, teacher_logits: Tensor, student_logits: Tensor) -> Tensor | None:
        """An image for TensorBoard comparing teacher and student predictions, when the task has one."""
        return None

    def ce_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Iterable, data: DataSettings, num_classes: int,
                 device: torch.device | str = "cpu") -> TaskResult:
        raise NotImplementedError


_TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls()
    return cls


def names() -> list[str]:
    return sorted(_TASKS)


def get(name: str) -> Task:
    if name not in _TASKS:
        raise InputError(f"unknown task {name!r}: expected one of {', '.join(names())}")
    return _TASKS[name]


@register
class Segmentation(Task):
    """Per-pixel classes; mean IoU over the classes (ignore 255); whole or sliding-window inference."""

    name = "segmentation"
    score = "miou"
    label = "mIoU"

    @staticmethod
    def eval_batch_size(data: DataSettings) -> int:
        return 1  # val images may differ in size

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = read_logits(model(images))
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def ce_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)

    def preview(self, images: Tensor, teacher_logits: Tensor, student_logits: Tensor) -> Tensor | None:
        return prediction_grid(images, teacher_logits, student_logits)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, data: DataSettings, num_classes: int,
                 device: torch.device | str = "cpu") -> TaskResult:
        """mIoU over `(image, trainId mask)` batches with the data's eval recipe; bf16 autocast on CUDA."""
        device = torch.device(device)
        conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        forward = lambda x: self.logits(model, x)  # noqa: E731
        with _eval_mode(model):
            for images, masks in loader:
                images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
                with autocast(device):
                    logits = infer_logits(forward, images, data.eval)
                # max(1).indices: the first maximal class, as argmax(1) gives it, about 2.5x faster on CPU
                conf += confusion_matrix(logits.max(1).indices, masks, num_classes, IGNORE_INDEX)
        per_class = dict(zip(class_names(num_classes), iou_per_class(conf)))
        miou = mean_iou(conf)
        # `mIoU` is the Cityscapes scripts' name for the same figure, kept for files read by their users.
        return TaskResult({"miou": miou}, {"mIoU": None if math.isnan(miou) else miou, "per_class": per_class})


@register
class Classification(Task):
    """One class per image; top-1 and top-5 accuracy (top-5 only with at least 5 classes)."""

    name = "classification"
    score = "top1"
    label = "top-1"

    @staticmethod
    def eval_batch_size(data: DataSettings) -> int:
        return data.batch_size

    def metrics(self, num_classes: int) -> tuple[str, ...]:
        return ("top1", "top5") if num_classes >= 5 else ("top1",)

    def ce_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, data: DataSettings, num_classes: int,
                 device: torch.device | str = "cpu") -> TaskResult:
        """Top-k accuracy over `(images, class index)` batches, one forward per batch; bf16 autocast on CUDA."""
        device = torch.device(device)
        ks = (1, 5) if num_classes >= 5 else (1,)
        hits = torch.zeros(len(ks), dtype=torch.int64, device=device)
        seen = 0
        with _eval_mode(model):
            for images, target in loader:
                images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
                with autocast(device):
                    logits = self.logits(model, images).float()
                if logits.shape[1] != num_classes:
                    raise InputError(f"model outputs {logits.shape[1]} classes; the val split has {num_classes}")
                top = logits.topk(max(ks), dim=1).indices
                correct = top == target[:, None]
                hits += torch.stack([correct[:, :k].any(1).sum() for k in ks])
                seen += images.shape[0]
        values = {f"top{k}": (h / seen if seen else float("nan")) for k, h in zip(ks, hits.tolist())}
        return TaskResult(values, {"images": seen})
