"""Typed settings of one distillation run, of the teacher and of latency; `search/` reads space files into these.

Each field a space file may set is a `data.schema.setting`: its doc, default and rules are the space schema.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from data.errors import InputError
from data.schema import FieldError, Rule, setting
from trainable import models
from trainable.checkpoint import load_weights
from trainable.models import Task
from trainable.parts import BatchNormMode, Train
from trainable.precision import Precision

Backend = Literal["torch", "onnxruntime"]


def _is_arch(v: Any) -> bool:
    return isinstance(v, str) and (v in models.archs() or (v.count(":") == 1 and all(v.split(":"))))


_ARCH = Rule(f"a zoo arch ({', '.join(models.archs())}) or module:callable", _is_arch)
_ARGS = Rule("a mapping of keyword arguments", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
             lambda v: tuple(sorted(v.items())))


@dataclass(frozen=True)
class TeacherTraining:
    """Supervised training of the space's own teacher (`search/teacher.py`)."""

    epochs: int = setting("training epochs", 10, low=1)
    lr: float = setting("learning rate", 1e-3, above=0)
    batch_size: int = setting("images per batch", 8, low=1)


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher: a zoo arch or `module:callable`, its keyword arguments, its task and its weights file.

    A zoo arch's task is the zoo's; a `module:callable` must say its task.
    """

    arch: str = setting("a zoo arch, or module:callable (imported from the space file's folder first)", rule=_ARCH)
    args: tuple[tuple[str, Any], ...] = setting("module:callable: the keyword arguments it is called with", (),
                                                rule=_ARGS, default_text="`{}`")
    num_classes: int | None = setting("zoo arch: its classes; null: the zoo builder's default", None, low=1)
    width: float | None = setting("zoo arch: every channel count scaled by this; null: the zoo builder's default",
                                  None, above=0)
    task: Task | None = setting("what the teacher predicts: its metrics and KD loss", None,
                                default_text="the zoo arch's task; required for module:callable")
    checkpoint: Path | None = setting("the teacher's weights file", None, required=True)
    strip_prefix: str | None = setting("a prefix removed from the checkpoint's keys (e.g. Lightning's model.); "
                                       "DataParallel's module. goes without it", None)
    train: TeacherTraining | None = setting("how search/teacher.py trains this teacher; absent: it is not trained "
                                            "here", None)
    search_path: Path | None = None  # the space file's folder: a `module:callable` is imported from here first

    def __post_init__(self) -> None:
        if not models.is_zoo(self.arch):
            if self.task is None:
                raise FieldError("task", f"one of {', '.join(get_args(Task))} (a module:callable arch says its task)")
            return
        task = models.info(self.arch).task
        if self.task not in (None, task):
            raise FieldError("task", f"{task} (the task of {self.arch})", self.task)
        object.__setattr__(self, "task", task)

    @classmethod
    def of(cls, arch: str, **fields) -> TeacherSettings:
        """Settings from keyword arguments, `args` a mapping."""
        return cls(arch, args=_ARGS.convert(dict(fields.pop("args", {}))), **fields)

    @property
    def arch_args(self) -> dict[str, Any]:
        """What the arch's builder is called with: `args`, or a zoo arch's num_classes and width when set."""
        zoo = {"num_classes": self.num_classes, "width": self.width}
        return {**dict(self.args), **{k: v for k, v in zoo.items() if v is not None}}

    def structure(self) -> nn.Module:
        """The teacher's modules on the meta device: instant at any size, no weights read."""
        with torch.device("meta"):
            return models.build(self.arch, self.search_path, **self.arch_args)

    def build(self, load: bool = True) -> nn.Module:
        """The teacher in eval mode with frozen weights, loaded from `checkpoint` when `load` and one is set."""
        teacher = models.build(self.arch, self.search_path, **self.arch_args)
        if load and self.checkpoint is not None:
            load_weights(teacher, self.checkpoint, strip_prefix=self.strip_prefix)
        teacher.eval().requires_grad_(False)
        return teacher


@dataclass(frozen=True)
class DistillSettings:
    """One distillation run. A `searchable` field may be a distribution in a space: each trial samples its own.

    The others cannot vary by trial: `epochs` is ASHA's time axis and `steps_per_epoch` the length of an epoch,
    the same for every trial they compare; a search over `seed` optimises noise; `precision` says how a trial
    computes on its device, not what it learns.
    """

    epochs: int = setting("epochs of each trial (ASHA's time axis)", 10, low=1)
    steps_per_epoch: int | None = setting("batches per epoch; null: one pass over the unlabeled images", None, low=1)
    w_hint: float = setting("weight of the hint loss at the plugged layers", 1.0, low=0, searchable=True)
    w_kd: float = setting("weight of the logit KD loss (KL at `temperature`, on the hint's scale)", 0.1, low=0,
                          searchable=True)
    w_ce: float = setting("weight of the label loss; > 0 trains on the labeled train split instead of unlabeled "
                          "images", 0.0, low=0, searchable=True)
    w_edge: float = setting("weight of the edge-output KD loss (teachers with return_edge: gscnn)", 0.0, low=0,
                            searchable=True)
    temperature: float = setting("temperature of the logit KD loss", 4.0, above=0, searchable=True)
    schedule: Literal["oneshot", "progressive"] = setting(
        "oneshot: every plug trains from the start; progressive: plugs join earliest first, over the epochs",
        "oneshot", searchable=True)
    train: Train = setting("what trains: the plugs only, everything from the first plugged layer on (in forward "
                           "order), or the whole student", "downstream", searchable=True)
    bn: BatchNormMode = setting("BatchNorm layers from the first plugged layer on: batch statistics while training, "
                                "the teacher's running statistics, or those re-estimated over unlabeled images before "
                                "each evaluation", "batch", searchable=True)
    optimizer: Literal["adamw", "sgd"] = setting("the optimizer", "adamw", searchable=True)
    lr: float = setting("learning rate", 1e-2, above=0, searchable=True)
    weight_decay: float = setting("weight decay", 1e-4, low=0, searchable=True)
    momentum: float = setting("sgd's momentum", 0.9, low=0, searchable=True)
    lr_schedule: Literal["cosine", "poly"] = setting("learning-rate decay after the warm-up", "cosine", searchable=True)
    warmup_steps: int = setting("optimizer steps of linear learning-rate warm-up", 0, low=0, searchable=True)
    accumulate: int = setting("batches per optimizer step (gradient accumulation)", 1, low=1, searchable=True)
    seed: int = setting("seed of the plugs' initial weights and the data order", 0, low=0)
    init: Literal["library", "scratch"] | None = setting(
        "plugs start from the plug library's trained ones, or from their op's data-free start (the teacher's "
        "weights by truncated SVD)", None, searchable=True,
        default_text="library with a library section, else scratch")
    precision: Precision = setting("auto: bf16 autocast on a GPU that has it, else fp32", "auto")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: batch `batch` at the space's input size, `warmup` runs then the median of `runs`."""

    enabled: bool = setting("time each trial's student (and the teacher once) on the trial's device", True)
    backend: Backend = setting("torch, or onnxruntime (the student exported to ONNX)", "torch")
    batch: int = setting("images per timed forward", 1, low=1)
    warmup: int = setting("untimed forwards first", 3, low=0)
    runs: int = setting("timed forwards; latency_ms is their median", 20, low=1)


def describe_device(device: torch.device) -> str:
    """What a latency was measured on: the GPU's name, or the CPU's architecture and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


DEVICE_HELP = "a torch device (cpu, cuda, cuda:1, ...), or auto: CUDA when available, else CPU (default auto)"


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU; InputError (`--device`) for a name torch does not know or a CUDA
    device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available; expected --device cpu or auto")
    return device
