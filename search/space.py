"""Search-space files: YAML validated strictly into typed objects at the edge.

Every error is an InputError of one line: `<file>: <field>: expected <what>, got <value>`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from data.errors import InputError
from trainable import models
from trainable.config import DataSettings, DistillSettings, TeacherSettings
from trainable.evaluate import EvalSettings

SECTIONS = ("teacher", "data", "policy", "distill", "search")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SEARCHERS = ("tpe", "nsga2", "random")
SCORES = ("miou",)
# Distillation settings that may not be searched: they shape the trial, not the student.
FIXED_ONLY = ("epochs", "steps_per_epoch", "seed")


@dataclass(frozen=True)
class Distribution:
    """A searched setting: `kind` in DISTRIBUTIONS over `bounds` (or `values` for choice), with a default."""

    kind: str
    values: tuple
    default: Any


@dataclass(frozen=True)
class LayerGroup:
    layers: tuple[str, ...]
    ops: tuple[str, ...]
    per_layer: bool


@dataclass(frozen=True)
class PolicySpace:
    groups: tuple[LayerGroup, ...]
    max_param_ratio: float | None = None
    max_params: int | None = None


@dataclass(frozen=True)
class AshaSettings:
    grace_period: int = 1
    reduction_factor: int = 3
    max_t: int | None = None


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 16
    searcher: Literal["tpe", "nsga2", "random"] = "tpe"
    asha: AshaSettings | None = AshaSettings()
    score: str = "miou"
    cpu: float = 1.0
    gpu: float = 0.0
    max_concurrent: int = 1
    seed: int = 0
    retrain_epochs: int | None = None


@dataclass(frozen=True)
class TeacherTraining:
    """Supervised training of the space's own teacher (`search/teacher.py`)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 8


@dataclass(frozen=True)
class Space:
    path: Path
    teacher: TeacherSettings
    teacher_training: TeacherTraining | None
    data: DataSettings
    policy: PolicySpace
    distill: DistillSettings
    searched: dict[str, Distribution]
    search: SearchSettings

    @property
    def name(self) -> str:
        return self.path.stem


class _Reader:
    """Typed field access over one section of the YAML, with errors that name file and field."""

    def __init__(self, path: Path, prefix: str, raw: Any, allowed: tuple[str, ...]):
        self.path, self.prefix = path, prefix
        if not isinstance(raw, Mapping):
            self.fail("", "a mapping", raw)
        unknown = [k for k in raw if k not in allowed]
        if unknown:
            self.fail(str(unknown[0]), f"no such field (allowed: {', '.join(allowed)})", raw[unknown[0]], unknown=True)
        self.raw = raw

    def field(self, name: str) -> str:
        return f"{self.prefix}.{name}" if name else self.prefix

    def fail(self, name: str, expected: str, got: Any, unknown: bool = False) -> None:
        if unknown:
            raise InputError(f"{self.path}: {self.field(name)}: {expected}")
        raise InputError(f"{self.path}: {self.field(name)}: expected {expected}, got {got!r}")

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, kind: type | tuple[type, ...], expected: str, default: Any = ..., check=None) -> Any:
        if name not in self.raw:
            if default is ...:
                raise InputError(f"{self.path}: {self.field(name)}: missing (expected {expected})")
            return default
        value = self.raw[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(name, expected, value)
        if not isinstance(value, kind) or (check is not None and not check(value)):
            self.fail(name, expected, value)
        return value

    def number(self, name: str, default: Any = ..., positive: bool = False, low: float | None = None) -> float | None:
        def ok(v: float) -> bool:
            return math.isfinite(v) and (not positive or v > 0) and (low is None or v >= low)

        bound = " > 0" if positive else (f" >= {low}" if low is not None else "")
        value = self.get(name, (int, float), f"a number{bound}", default, ok)
        return None if value is None else float(value)

    def integer(self, name: str, default: Any = ..., low: int = 0) -> int:
        return self.get(name, int, f"an integer >= {low}", default, lambda v: v >= low)

    def text(self, name: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        expected = f"one of {', '.join(choices)}" if choices else "a string"
        return self.get(name, str, expected, default, (lambda v: v in choices) if choices else None)

    def pair(self, name: str, kind: type, default: Any = ...) -> tuple:
        value = self.get(name, list, f"a list of two {kind.__name__}s", default,
                         lambda v: len(v) == 2 and all(isinstance(x, kind) and not isinstance(x, bool) and x > 0 for x in v))
        return tuple(kind(x) for x in value)

    def section(self, name: str, allowed: tuple[str, ...], default: Any = ...) -> "_Reader | None":
        if name not in self.raw:
            if default is ...:
                raise InputError(f"{self.path}: {self.field(name)}: missing section")
            return default
        return _Reader(self.path, self.field(name), self.raw[name], allowed)


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _teacher(r: _Reader, base: Path) -> tuple[TeacherSettings, TeacherTraining | None]:
    arch = r.text("arch", choices=tuple(models.archs()))
    checkpoint = r.get("checkpoint", str, "a path", None)
    training = r.section("train", ("epochs", "lr", "batch_size"), None)
    if checkpoint is None and training is None:
        r.fail("checkpoint", "a path (absent only with a teacher.train section)", None)
    teacher = TeacherSettings(
        arch=arch,
        num_classes=r.integer("num_classes", 19, low=1),
        width=r.number("width", 1.0, positive=True),
        checkpoint=_resolve(base, checkpoint) if checkpoint else None,
    )
    if training is None:
        return teacher, None
    return teacher, TeacherTraining(
        epochs=training.integer("epochs", 10, low=1),
        lr=training.number("lr", 1e-3, positive=True),
        batch_size=training.integer("batch_size", 8, low=1),
    )


def _data(r: _Reader, base: Path) -> DataSettings:
    r.text("dataset", "cityscapes", choices=("cityscapes",))
    unlabeled = r.get("unlabeled", list, "a non-empty list of folders under root", ["leftImg8bit/train"],
                      lambda v: bool(v) and all(isinstance(x, str) for x in v))
    mode = r.text("eval", "whole", choices=("whole", "sliding"))
    return DataSettings(
        root=_resolve(base, r.text("root")),
        unlabeled=tuple(unlabeled),
        train=r.text("train", "train"),
        val=r.text("val", "val"),
        crop=r.pair("crop", int),
        scale=r.pair("scale", float, (0.5, 2.0)),
        batch_size=r.integer("batch_size", 2, low=1),
        workers=r.integer("workers", 0, low=0),
        eval=EvalSettings(
            mode=mode,
            crop=r.integer("eval_crop", 1024, low=1),
            flip=r.get("eval_flip", bool, "true or false", False),
            scales=tuple(float(s) for s in r.get("eval_scales", list, "a list of positive numbers", [1.0],
                                                  lambda v: bool(v) and all(isinstance(s, (int, float)) and s > 0 for s in v))),
        ),
        max_val_images=r.integer("max_val_images", None, low=1),
    )


def _policy(r: _Reader) -> PolicySpace:
    raw_groups = r.get("groups", list, "a non-empty list of {layers, ops, per_layer}", check=bool)
    groups = []
    for i, raw in enumerate(raw_groups):
        g = _Reader(r.path, f"{r.prefix}.groups[{i}]", raw, ("layers", "ops", "per_layer"))
        layers = g.get("layers", list, "a non-empty list of glob patterns", check=lambda v: bool(v) and all(isinstance(x, str) for x in v))
        ops = g.get("ops", list, "a non-empty list of ops", check=lambda v: bool(v) and all(isinstance(x, str) for x in v))
        groups.append(LayerGroup(tuple(layers), tuple(ops), g.get("per_layer", bool, "true or false", False)))
    budget = r.section("budget", ("max_param_ratio", "max_params"), None)
    ratio = budget.number("max_param_ratio", None, positive=True) if budget else None
    absolute = budget.integer("max_params", None, low=1) if budget else None
    return PolicySpace(tuple(groups), ratio, absolute)


def _distribution(r: _Reader, name: str, raw: Mapping) -> Distribution:
    d = _Reader(r.path, r.field(name), raw, DISTRIBUTIONS + ("default",))
    kinds = [k for k in DISTRIBUTIONS if k in raw]
    if len(kinds) != 1:
        d.fail("", f"exactly one of {', '.join(DISTRIBUTIONS)} (with an optional default)", dict(raw))
    kind = kinds[0]
    if kind == "choice":
        values = d.get("choice", list, "a non-empty list", check=bool)
    else:
        numeric = int if kind == "int" else (int, float)
        values = d.get(kind, list, f"[low, high] with low < high{' and low > 0' if kind == 'loguniform' else ''}",
                       check=lambda v: len(v) == 2 and all(isinstance(x, numeric) and not isinstance(x, bool) for x in v)
                       and v[0] < v[1] and (kind != "loguniform" or v[0] > 0))
    default = raw.get("default", values[0] if kind == "choice" else None)
    if default is not None and kind == "choice" and default not in values:
        d.fail("default", f"one of {values}", default)
    if default is not None and kind != "choice" and not values[0] <= default <= values[1]:
        d.fail("default", f"a value within {values}", default)
    return Distribution(kind, tuple(values), default)


def _number(low: float, integer: bool = False, optional: bool = False):
    def check(v: Any) -> bool:
        if v is None:
            return optional
        kinds = (int,) if integer else (int, float)
        return isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and v >= low
    return check, f"{'an integer' if integer else 'a number'} >= {low}{' or null' if optional else ''}"


def _one_of(*choices: str):
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


# What each distillation setting accepts, fixed or as the values of a distribution.
_DISTILL_CHECKS = {
    "epochs": _number(1, integer=True),
    "steps_per_epoch": _number(1, integer=True, optional=True),
    "w_hint": _number(0),
    "w_kd": _number(0),
    "w_ce": _number(0),
    "temperature": _number(1e-6),
    "schedule": _one_of("oneshot", "progressive"),
    "train": _one_of("plugged", "all"),
    "optimizer": _one_of("adamw", "sgd"),
    "lr": _number(1e-12),
    "weight_decay": _number(0),
    "momentum": _number(0),
    "lr_schedule": _one_of("cosine", "poly"),
    "warmup_steps": _number(0, integer=True),
    "accumulate": _number(1, integer=True),
    "seed": _number(0, integer=True),
}


def _distill(r: _Reader) -> tuple[DistillSettings, dict[str, Distribution]]:
    fixed: dict[str, Any] = {}
    searched: dict[str, Distribution] = {}
    for name, raw in r.raw.items():
        check, expected = _DISTILL_CHECKS[name]
        if isinstance(raw, Mapping):
            if name in FIXED_ONLY:
                r.fail(name, "a fixed value (it cannot be searched)", dict(raw))
            dist = _distribution(r, name, raw)
            values = dist.values if dist.kind == "choice" else dist.values + ((dist.default,) if dist.default is not None else ())
            for value in values:
                if not check(value):
                    r.fail(name, f"values that are each {expected}", list(dist.values))
            searched[name] = dist
            if dist.default is not None:
                fixed[name] = dist.default
        elif not check(raw):
            r.fail(name, expected, raw)
        else:
            fixed[name] = raw
    return replace(DistillSettings(), **fixed), searched


def _search(r: _Reader) -> SearchSettings:
    scheduler = r.get("scheduler", (str, dict), "none or {asha: {grace_period, reduction_factor, max_t}}", "none")
    asha: AshaSettings | None = None
    if scheduler != "none":
        if not isinstance(scheduler, dict) or list(scheduler) != ["asha"]:
            r.fail("scheduler", "none or {asha: {grace_period, reduction_factor, max_t}}", scheduler)
        a = _Reader(r.path, "search.scheduler.asha", scheduler["asha"] or {}, ("grace_period", "reduction_factor", "max_t"))
        asha = AshaSettings(a.integer("grace_period", 1, low=1), a.integer("reduction_factor", 3, low=2), a.integer("max_t", None, low=1))
    resources = r.section("resources", ("cpu", "gpu"), None)
    return SearchSettings(
        num_samples=r.integer("num_samples", 16, low=1),
        searcher=r.text("searcher", "tpe", choices=SEARCHERS),
        asha=asha,
        score=r.text("score", "miou", choices=SCORES),
        cpu=resources.number("cpu", 1.0, positive=True) if resources else 1.0,
        gpu=resources.number("gpu", 0.0, low=0) if resources else 0.0,
        max_concurrent=r.integer("max_concurrent", 1, low=1),
        seed=r.integer("seed", 0),
        retrain_epochs=r.integer("retrain_epochs", None, low=1),
    )


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; paths inside it are relative to the current folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: space file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if raw is None:
        raise InputError(f"{path}: empty file (expected the sections {', '.join(SECTIONS)})")
    top = _Reader(path, "", raw, SECTIONS)
    top.prefix = "(top level)"
    for section in SECTIONS:
        if section not in raw:
            raise InputError(f"{path}: {section}: missing section")
    base = Path.cwd()
    teacher, training = _teacher(_Reader(path, "teacher", raw["teacher"], ("arch", "num_classes", "width", "checkpoint", "train")), base)
    distill, searched = _distill(_Reader(path, "distill", raw["distill"], tuple(_DISTILL_CHECKS)))
    return Space(
        path=path,
        teacher=teacher,
        teacher_training=training,
        data=_data(_Reader(path, "data", raw["data"], (
            "dataset", "root", "unlabeled", "train", "val", "crop", "scale", "batch_size", "workers",
            "eval", "eval_crop", "eval_flip", "eval_scales", "max_val_images")), base),
        policy=_policy(_Reader(path, "policy", raw["policy"], ("groups", "budget"))),
        distill=distill,
        searched=searched,
        search=_search(_Reader(path, "search", raw["search"], (
            "num_samples", "searcher", "scheduler", "score", "resources", "max_concurrent", "seed", "retrain_epochs"))),
    )
