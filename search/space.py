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

import dataclasses

import yaml

from data import kinds
from data.errors import InputError
from data.settings import Augment, DataSettings, EvalSettings, Split
from search.searcher import COSTS, SEARCHERS
from trainable import losses, models, tasks
from trainable.config import DistillSettings, TeacherSettings
from trainable.inventory import output_classes
from trainable.library import LibrarySettings
from trainable.ops import op_names, parse_op

SECTIONS = ("teacher", "data", "policy", "distill", "search")
OPTIONAL_SECTIONS = ("library", "latency")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
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
    max_latency_ratio: float | None = None


@dataclass(frozen=True)
class AshaSettings:
    grace_period: int = 1
    reduction_factor: int = 3
    max_t: int | None = None


@dataclass(frozen=True)
class SearchSettings:
    score: str  # a metric of the teacher's task (its default score when the space does not say)
    num_samples: int = 16
    searcher: str = "tpe"
    asha: AshaSettings | None = AshaSettings()
    cpu: float = 1.0
    gpu: float = 0.0
    max_concurrent: int = 1
    seed: int = 0
    retrain_epochs: int | None = None
    objectives: tuple[str, ...] = ()  # what a multi-objective searcher optimises; () = params and the score
    proposals: int = 4  # first trials the plug library's solver proposes (budgets spread over the feasible range)
    max_failures: int = 2  # retries of a trial whose worker died (from its last checkpoint)
    reuse_actors: bool = True  # a finished trial's worker process runs the next trial (no new imports)


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: batch `batch` at the space's input size, `warmup` runs then the median of `runs`."""

    backend: Literal["torch", "onnxruntime"] = "torch"
    batch: int = 1
    warmup: int = 3
    runs: int = 20


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
    library: LibrarySettings | None = None
    latency: LatencySettings | None = None  # measured when set, or when the budget or the objectives need it

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def task(self) -> tasks.Task:
        return tasks.get(self.teacher.task)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The task's metrics for the classes this teacher outputs, the search's score first."""
        names = self.task.metrics(output_classes(self.teacher.structure(), self.input_size))
        return (self.search.score, *(name for name in names if name != self.search.score))

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of one training input: what FLOPs and latency are measured at."""
        return kinds.kind(self.data.dataset).input_size(self.data)


def default(cls: type, name: str) -> Any:
    """The default of a settings dataclass's field: the one source of every default a space may omit."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


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


_OP = _Rule(f"an op ({', '.join(op_names())})", _is_op, "text")

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


def _resolve(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path.cwd() / path


def _is_arch(v: Any) -> bool:
    return isinstance(v, str) and (v in models.archs() or (v.count(":") == 1 and all(v.split(":"))))


_ARCH = _Rule(f"a zoo arch ({', '.join(models.archs())}) or module:callable", _is_arch, "text")
_MAPPING = _Rule("a mapping of keyword arguments", lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v))


def _teacher(s: _Section, folder: Path) -> tuple[TeacherSettings, TeacherTraining | None]:
    arch = s.get("arch", _ARCH)
    if models.is_zoo(arch):
        if "args" in s.raw:
            raise s.error("args", f"num_classes and width for the zoo arch {arch} (args are for module:callable)", s.raw["args"])
        zoo_task = models.info(arch).task
        task = s.get("task", _Rule(f"{zoo_task} (the task of {arch})", lambda v: v == zoo_task, "text"), zoo_task)
        args = {}  # what the space does not give, the zoo builder's own defaults decide
        if "num_classes" in s.raw:
            args["num_classes"] = s.get("num_classes", _int(1))
        if "width" in s.raw:
            args["width"] = float(s.get("width", _num(0, strict=True)))
    else:
        for key in ("num_classes", "width"):
            if key in s.raw:
                raise s.error(key, f"no {key} for a module:callable arch (give it in teacher.args)", s.raw[key])
        args = dict(s.get("args", _MAPPING, {}))
        task = s.get("task", _text(*tasks.names()))
    teacher = TeacherSettings.of(
        arch, task=task, args=args,
        checkpoint=_resolve(s.get("checkpoint", _PATH)),
        strip_prefix=s.get("strip_prefix", _text(), None),
        search_path=folder,
    )
    if not models.is_zoo(arch):
        try:
            models.resolve(arch, teacher.search_path)
        except InputError as err:
            raise InputError(f"{s.path}: teacher.arch: {err}") from None
    t = s.section("train", ("epochs", "lr", "batch_size"), optional=True)
    if t is None:
        return teacher, None
    return teacher, TeacherTraining(
        epochs=t.get("epochs", _int(1), default(TeacherTraining, "epochs")),
        lr=float(t.get("lr", _num(0, strict=True), default(TeacherTraining, "lr"))),
        batch_size=t.get("batch_size", _int(1), default(TeacherTraining, "batch_size")),
    )


_STAT = _list(_num(0), length=3)


def _split(s: _Section, key: str, paired: bool) -> str | Split:
    """A labeled split: a folder below the root, or {images, masks} for kinds of image/mask pairs."""
    if not paired:
        return s.get(key, _text(), default(DataSettings, key))
    if key not in s.raw:
        raise InputError(f"{s.path}: {s.where(key)}: missing; expected {{images: DIR, masks: DIR}}")
    split = _Section(s.path, s.where(key), s.raw[key], ("images", "masks"))
    return Split(split.get("images", _PATH), split.get("masks", _PATH))


def _data(s: _Section, task: str) -> DataSettings:
    name = s.get("dataset", _text(*kinds.names()), default(DataSettings, "dataset"))
    kind = kinds.kind(name)
    if kind.task != task:
        raise s.error("dataset", f"a dataset kind for a {task} teacher (this one is {kind.task})", name)
    d = lambda key: default(DataSettings, key)  # noqa: E731
    paired = name == "pairs"
    augment = s.section("augment", ("crop", "flip"), optional=True)
    return DataSettings(
        root=_resolve(s.get("root", _PATH)),
        dataset=name,
        unlabeled=tuple(s.get("unlabeled", _list(_PATH), list(d("unlabeled")))),
        train=_split(s, "train", paired) if not paired or "train" in s.raw else d("train"),
        val=_split(s, "val", paired),
        mean=tuple(float(x) for x in s.get("mean", _STAT, list(d("mean")))),
        std=tuple(float(x) for x in s.get("std", _list(_num(0, strict=True), length=3), list(d("std")))),
        batch_size=s.get("batch_size", _int(1), d("batch_size")),
        workers=s.get("workers", _int(0), d("workers")),
        max_val_images=s.get("max_val_images", _nullable(_int(1)), d("max_val_images")),
        crop=tuple(s.get("crop", _list(_int(1), length=2), list(d("crop")))),
        scale=tuple(float(x) for x in s.get("scale", _list(_num(0, strict=True), length=2, ordered=True), list(d("scale")))),
        eval=EvalSettings(
            mode=s.get("eval", _text("whole", "sliding"), default(EvalSettings, "mode")),
            crop=s.get("eval_crop", _int(1), default(EvalSettings, "crop")),
            flip=s.get("eval_flip", _FLAG, default(EvalSettings, "flip")),
            scales=tuple(float(x) for x in s.get("eval_scales", _list(_num(0, strict=True)), list(default(EvalSettings, "scales")))),
        ),
        num_classes=s.get("num_classes", _nullable(_int(1)), d("num_classes")),
        ignore_index=s.get("ignore_index", _int(0), d("ignore_index")),
        mask_suffix=s.get("mask_suffix", _Rule("a string", lambda v: isinstance(v, str), "text"), d("mask_suffix")),
        classes=(lambda v: None if v is None else tuple(v))(s.get("classes", _nullable(_list(_text(), distinct=True)), None)),
        image_size=s.get("image_size", _int(1), d("image_size")),
        eval_resize=s.get("eval_resize", _nullable(_int(1)), d("eval_resize")),
        augment=Augment(
            crop=augment.get("crop", _text("pad", "resized", "none"), default(Augment, "crop")),
            flip=augment.get("flip", _FLAG, default(Augment, "flip")),
        ) if augment is not None else d("augment"),
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
    budget = s.section("budget", ("max_param_ratio", "max_params", "max_latency_ratio"), optional=True)
    if budget is None:
        return PolicySpace(tuple(groups))
    ratio = budget.get("max_param_ratio", _num(0, strict=True, high=1), None)
    latency = budget.get("max_latency_ratio", _num(0, strict=True), None)
    return PolicySpace(
        tuple(groups), None if ratio is None else float(ratio), budget.get("max_params", _int(1), None),
        None if latency is None else float(latency),
    )


# What each distillation setting accepts, fixed or as the values of a distribution.
_DISTILL = {
    "epochs": _int(1),
    "steps_per_epoch": _nullable(_int(1)),
    "w_hint": _num(0),
    "w_kd": _num(0),
    "w_ce": _num(0),
    "w_edge": _num(0),
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
    "init": _text("library", "scratch"),
    "precision": _text("auto", "bf16", "fp32"),
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
        grace_period=a.get("grace_period", grace, default(AshaSettings, "grace_period")),
        reduction_factor=a.get("reduction_factor", _int(2), default(AshaSettings, "reduction_factor")),
        max_t=max_t,
    )


def _search(s: _Section, epochs: int, task: tasks.Task, num_classes: int | None) -> SearchSettings:
    resources = s.section("resources", ("cpu", "gpu"), optional=True)
    d = lambda key: default(SearchSettings, key)  # noqa: E731
    metrics = task.metrics(num_classes if num_classes is not None else 1000)
    score = s.get("score", _text(*metrics), task.score)
    return SearchSettings(
        score=score,
        num_samples=s.get("num_samples", _int(1), d("num_samples")),
        searcher=s.get("searcher", _text(*SEARCHERS), d("searcher")),
        asha=_asha(s, epochs),
        cpu=float(resources.get("cpu", _num(0, strict=True), d("cpu"))) if resources else d("cpu"),
        gpu=float(resources.get("gpu", _num(0), d("gpu"))) if resources else d("gpu"),
        max_concurrent=s.get("max_concurrent", _int(1), d("max_concurrent")),
        seed=s.get("seed", _int(0), d("seed")),
        retrain_epochs=s.get("retrain_epochs", _nullable(_int(1)), d("retrain_epochs")),
        objectives=tuple(s.get("objectives", _list(_text(*COSTS, *metrics), distinct=True), ["params", score])),
        max_failures=s.get("max_failures", _int(0), d("max_failures")),
        proposals=s.get("proposals", _int(0), d("proposals")),
        reuse_actors=s.get("reuse_actors", _FLAG, d("reuse_actors")),
    )


def _latency(s: _Section | None, policy: PolicySpace, objectives: tuple[str, ...]) -> LatencySettings | None:
    if s is None:
        needed = policy.max_latency_ratio is not None or "latency_ms" in objectives
        return LatencySettings() if needed else None
    d = lambda key: default(LatencySettings, key)  # noqa: E731
    return LatencySettings(
        backend=s.get("backend", _text("torch", "onnxruntime"), d("backend")),
        batch=s.get("batch", _int(1), d("batch")),
        warmup=s.get("warmup", _int(0), d("warmup")),
        runs=s.get("runs", _int(1), d("runs")),
    )


def _library(s: _Section | None) -> LibrarySettings | None:
    if s is None:
        return None
    d = lambda key: default(LibrarySettings, key)  # noqa: E731
    return LibrarySettings(
        epochs=s.get("epochs", _int(1), d("epochs")),
        lr=float(s.get("lr", _num(0, strict=True), d("lr"))),
        batch_size=s.get("batch_size", _int(1), d("batch_size")),
        cache=_resolve(s.get("cache", _PATH, str(d("cache")))),
        max_activation_bytes=s.get("max_activation_bytes", _int(1), d("max_activation_bytes")),
    )


_FIELDS = {
    "teacher": ("arch", "args", "num_classes", "width", "task", "checkpoint", "strip_prefix", "train"),
    "data": ("dataset", "root", "unlabeled", "train", "val", "mean", "std", "batch_size", "workers", "max_val_images",
             "crop", "scale", "eval", "eval_crop", "eval_flip", "eval_scales", "num_classes", "ignore_index",
             "mask_suffix", "classes", "image_size", "eval_resize", "augment"),
    "policy": ("groups", "budget"),
    "distill": tuple(_DISTILL),
    "search": ("num_samples", "searcher", "scheduler", "score", "resources", "max_concurrent", "seed", "retrain_epochs",
               "objectives", "max_failures", "proposals", "reuse_actors"),
    "library": ("epochs", "lr", "batch_size", "cache", "max_activation_bytes"),
    "latency": ("backend", "batch", "warmup", "runs"),
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


def _check_edge(s: _Section, teacher: TeacherSettings, distill: DistillSettings,
                searched: Mapping[str, Distribution]) -> None:
    """A space whose w_edge may be > 0 needs a teacher with an edge output (`return_edge`, as GSCNN's forward)."""
    values = searched["w_edge"].values if "w_edge" in searched else (distill.w_edge,)
    if max(values) > 0 and not losses.has_edge_output(teacher.structure()):
        raise s.error("w_edge", f"0 for teacher {teacher.arch}, whose forward has no return_edge (no edge output "
                                "to distil)", s.raw["w_edge"])


def load_space(path: str | Path, folder: Path | None = None) -> Space:
    """Read and validate a space file; InputError (one line: file, field, what was expected) on any fault.

    A `module:callable` teacher is imported from `folder` first (default: the space file's folder).
    """
    path = Path(path)
    top = _Section(path, "", _read(path), SECTIONS + OPTIONAL_SECTIONS)
    sections = {name: top.section(name, _FIELDS[name]) for name in SECTIONS}
    teacher, training = _teacher(sections["teacher"], folder or path.resolve().parent)
    distill, searched = _distill(sections["distill"])
    _check_edge(sections["distill"], teacher, distill, searched)
    data = _data(sections["data"], teacher.task)
    classes = teacher.num_classes or data.num_classes or (len(data.classes) if data.classes else None)
    policy = _policy(sections["policy"])
    search = _search(sections["search"], distill.epochs, tasks.get(teacher.task), classes)
    return Space(
        path=path,
        teacher=teacher,
        teacher_training=training,
        data=data,
        policy=policy,
        distill=distill,
        searched=searched,
        search=search,
        library=_library(top.section("library", _FIELDS["library"], optional=True)),
        latency=_latency(top.section("latency", _FIELDS["latency"], optional=True), policy, search.objectives),
    )
