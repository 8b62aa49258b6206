"""Search-space files: YAML validated strictly into typed objects at the edge.

The settings dataclasses are the schema (`data.schema`): `Space` and the dataclasses of its sections declare every
field a space may set, with its rule, default and doc; `docs/space.md` is generated from them
(`python -m search.reference docs/space.md`). Every error is an InputError of one line naming the file and the
field: `<file>: <section.field>: expected <what>, got <value>`; an unknown field, a missing one and a file that is
not YAML say so in the same shape. Paths inside a space are relative to the current folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from data import kinds
from data.errors import InputError
from data.names import COSTS, LATENCY_MS, PARAMS
from data.schema import Distribution, Reader, Rule, entries, list_of, one_of, setting
from data.settings import DataSettings, Split
from search.names import LIBRARY, Searcher
from trainable import losses, models, tasks
from trainable.config import DistillSettings, LatencySettings, TeacherSettings
from trainable.inventory import output_classes
from trainable.library import LibrarySettings
from trainable.ops import op_names, parse_op


def _is_op(v: Any) -> bool:
    try:
        parse_op(v)
    except InputError:
        return False
    return True


_OP = Rule(f"an op ({', '.join(op_names())})", _is_op)
_PATTERN = Rule("a glob pattern over conv names", lambda v: isinstance(v, str) and bool(v))


@dataclass(frozen=True)
class LayerGroup:
    layers: tuple[str, ...] = setting("glob patterns over the teacher's conv names", item=_PATTERN)
    ops: tuple[str, ...] = setting("the ops these layers may take", item=_OP, distinct=True)
    per_layer: bool = setting("one choice per layer; false: one choice for the whole group", False)


@dataclass(frozen=True)
class PolicySpace:
    groups: tuple[LayerGroup, ...] = setting("which layers may be plugged, with which ops")
    max_param_ratio: float | None = setting("budget: a student's params at most this fraction of the teacher's",
                                            None, above=0, high=1, key="budget.max_param_ratio")
    max_params: int | None = setting("budget: a student's params at most this", None, low=1, key="budget.max_params")
    max_latency_ratio: float | None = setting(
        "budget: a student's predicted latency at most this multiple of the teacher's (every plug is timed first)",
        None, above=0, key="budget.max_latency_ratio")


@dataclass(frozen=True)
class AshaSettings:
    tag: ClassVar[str] = "asha"  # its name in `search.scheduler`

    grace_period: int = setting("epochs every trial runs before the first stop", 1, low=1)
    reduction_factor: int = setting("each rung keeps 1/reduction_factor of its trials", 3, low=2)
    max_t: int | None = setting("the epoch every trial stops at; null: distill.epochs", None, low=1)


@dataclass(frozen=True)
class MOASHASettings:
    tag: ClassVar[str] = "moasha"  # its name in `search.scheduler`

    grace_period: int = setting("epochs of the first rung", 1, low=1)
    reduction_factor: int = setting("each rung keeps its best 1/reduction_factor by non-dominated rank over the "
                                    "objectives, then crowding distance; the next rung is that many times later", 3,
                                    low=2)
    max_t: int | None = setting("the epoch every trial stops at; null: distill.epochs", None, low=1)


AUTO = "auto"  # a field the loader resolves from the others (see SearchSettings.resolved)


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = setting("trials", 16, low=1)
    searcher: Searcher = setting("what proposes each trial's policy and distill settings: an Optuna sampler over the "
                                 "objectives, or library (needs a library section: refits the library's predictor "
                                 "to the trials and fills the front's widest gap)", "tpe")
    scheduler: AshaSettings | MOASHASettings | None = setting(
        "none: every trial runs every epoch; asha: weak trials by the score stop early; moasha: trials off the "
        "objectives' front stop early", AUTO, tagged=True,
        default_text="moasha with several objectives, asha with one")
    score: str | None = setting("the metric that ranks trials: one of the task's metrics", None,
                                default_text=lambda: "the task's: " + ", ".join(
                                    f"{name} {tasks.get(name).score}" for name in tasks.names()))
    cpu: float = setting("CPUs per trial", 1.0, above=0, key="resources.cpu")
    gpu: float = setting("GPUs per trial", 0.0, low=0, key="resources.gpu")
    max_concurrent: int = setting("trials at a time", 1, low=1)
    seed: int = setting("seed of the searcher", 0, low=0)
    retrain_epochs: int | None = setting("epochs of search/retrain.py; null: distill.epochs", None, low=1)
    objectives: tuple[str, ...] | None = setting(
        f"what the search trades off, the front's axes: costs ({', '.join(COSTS)}) and the task's metrics; one "
        "objective: a single-objective search", None, distinct=True,
        default_text="[params, score]; [latency_ms, score] with policy.budget.max_latency_ratio")
    max_failures: int = setting("retries of a trial whose worker died (from its last checkpoint)", 2, low=0)
    proposals: int | None = setting(
        "first trials: the cheapest uniform policy, then (with a library) the solver's least-predicted-drop picks "
        "at budgets from the cheapest policy to the cap; 0: none", None, low=0,
        default_text="a quarter of num_samples, at least 2")
    reuse_actors: bool = setting("a finished trial's worker process runs the next trial (no new imports)", True)

    def resolved(self, task: tasks.Task, latency_budget: bool) -> SearchSettings:
        """These settings with their load-time defaults: the score the task's, the objectives the cost (latency_ms
        under a latency budget, else params) and the score, the scheduler MO-ASHA over several objectives and ASHA
        over one."""
        score = self.score if self.score is not None else task.score
        cost = LATENCY_MS if latency_budget else PARAMS
        objectives = self.objectives if self.objectives is not None else (cost, score)
        scheduler = self.scheduler
        if scheduler == AUTO:
            scheduler = MOASHASettings() if len(objectives) > 1 else AshaSettings()
        return replace(self, score=score, objectives=objectives, scheduler=scheduler)


@dataclass(frozen=True)
class Space:
    path: Path
    teacher: TeacherSettings = setting("the network to compress")
    data: DataSettings = setting("the images: unlabeled ones to distil on, a labeled val split to score on")
    policy: PolicySpace = setting("what may be plugged, within which budget")
    distill: DistillSettings = setting("how each trial distils its student")
    search: SearchSettings = setting("trials, searcher, scheduler, objectives, resources")
    library: LibrarySettings | None = setting("the plug library: each (layer, op) trained alone once, trials start "
                                              "from it; absent: from random plugs", None)
    latency: LatencySettings = setting("how each trial's latency_ms is measured", factory=LatencySettings)
    searched: dict[str, Distribution] = dataclasses.field(default_factory=dict)  # the distill settings searched

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

    @property
    def times_plugs(self) -> bool:
        """Whether every plug is timed alone: a latency budget or a latency objective needs the predicted latency."""
        return self.policy.max_latency_ratio is not None or "latency_ms" in self.search.objectives


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
    required = [e.name for e in entries(Space) if e.default is dataclasses.MISSING]
    expected = f"expected a YAML mapping with the sections {', '.join(required)}"
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


# ---- what ties fields of several sections (or a section and the world) together ----------------------------


def _teacher(reader: Reader, teacher: TeacherSettings, folder: Path) -> TeacherSettings:
    """A zoo arch takes num_classes and width, a module:callable its args and is importable from `folder`."""
    teacher = replace(teacher, search_path=folder)
    if models.is_zoo(teacher.arch):
        if teacher.args:
            raise reader.error("teacher.args", f"num_classes and width for the zoo arch {teacher.arch} (args are for "
                                               "module:callable)", dict(teacher.args))
        return teacher
    for key in ("num_classes", "width"):
        if getattr(teacher, key) is not None:
            raise reader.error(f"teacher.{key}", f"no {key} for a module:callable arch (give it in teacher.args)",
                               getattr(teacher, key))
    try:
        models.resolve(teacher.arch, folder)
    except InputError as err:
        raise InputError(f"{reader.path}: teacher.arch: {err}") from None
    return teacher


def _check_edge(reader: Reader, raw: Mapping, teacher: TeacherSettings, distill: DistillSettings,
                searched: Mapping[str, Distribution]) -> None:
    """A space whose w_edge may be > 0 needs a teacher with an edge output (`return_edge`, as GSCNN's forward)."""
    values = searched["w_edge"].values if "w_edge" in searched else (distill.w_edge,)
    if max(values) > 0 and not losses.has_edge_output(teacher.structure()):
        raise reader.error("distill.w_edge", f"0 for teacher {teacher.arch}, whose forward has no return_edge (no edge "
                                             "output to distil)", raw["w_edge"])


def _data(reader: Reader, raw: Mapping, data: DataSettings, task: str) -> DataSettings:
    """A dataset kind of the teacher's task; image/mask splits for `pairs` only; the kind's unlabeled default."""
    kind = kinds.kind(data.dataset)
    if kind.task != task:
        raise reader.error("data.dataset", f"a dataset kind for a {task} teacher (this one is {kind.task})",
                           data.dataset)
    paired = data.dataset == "pairs"
    for key in ("train", "val"):
        split = getattr(data, key)
        if paired and not isinstance(split, Split) and (key == "val" or key in raw):
            if key not in raw:
                raise reader.missing(f"data.{key}", "{images: DIR, masks: DIR}")
            raise reader.error(f"data.{key}", "{images: DIR, masks: DIR}", split)
        if not paired and isinstance(split, Split):
            raise reader.error(f"data.{key}", "a folder below data.root ({images, masks} is for dataset kind pairs)",
                               raw[key])
    try:
        return replace(data, unlabeled=kinds.unlabeled_folders(data))
    except InputError as err:
        raise InputError(f"{reader.path}: {err}") from None


def _search(reader: Reader, search: SearchSettings, task: tasks.Task, classes: int | None, epochs: int,
            latency_budget: bool) -> SearchSettings:
    """The score and objectives among the task's metrics (and the costs); a scheduler's grace period within the
    epochs."""
    search = search.resolved(task, latency_budget)
    metrics = task.metrics(classes if classes is not None else 1000)
    if search.score not in metrics:
        raise reader.error("search.score", one_of(metrics).expected, search.score)
    objectives = list_of(one_of((*COSTS, *metrics)), distinct=True)
    if not objectives.ok(list(search.objectives)):
        raise reader.error("search.objectives", objectives.expected, list(search.objectives))
    scheduler = search.scheduler
    if scheduler is not None:
        last = scheduler.max_t if scheduler.max_t is not None else epochs
        limit = f"max_t ({scheduler.max_t})" if scheduler.max_t is not None else f"distill.epochs ({epochs})"
        if scheduler.grace_period > last:
            raise reader.error(f"search.scheduler.{scheduler.tag}.grace_period", f"an integer >= 1 and <= {limit}",
                               scheduler.grace_period)
    return search


def _init(reader: Reader, distill: DistillSettings, has_library: bool) -> DistillSettings:
    """`distill.init`: the library when the space has one, else scratch; `library` without one is refused."""
    if distill.init is None:
        return replace(distill, init="library" if has_library else "scratch")
    searched = reader.searched.get("init")
    if not has_library and (distill.init == "library" or (searched is not None and "library" in searched.values)):
        raise reader.error("distill.init", "scratch for a space without a library section (give one, e.g. "
                                           "library: {epochs: 2}, to start from trained plugs)", "library")
    return distill


def load_space(path: str | Path, folder: Path | None = None) -> Space:
    """Read and validate a space file; InputError (one line: file, field, what was expected) on any fault.

    A `module:callable` teacher is imported from `folder` first (default: the space file's folder).
    """
    path = Path(path)
    reader = Reader(path)
    raw = _read(path)
    space = reader.read(Space, raw, path=path)
    teacher = _teacher(reader, space.teacher, folder or path.resolve().parent)
    _check_edge(reader, raw["distill"], teacher, space.distill, reader.searched)
    data = _data(reader, raw["data"], space.data, teacher.task)
    classes = teacher.arch_args.get("num_classes") or data.num_classes or (len(data.classes) if data.classes else None)
    search = _search(reader, space.search, tasks.get(teacher.task), classes, space.distill.epochs,
                     space.policy.max_latency_ratio is not None)
    if search.searcher == LIBRARY and space.library is None:
        raise reader.error("search.searcher", f"another searcher for a space without a library section ({LIBRARY} "
                                              "learns from the plug library)", LIBRARY)
    library = space.library
    if library is not None and library.batch_size is None:
        library = replace(library, batch_size=data.batch_size)
    distill = _init(reader, space.distill, library is not None)
    space = replace(space, teacher=teacher, data=data, distill=distill, search=search, library=library,
                    searched=dict(reader.searched))
    if space.times_plugs and not space.latency.enabled:
        budget = space.policy.max_latency_ratio is not None
        needs = "policy.budget.max_latency_ratio" if budget else "objective latency_ms"
        raise reader.error("latency.enabled", f"true ({needs} needs latency)", False)
    return space
