"""Tasks: what a network predicts, and everything that differs with it.

A task owns how a model's output is read (a tensor, torchvision's `{"out": ...}` dict, or a tuple whose
first entry is the logits), the logit distillation loss, the supervised loss, its metrics (names,
which one is the score, their labels), how a model is scored on a val loader, and how its predictions of a
folder of images are written (`trainable.predict`) and scored (`trainable.evaluate`, with its flags). Nothing
outside this module names a metric: callers use `task.score`, `task.metrics(num_classes)` and `TaskResult`.

A new task is one `@register` class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.errors import InputError
from data.labels import IGNORE_INDEX, NUM_CLASSES
from data.settings import IMAGENET_MEAN, IMAGENET_STD, DataSettings, EvalSettings
from trainable import label_ids, losses, predictions_csv
from trainable.inference import infer_logits
from trainable.miou import class_names, confusion_matrix, iou_per_class, mean_iou
from trainable.modes import in_mode
from trainable.precision import autocast
from trainable.visualize import prediction_grid

Log = Callable[[str], None]


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


@dataclass(frozen=True)
class Flag:
    """A flag of `python -m trainable.evaluate` that a task reads; an option's first choice is its default."""

    name: str
    help: str
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The flag's attribute in argparse's namespace."""
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class PredictOptions:
    """How `trainable.predict` runs a model over images; each task reads what applies to it."""

    batch: int = 32  # images per forward pass of a classifier
    eval: EvalSettings = EvalSettings()  # a segmenter's whole or sliding-window inference, flip


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


class Task:
    """The interface every task implements; see the module docstring."""

    name: str
    score: str  # the metric ASHA prunes on and the front is drawn over (higher is better)
    label: str  # how people call the score metric
    eval_batch_size: Callable[[DataSettings], int]
    inventory_size: tuple[int, int]  # the input size `trainable.layers` measures a teacher at by default
    score_inputs: tuple[Flag, Flag]  # trainable.evaluate's flags naming the predictions and the ground truth
    score_options: tuple[Flag, ...] = ()  # and the options `score_predictions` takes, by their dest

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        """The model's logits for a batch (N, C) or (N, C, H, W)."""
        return read_logits(model(images))

    def infer(self, model: nn.Module, images: Tensor, settings: EvalSettings) -> Tensor:
        """The logits that evaluation and predictions read, with the eval recipe where the task has one."""
        return self.logits(model, images)

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

    def counts(self, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """What one val batch adds to the evaluation's tally (summed over batches)."""
        raise NotImplementedError

    def result(self, total: Tensor | None, num_classes: int) -> TaskResult:
        """The metrics of a tally of `counts` (None: no batch)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, data: DataSettings, num_classes: int,
                 device: torch.device | str = "cpu") -> TaskResult:
        """The metrics of `model` (eval mode, then back) over `(images, target)` batches; bf16 autocast on CUDA."""
        device = torch.device(device)
        total: Tensor | None = None
        with in_mode(model, training=False):
            for images, target in loader:
                images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
                with autocast(device):
                    logits = self.infer(model, images, data.eval)
                counts = self.counts(logits.float(), target, num_classes)
                total = counts if total is None else total + counts
        return self.result(total, num_classes)

    def check_predictable(self, meta: Mapping[str, Any], source: str) -> None:
        """InputError naming `source` when `trainable.predict` cannot write predictions of the model that `meta`
        (a student file's record, or a zoo teacher's `arch_args`) describes."""

    def write_predictions(self, model: nn.Module, meta: Mapping[str, Any], images: Path, paths: Sequence[Path],
                          out: Path, options: PredictOptions, device: torch.device, log: Log) -> str:
        """Write the model's predictions of `paths` (every image below `images`) into `out`; says what it wrote."""
        raise NotImplementedError

    def score_predictions(self, predictions: Path, truth: Path, **options: str) -> TaskResult:
        """The metrics of predictions written by `write_predictions` against the ground truth."""
        raise NotImplementedError

    def report(self, result: TaskResult) -> str:
        """`trainable.evaluate`'s text for people (without --json)."""
        raise NotImplementedError


_TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls()
    return cls


def names() -> list[str]:
    return sorted(_TASKS)


def registered() -> list[Task]:
    """Every task, in registration order."""
    return list(_TASKS.values())


def get(name: str) -> Task:
    if name not in _TASKS:
        raise InputError(f"unknown task {name!r}: expected one of {', '.join(names())}")
    return _TASKS[name]


@register
class Segmentation(Task):
    """Per-pixel classes; mean IoU over the classes (ignore 255); whole or sliding-window inference; predictions are
    Cityscapes labelIds PNGs."""

    name = "segmentation"
    score = "miou"
    label = "mIoU"
    inventory_size = (1024, 2048)
    score_inputs = (Flag("--pred-dir", "folder of prediction PNGs, searched recursively"),
                    Flag("--gt-dir", "a gtFine/<split> folder of *_gtFine_labelIds.png"))
    score_options = (Flag("--pred-format", f"what the prediction pixels hold (default {label_ids.PRED_FORMATS[0]})",
                          label_ids.PRED_FORMATS),)

    @staticmethod
    def eval_batch_size(data: DataSettings) -> int:
        return 1  # val images may differ in size

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = read_logits(model(images))
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def infer(self, model: nn.Module, images: Tensor, settings: EvalSettings) -> Tensor:
        return infer_logits(lambda x: self.logits(model, x), images, settings)

    def ce_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)

    def preview(self, images: Tensor, teacher_logits: Tensor, student_logits: Tensor) -> Tensor | None:
        return prediction_grid(images, teacher_logits, student_logits)

    def counts(self, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """The batch's confusion matrix against its trainId masks."""
        # max(1).indices: the first maximal class, as argmax(1) gives it, about 2.5x faster on CPU
        return confusion_matrix(logits.max(1).indices, target, num_classes, IGNORE_INDEX)

    def result(self, total: Tensor | None, num_classes: int) -> TaskResult:
        conf = total if total is not None else torch.zeros(num_classes, num_classes, dtype=torch.int64)
        per_class = dict(zip(class_names(conf.shape[0]), iou_per_class(conf)))
        miou = mean_iou(conf)
        # `mIoU` is the Cityscapes scripts' name for the same figure, kept for files read by their users.
        return TaskResult({self.score: miou}, {"mIoU": None if math.isnan(miou) else miou, "per_class": per_class})

    def check_predictable(self, meta: Mapping[str, Any], source: str) -> None:
        classes = int(meta["arch_args"].get("num_classes", NUM_CLASSES))
        if classes != NUM_CLASSES:
            raise InputError(f"{source}: num_classes is {classes}; the Cityscapes labelIds format expects {NUM_CLASSES}")

    def write_predictions(self, model: nn.Module, meta: Mapping[str, Any], images: Path, paths: Sequence[Path],
                          out: Path, options: PredictOptions, device: torch.device, log: Log) -> str:
        pairs = label_ids.output_paths(images, paths, out)
        pre = meta.get("preprocess") or {}
        label_ids.predict_folder(lambda batch: self.infer(model, batch, options.eval), pairs, device, log,
                                 pre.get("mean", IMAGENET_MEAN), pre.get("std", IMAGENET_STD))
        return f"{len(pairs)} labelIds PNGs to {out}"

    def score_predictions(self, predictions: Path, truth: Path, **options: str) -> TaskResult:
        return self.result(label_ids.folder_confusion(predictions, truth, **options), NUM_CLASSES)

    def report(self, result: TaskResult) -> str:
        rows = [f"{'class':<15} {'IoU':>7}"]
        rows += [f"{name:<15} {'n/a' if iou is None else f'{iou:.4f}':>7}"
                 for name, iou in result.details["per_class"].items()]
        rows.append(f"{self.label:<15} {result[self.score]:>7.4f}")
        return "\n".join(rows)


@register
class Classification(Task):
    """One class per image; top-1 and top-5 accuracy (top-5 only with at least 5 classes); predictions are a CSV."""

    name = "classification"
    score = "top1"
    label = "top-1"
    inventory_size = (224, 224)
    score_inputs = (Flag("--pred-csv", "predictions.csv of trainable.predict (path,class,score)"),
                    Flag("--val-dir", "the ImageFolder split it predicts (<class>/<image>)"))

    @staticmethod
    def eval_batch_size(data: DataSettings) -> int:
        return data.batch_size

    @staticmethod
    def _ks(num_classes: int) -> tuple[int, ...]:
        return tuple(k for k in (1, 5) if k <= num_classes)

    def metrics(self, num_classes: int) -> tuple[str, ...]:
        return tuple(f"top{k}" for k in self._ks(num_classes))

    def ce_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target)

    def counts(self, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """The batch's hits per top-k, then its number of images."""
        if logits.shape[1] != num_classes:
            raise InputError(f"model outputs {logits.shape[1]} classes; the val split has {num_classes}")
        ks = self._ks(num_classes)
        correct = logits.topk(max(ks), dim=1).indices == target[:, None]
        hits = torch.stack([correct[:, :k].any(1).sum() for k in ks])
        return torch.cat([hits, hits.new_tensor([target.shape[0]])])

    def result(self, total: Tensor | None, num_classes: int) -> TaskResult:
        ks = self._ks(num_classes)
        *hits, seen = total.tolist() if total is not None else [0] * (len(ks) + 1)
        return TaskResult({f"top{k}": (h / seen if seen else float("nan")) for k, h in zip(ks, hits)}, {"images": seen})

    def check_predictable(self, meta: Mapping[str, Any], source: str) -> None:
        predictions_csv.check_preprocess(meta, source)

    def write_predictions(self, model: nn.Module, meta: Mapping[str, Any], images: Path, paths: Sequence[Path],
                          out: Path, options: PredictOptions, device: torch.device, log: Log) -> str:
        rows = predictions_csv.classify_folder(
            lambda batch: self.infer(model, batch, options.eval), images, paths,
            predictions_csv.classification_transform(meta), meta.get("classes"), device, options.batch, log)
        path = out / predictions_csv.PREDICTIONS_CSV
        predictions_csv.write_csv(rows, path)
        return f"{len(rows)} predictions to {path}"

    def score_predictions(self, predictions: Path, truth: Path, **options: str) -> TaskResult:
        per_class = predictions_csv.class_hits(predictions, truth)
        seen = sum(total for _, total in per_class.values())
        top1 = sum(hits for hits, _ in per_class.values()) / seen
        return TaskResult({self.score: top1}, {"images": seen, "per_class": {
            name: (hits / total if total else None) for name, (hits, total) in per_class.items()}})

    def report(self, result: TaskResult) -> str:
        return f"{self.label} {result[self.score]:.4f} ({result.details['images']} images)"
