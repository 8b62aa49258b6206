"""The settings dataclasses are the only schema: defaults, what may be searched, the generated reference, and a
space that loads without Ray or Optuna."""
from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from dataclasses import fields, replace
from pathlib import Path

import pytest

from data import kinds
from data.errors import InputError
from data.schema import Entry, entries
from data.settings import DataSettings
from search import reference
from search.names import SEARCHERS
from search.space import LayerGroup, MOASHASettings, PolicySpace, SearchSettings, load_space
from tests.searches import write_space
from trainable import tasks
from trainable.config import DistillSettings, LatencySettings, TeacherSettings, TeacherTraining
from trainable.latency import measure_latency, plug_latencies
from trainable.library import LibrarySettings

ROOT = Path(__file__).resolve().parents[1]


def minimal(tmp: Path, **data) -> dict:
    """A space that gives only what a space must: everything else is the schema's default."""
    return {
        "teacher": {"arch": "deepwv3plus", "width": 0.0625, "checkpoint": str(tmp / "teacher.pt")},
        "data": {"root": str(tmp / "data"), **data},
        "policy": {"groups": [{"layers": ["mod7.*.convs.conv2"], "ops": ["keep", "dws"]}]},
        "distill": {},
        "search": {},
    }


def test_an_omitted_field_takes_the_dataclass_default(tmp_path):
    space = load_space(write_space(tmp_path, minimal(tmp_path)))
    assert space.distill == replace(DistillSettings(), init="scratch")  # `init` resolves: no library section
    assert space.latency == LatencySettings()
    assert space.library is None and space.teacher.train is None and space.policy.max_param_ratio is None
    task = tasks.get(space.teacher.task)
    assert space.search == SearchSettings().resolved(task, latency_budget=False)
    assert space.search.scheduler == MOASHASettings()  # resolved from the dataclass's own default, as documented
    assert space.search.objectives == ("params", task.score) and space.search.score == task.score
    data = DataSettings(root=tmp_path / "data")
    assert replace(space.data, unlabeled=None) == data
    assert space.data.unlabeled == kinds.kind(data.dataset).unlabeled_default


def test_a_zoo_teacher_takes_the_zoo_task_and_a_callable_says_its_own():
    assert TeacherSettings("deepwv3plus").task == tasks.Segmentation.name
    assert TeacherSettings("tv_resnet18").task == tasks.Classification.name
    with pytest.raises(InputError, match="task: missing"):
        TeacherSettings("my_module:build")
    with pytest.raises(InputError, match=r"task: expected segmentation \(the task of deepwv3plus\)"):
        TeacherSettings("deepwv3plus", task="classification")


def test_latency_functions_default_to_the_space_defaults():
    for function in (measure_latency, plug_latencies):
        parameters = inspect.signature(function).parameters
        for name in ("batch", "warmup", "runs"):
            assert parameters[name].default == getattr(LatencySettings(), name), (function.__name__, name)


def _literals(annotation) -> list[str]:
    """The string options of a Literal, also inside an Optional or a Union."""
    if typing.get_origin(annotation) is typing.Literal:
        return [o for o in typing.get_args(annotation) if isinstance(o, str)]
    return [o for arg in typing.get_args(annotation) for o in _literals(arg)]


def _two_values(entry: Entry) -> list:
    """Two values a distill field accepts, its default first (a Literal's first option when the default is null):
    a Literal's options, or default and default + 1."""
    options = _literals(entry.type)
    if options:
        first = entry.default if entry.default in options else options[0]
        return [first, next(o for o in options if o != first)]
    base = entry.default if entry.default is not None else 1
    return [base, base + 1]


@pytest.mark.parametrize("entry", entries(DistillSettings), ids=lambda e: e.name)
def test_what_may_be_searched_comes_from_the_schema(tmp_path, entry):
    """A searchable distill field takes a distribution (its default the fixed value); any other refuses one."""
    values = _two_values(entry)
    raw = minimal(tmp_path)
    raw["distill"][entry.name] = {"choice": values}
    if entry.name == "w_edge":
        raw["teacher"]["arch"] = "gscnn"  # a teacher with an edge output to distil
    if entry.name == "init":
        raw["library"] = {}  # `library` needs one
    path = write_space(tmp_path, raw)
    if entry.setting.searchable:
        space = load_space(path)
        assert space.searched[entry.name].values == tuple(values) and getattr(space.distill, entry.name) == values[0]
    else:
        with pytest.raises(InputError, match=rf"distill\.{entry.name}: expected ") as refused:
            load_space(path)
        assert "to search it" not in str(refused.value)


def test_fields_a_trial_cannot_vary_are_not_searchable():
    searchable = {e.name for e in entries(DistillSettings) if e.setting.searchable}
    assert not searchable & {"epochs", "steps_per_epoch", "seed", "precision"}


def test_every_file_field_has_a_doc_and_every_section_is_in_the_reference():
    text = (ROOT / "docs" / "space.md").read_text()
    for cls in (TeacherSettings, TeacherTraining, DataSettings, PolicySpace, LayerGroup, DistillSettings,
                SearchSettings, LibrarySettings, LatencySettings):
        for e in entries(cls):
            assert e.setting.doc and "\n" not in e.setting.doc, (cls.__name__, e.name)
        assert {f.name for f in fields(cls)} >= {e.name for e in entries(cls)}
    assert "`distill.precision`" in text and "`search.scheduler.asha.grace_period`" in text


def test_reference_is_up_to_date():
    written = (ROOT / "docs" / "space.md").read_text()
    assert written == reference.render(), f"docs/space.md is out of date: regenerate it with `{reference.COMMAND}`"


def test_searchers_named_for_the_space_are_the_searchers_built():
    from search.searcher import LIBRARY, SAMPLERS

    assert set(SEARCHERS) == {*SAMPLERS, LIBRARY}


def test_loading_a_space_imports_neither_ray_nor_optuna(tmp_path):
    path = write_space(tmp_path, minimal(tmp_path, dataset="cityscapes"))
    code = (f"import sys; from search.space import load_space; load_space({str(path)!r}); "
            "print(sorted({'ray', 'optuna'} & {name.split('.')[0] for name in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]


def test_unlabeled_defaults_per_dataset_kind_and_is_required_without_one(tmp_path):
    space = load_space(write_space(tmp_path, {**minimal(tmp_path, dataset="imagefolder"),
                                        "teacher": {"arch": "tv_resnet18", "checkpoint": "t.pt"}}))
    assert space.data.unlabeled == kinds.kind("imagefolder").unlabeled_default == ("train",)
    raw = minimal(tmp_path, dataset="pairs", num_classes=3, val={"images": "val", "masks": "valannot"})
    path = write_space(tmp_path, raw)
    with pytest.raises(InputError, match=rf"^{path}: data\.unlabeled: missing; .*dataset kind pairs has no default"):
        load_space(path)


def test_latency_can_be_switched_off_unless_a_budget_or_objective_needs_it(tmp_path):
    raw = {**minimal(tmp_path), "latency": {"enabled": False}}
    space = load_space(write_space(tmp_path, raw))
    assert not space.latency.enabled and not space.times_plugs
    raw["policy"]["budget"] = {"max_latency_ratio": 1.5}
    path = write_space(tmp_path, raw)
    expected = rf"^{path}: latency\.enabled: expected true \(policy\.budget\.max_latency_ratio needs latency\)"
    with pytest.raises(InputError, match=expected):
        load_space(path)
    raw["latency"]["enabled"] = True
    assert load_space(write_space(tmp_path, raw)).times_plugs
