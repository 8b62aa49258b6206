"""Search-space files: YAML validated strictly into typed objects at the edge.

Every error is an InputError of one line naming the file and the field:
`<file>: <section.field>: expected <what>, got <value>`; an unknown field, a missing one and a file
that is not YAML say so in the same shape. Paths inside a space are relative to the current folder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

from data.errors import InputError
from trainable import models
from trainable.config import DistillSettings, TeacherSettings
from data.settings import DataSettings
from data.settings import EvalSettings
from trainable.ops import parse_op

SECTIONS = ("teacher", "data", "policy", "distill", "search")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SEARCHERS = ("tpe", "nsga2", "random")
SCORES = ("miou",)
# Distillation settings that may not be searched: they shape the trial, not the student.
FIXED_ONLY = ("epochs", "steps_per_epoch", "seed")


@dataclass(frozen=True)
class Distribution:
    """A searched setting: `kind` in DISTRIBUTIONS; `values` is (low, high), or the options of a choice."""

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


# ---- rules: what one value must be, as a test and the words that say it -------------------------


@dataclass(frozen=True)
class _Rule:
    expected: str
    ok: Callable[[Any], bool]
    kind: Literal["int", "float", "text", "other"] = "other"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nullable(rule: _Rule) -> _Rule:
    return _Rule(f"{rule.expected} or null", lambda v: v is None or rule.ok(v), rule.kind)


def _int(low: int) -> _Rule:
    return _Rule(f"an integer >= {low}", lambda v: _is_int(v) and v >= low, "int")


def _num(low: float, strict: bool = False, high: float | None = None) -> _Rule:
    words = f"a number {'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
    return _Rule(
        words, lambda v: _is_number(v) and (v > low if strict else v >= low) and (high is None or v <= high), "float"
    )


def _text(*choices: str) -> _Rule:
    if choices:
        return _Rule(f"one of {', '.join(choices)}", lambda v: v in choices, "text")
    return _Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v), "text")


_FLAG = _Rule("true or false", lambda v: isinstance(v, bool))
_PATH = _Rule("a path", lambda v: isinstance(v, str) and bool(v), "text")


def _list(item: _Rule, length: int | None = None, ordered: bool = False, distinct: bool = False) -> _Rule:
    """A non-empty list of values matching `item`: of `length`, non-decreasing if `ordered`, no repeats if `distinct`."""
    size = f"a list of {length}" if length else "a non-empty list of"
    words = f"{size} values, each {item.expected}" + (", low <= high" if ordered else "") + (", no repeats" if distinct else "")

    def ok(v: Any) -> bool:
        return (
            isinstance(v, list) and bool(v) and (length is None or len(v) == length) and all(item.ok(x) for x in v)
            and (not ordered or all(a <= b for a, b in zip(v, v[1:])))
            and (not distinct or len(set(map(repr, v))) == len(v))
        )

    return _Rule(words, ok)


def _is_op(v: Any) -> bool:
    try:
        parse_op(v)
    except InputError:
        return False
    return True


_OP = _Rule("an op (keep, dws, group<g>, bottleneck<b>, lowrank<r>)", _is_op, "text")

# ---- sections ----------------------------------------------------------------------------------

_MISSING = object()


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Section:
    """One mapping of the file: reads typed fields; every error names the file and the dotted field."""

    def __init__(self, path: Path, name: str, raw: Any, fields: tuple[str, ...]):
        self.path, self.name = path, name
        if not isinstance(raw, Mapping):
            raise self.error("", f"a mapping with the fields {', '.join(fields)}", raw)
        unknown = [key for key in raw if key not in fields]
        if unknown:
            raise InputError(f"{path}: {self.where(unknown[0])}: unknown field; expected one of {', '.join(fields)}")
        self.raw = raw

    def where(self, key: Any) -> str:
        return ".".join(str(part) for part in (self.name, key) if part != "") or "(top level)"

    def error(self, key: Any, expected: str, got: Any) -> InputError:
        return InputError(f"{self.path}: {self.where(key)}: expected {expected}, got {_show(got)}")

    def get(self, key: str, rule: _Rule, default: Any = _MISSING) -> Any:
        if key not in self.raw:
            if default is _MISSING:
                raise InputError(f"{self.path}: {self.where(key)}: missing; expected {rule.expected}")
            return default
        value = self.raw[key]
        if not rule.ok(value):
            raise self.error(key, rule.expected, value)
        return value

    def section(self, key: str, fields: tuple[str, ...], optional: bool = False) -> _Section | None:
        if key not in self.raw:
            if optional:
                return None
            raise InputError(
                f"{self.path}: {self.where(key)}: missing section; expected a mapping with the fields {', '.join(fields)}"
            )
        return _Section(self.path, self.where(key), self.raw[key], fields)


# Distillation runs on Cityscapes-layout data and is scored by mIoU: a space's teacher is a segmenter.
SEGMENTATION_ARCHS = tuple(a for a in models.archs() if models.info(a).task == "segmentation")


def _resolve(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path.cwd() / path


def _teacher(s: _Section) -> tuple[TeacherSettings, TeacherTraining | None]:
    teacher = TeacherSettings(
        arch=s.get("arch", _text(*SEGMENTATION_ARCHS)),
        num_classes=s.get("num_classes", _int(1), 19),
        width=float(s.get("width", _num(0, strict=True), 1.0)),
        checkpoint=_resolve(s.get("checkpoint", _PATH)),
    )
    t = s.section("train", ("epochs", "lr", "batch_size"), optional=True)
    if t is None:
        return teacher, None
    return teacher, TeacherTraining(
        epochs=t.get("epochs", _int(1), 10),
        lr=float(t.get("lr", _num(0, strict=True), 1e-3)),
        batch_size=t.get("batch_size", _int(1), 8),
    )


def _data(s: _Section) -> DataSettings:
    s.get("dataset", _text("cityscapes"), "cityscapes")
    return DataSettings(
        root=_resolve(s.get("root", _PATH)),
        unlabeled=tuple(s.get("unlabeled", _list(_PATH), ["leftImg8bit/train"])),
        train=s.get("train", _text(), "train"),
        val=s.get("val", _text(), "val"),
        crop=tuple(s.get("crop", _list(_int(1), length=2))),
        scale=tuple(float(x) for x in s.get("scale", _list(_num(0, strict=True), length=2, ordered=True), [0.5, 2.0])),
        batch_size=s.get("batch_size", _int(1), 2),
        workers=s.get("workers", _int(0), 0),
        eval=EvalSettings(
            mode=s.get("eval", _text("whole", "sliding"), "whole"),
            crop=s.get("eval_crop", _int(1), 1024),
            flip=s.get("eval_flip", _FLAG, False),
            scales=tuple(float(x) for x in s.get("eval_scales", _list(_num(0, strict=True)), [1.0])),
        ),
        max_val_images=s.get("max_val_images", _nullable(_int(1)), None),
    )


def _policy(s: _Section) -> PolicySpace:
    some = _Rule("a non-empty list of {layers, ops, per_layer}", lambda v: isinstance(v, list) and bool(v))
    raw_groups = s.get("groups", some)
    groups = []
    for i, raw in enumerate(raw_groups):
        g = _Section(s.path, f"{s.name}.groups[{i}]", raw, ("layers", "ops", "per_layer"))
        groups.append(LayerGroup(
            layers=tuple(g.get("layers", _list(_Rule("a glob pattern over conv names", _PATH.ok)))),
            ops=tuple(g.get("ops", _list(_OP, distinct=True))),
            per_layer=g.get("per_layer", _FLAG, False),
        ))
    budget = s.section("budget", ("max_param_ratio", "max_params"), optional=True)
    if budget is None:
        return PolicySpace(tuple(groups))
    ratio = budget.get("max_param_ratio", _num(0, strict=True, high=1), None)
    return PolicySpace(tuple(groups), None if ratio is None else float(ratio), budget.get("max_params", _int(1), None))


# What each distillation setting accepts, fixed or as the values of a distribution.
_DISTILL = {
    "epochs": _int(1),
    "steps_per_epoch": _nullable(_int(1)),
    "w_hint": _num(0),
    "w_kd": _num(0),
    "w_ce": _num(0),
    "temperature": _num(0, strict=True),
    "schedule": _text("oneshot", "progressive"),
    "train": _text("plugged", "all"),
    "optimizer": _text("adamw", "sgd"),
    "lr": _num(0, strict=True),
    "weight_decay": _num(0),
    "momentum": _num(0),
    "lr_schedule": _text("cosine", "poly"),
    "warmup_steps": _int(0),
    "accumulate": _int(1),
    "seed": _int(0),
}
# The distributions that can search a setting of each kind (a float setting may take integer values).
_SEARCHABLE = {"float": DISTRIBUTIONS, "int": ("int", "choice"), "text": ("choice",)}


def _distribution(s: _Section, key: str, rule: _Rule) -> Distribution:
    allowed = _SEARCHABLE[rule.kind]
    raw = s.raw[key]
    kinds = [k for k in DISTRIBUTIONS if k in raw]
    if key in FIXED_ONLY or len(kinds) != 1 or kinds[0] not in allowed:
        searched = "" if key in FIXED_ONLY else f", or {{{' | '.join(allowed)}: ..., default: ...}} to search it"
        raise s.error(key, f"{rule.expected}{searched}", dict(raw))
    d = _Section(s.path, s.where(key), raw, (kinds[0], "default"))
    kind = kinds[0]
    if kind == "choice":
        values = tuple(d.get("choice", _list(rule, distinct=True)))
        default = d.get("default", _Rule(f"one of {list(values)}", lambda v: rule.ok(v) and v in values), values[0])
        return Distribution(kind, values, default)
    both = _Rule(f"{rule.expected} and an integer", lambda v: rule.ok(v) and _is_int(v)) if kind == "int" else rule
    log = kind == "loguniform"
    pair = _Rule(
        f"[low, high] with low < high{', low > 0' if log else ''}, each {both.expected}",
        lambda v: isinstance(v, list) and len(v) == 2 and all(both.ok(x) for x in v) and v[0] < v[1] and (not log or v[0] > 0),
    )
    low, high = d.get(kind, pair)
    within = _Rule(f"{both.expected} within [{low}, {high}]", lambda v: both.ok(v) and low <= v <= high)
    default = d.get("default", within, None)
    return Distribution(kind, (low, high), default)


def _distill(s: _Section) -> tuple[DistillSettings, dict[str, Distribution]]:
    fixed: dict[str, Any] = {}
    searched: dict[str, Distribution] = {}
    for key, rule in _DISTILL.items():
        if key not in s.raw:
            continue
        if isinstance(s.raw[key], Mapping):
            searched[key] = _distribution(s, key, rule)
            if searched[key].default is not None:
                fixed[key] = searched[key].default
        else:
            fixed[key] = s.get(key, rule)
    return replace(DistillSettings(), **fixed), searched


_ASHA = "none or {asha: {grace_period, reduction_factor, max_t}}"


def _asha(s: _Section, epochs: int) -> AshaSettings | None:
    scheduler = s.raw.get("scheduler", "none")
    if scheduler in ("none", None):
        return None
    if not isinstance(scheduler, Mapping) or list(scheduler) != ["asha"]:
        raise s.error("scheduler", _ASHA, scheduler)
    raw = {} if scheduler["asha"] is None else scheduler["asha"]
    a = _Section(s.path, "search.scheduler.asha", raw, ("grace_period", "reduction_factor", "max_t"))
    max_t = a.get("max_t", _nullable(_int(1)), None)
    limit = f"max_t ({max_t})" if max_t is not None else f"distill.epochs ({epochs})"
    last = max_t if max_t is not None else epochs
    grace = _Rule(f"an integer >= 1 and <= {limit}", lambda v: _is_int(v) and 1 <= v <= last)
    return AshaSettings(
        grace_period=a.get("grace_period", grace, 1),
        reduction_factor=a.get("reduction_factor", _int(2), 3),
        max_t=max_t,
    )


def _search(s: _Section, epochs: int) -> SearchSettings:
    resources = s.section("resources", ("cpu", "gpu"), optional=True)
    return SearchSettings(
        num_samples=s.get("num_samples", _int(1), 16),
        searcher=s.get("searcher", _text(*SEARCHERS), "tpe"),
        asha=_asha(s, epochs),
        score=s.get("score", _text(*SCORES), "miou"),
        cpu=float(resources.get("cpu", _num(0, strict=True), 1.0)) if resources else 1.0,
        gpu=float(resources.get("gpu", _num(0), 0.0)) if resources else 0.0,
        max_concurrent=s.get("max_concurrent", _int(1), 1),
        seed=s.get("seed", _int(0), 0),
        retrain_epochs=s.get("retrain_epochs", _nullable(_int(1)), None),
    )


_FIELDS = {
    "teacher": ("arch", "num_classes", "width", "checkpoint", "train"),
    "data": ("dataset", "root", "unlabeled", "train", "val", "crop", "scale", "batch_size", "workers",
             "eval", "eval_crop", "eval_flip", "eval_scales", "max_val_images"),
    "policy": ("groups", "budget"),
    "distill": tuple(_DISTILL),
    "search": ("num_samples", "searcher", "scheduler", "score", "resources", "max_concurrent", "seed", "retrain_epochs"),
}


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a field given twice in one mapping (safe_load silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.MarkedYAMLError(problem=f"field {key.value!r} given twice", problem_mark=key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep)


def _read(path: Path) -> Any:
    expected = f"expected a YAML mapping with the sections {', '.join(SECTIONS)}"
    if not path.is_file():
        raise InputError(f"{path}: {'not a file' if path.exists() else 'no such file'}; {expected}")
    try:
        raw = yaml.load(path.read_bytes(), Loader=_StrictLoader)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror}); {expected}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(f"{path}: {where}not valid YAML ({problem}); {expected}") from None
    if raw is None:
        raise InputError(f"{path}: empty file; {expected}")
    return raw


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; InputError (one line: file, field, what was expected) on any fault."""
    path = Path(path)
    top = _Section(path, "", _read(path), SECTIONS)
    sections = {name: top.section(name, _FIELDS[name]) for name in SECTIONS}
    teacher, training = _teacher(sections["teacher"])
    distill, searched = _distill(sections["distill"])
    return Space(
        path=path,
        teacher=teacher,
        teacher_training=training,
        data=_data(sections["data"]),
        policy=_policy(sections["policy"]),
        distill=distill,
        searched=searched,
        search=_search(sections["search"], distill.epochs),
    )
