"""Space files: strict validation (one line naming file and field, exit status 2) and what a valid space becomes."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from data.errors import InputError, run_cli
from data.synthetic import generate
from search import run
from search.choices import resolve_choices
from search.lock import LOCK_FILE
from search.space import Distribution, load_space
from tests.searches import write_space
from trainable.config import DistillSettings
from trainable.library import chunk_layers, probe

ROOT = Path(__file__).resolve().parents[1]


class RayStarted(Exception):
    """Raised instead of starting Ray: validation let the space through."""


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise RayStarted

    monkeypatch.setattr(run, "init_ray", refuse)
    monkeypatch.setattr(run.ray, "init", refuse)


def tiny(tmp: Path) -> dict:
    """A valid space: a 1/16-width DeepWV3Plus (its checkpoint a placeholder file), data below tmp/data."""
    checkpoint = tmp / "teacher.pt"
    checkpoint.write_bytes(b"placeholder: only its existence is checked before Ray starts")
    return {
        "teacher": {"arch": "deepwv3plus", "num_classes": 19, "width": 0.0625, "checkpoint": str(checkpoint)},
        "data": {"dataset": "cityscapes", "root": str(tmp / "data"), "unlabeled": ["leftImg8bit/train_extra"],
                 "val": "val", "crop": [32, 64], "scale": [1.0, 1.0], "batch_size": 2},
        "policy": {
            "budget": {"max_param_ratio": 0.9},
            "groups": [
                {"layers": ["mod7.*.convs.conv2", "aspp.features.[123].0"], "ops": ["keep", "dws"]},
                {"layers": ["mod5.*.convs.conv[12]"], "ops": ["keep", "dws", "group2"], "per_layer": True},
            ],
        },
        "distill": {"epochs": 3, "w_hint": {"loguniform": [0.1, 10], "default": 2.5}, "w_kd": {"uniform": [0.5, 2]},
                    "temperature": {"choice": [2, 4]}, "lr": {"loguniform": [1e-3, 1e-2], "default": 3e-3}},
        "search": {"num_samples": 4, "searcher": "tpe", "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
                   "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 1, "seed": 0},
    }


def run_command(space: Path, storage: Path, capsys) -> tuple[Any, list[str]]:
    """search/run.py's main in this process: its exit status and its stderr lines."""
    with pytest.raises((SystemExit, RayStarted)) as ended:
        run_cli(run.main, ["--space", str(space), "--storage", str(storage)])
    code = ended.value.code if isinstance(ended.value, SystemExit) else "ray started"
    return code, capsys.readouterr().err.splitlines()


def edit(change: Callable[[dict], Any]) -> Callable[[dict], dict]:
    def apply(space: dict) -> dict:
        space = copy.deepcopy(space)
        change(space)
        return space
    return apply


def _set(section: str, field: str, value: Any) -> Callable[[dict], dict]:
    return edit(lambda s: s[section].__setitem__(field, value))


def _group(index: int, field: str, value: Any) -> Callable[[dict], dict]:
    return edit(lambda s: s["policy"]["groups"][index].__setitem__(field, value))


# (case, edit of the valid space, the field its one error line must name)
BROKEN = [
    ("unknown section", edit(lambda s: s.__setitem__("extras", {})), "extras: unknown field"),
    ("missing section", edit(lambda s: s.pop("search")), "search: missing section"),
    ("unknown distill field", _set("distill", "w_hnit", 1.0), "distill.w_hnit: unknown field"),
    ("missing field", edit(lambda s: s["data"].pop("root")), "data.root: missing"),
    ("wrong type", _set("data", "batch_size", "eight"), "data.batch_size: expected an integer >= 1, got 'eight'"),
    ("bool for an integer", _set("teacher", "num_classes", True), "teacher.num_classes"),
    ("loguniform from 0", _set("distill", "w_hint", {"loguniform": [0, 1]}), "distill.w_hint.loguniform"),
    ("low above high", _set("distill", "lr", {"uniform": [5, 1]}), "distill.lr.uniform"),
    ("default outside", _set("distill", "lr", {"loguniform": [1e-3, 1e-2], "default": 0.1}), "distill.lr.default"),
    ("default of wrong type", _set("distill", "w_kd", {"uniform": [0.5, 2], "default": "one"}), "distill.w_kd.default"),
    ("two distributions", _set("distill", "w_kd", {"uniform": [0.5, 2], "loguniform": [0.5, 2]}), "distill.w_kd"),
    ("fixed-only searched", _set("distill", "epochs", {"int": [1, 3]}), "distill.epochs"),
    ("text searched numerically", _set("distill", "schedule", {"uniform": [0, 1]}), "distill.schedule"),
    ("choice outside its rule", _set("distill", "optimizer", {"choice": ["adamw", "lion"]}), "distill.optimizer.choice"),
    ("unknown arch", _set("teacher", "arch", "resnet9000"), "teacher.arch: expected a zoo arch"),
    ("zero width", _set("teacher", "width", 0), "teacher.width"),
    ("unknown op", _group(0, "ops", ["keep", "ghost"]), "policy.groups[0].ops"),
    ("repeated op", _group(0, "ops", ["keep", "dws", "dws"]), "policy.groups[0].ops"),
    ("op that does not fit", _group(1, "ops", ["keep", "group3"]), "policy.groups[1].ops: expected ops that fit"),
    ("pattern selects nothing", _group(0, "layers", ["mod9.*"]), "policy.groups[0].layers"),
    ("layer in two groups", _group(1, "layers", ["mod5.*.convs.conv[12]", "mod7.*.convs.conv2"]),
     "policy.groups[1].layers: expected each layer in one group only"),
    ("unknown group field", _group(0, "per_layr", True), "policy.groups[0].per_layr: unknown field"),
    ("no groups", _set("policy", "groups", []), "policy.groups"),
    ("ratio above 1", _set("policy", "budget", {"max_param_ratio": 1.5}), "policy.budget.max_param_ratio"),
    ("budget nothing meets", _set("policy", "budget", {"max_param_ratio": 0.05}), "policy.budget: expected a budget"),
    ("crop of one number", _set("data", "crop", [32]), "data.crop"),
    ("scale upside down", _set("data", "scale", [2.0, 0.5]), "data.scale"),
    ("unknown scheduler", _set("search", "scheduler", "hyperband"), "search.scheduler"),
    ("grace after the end", _set("search", "scheduler", {"asha": {"grace_period": 5}}),
     "search.scheduler.asha.grace_period: expected an integer >= 1 and <= distill.epochs (3)"),
    ("negative gpu", _set("search", "resources", {"cpu": 1, "gpu": -1}), "search.resources.gpu"),
    ("unknown resource", _set("search", "resources", {"cpu": 1, "tpu": 1}), "search.resources.tpu: unknown field"),
    ("unknown searcher", _set("search", "searcher", "grid"), "search.searcher"),
    ("reuse_actors not a flag", _set("search", "reuse_actors", "yes"), "search.reuse_actors: expected true or false"),
    ("missing checkpoint", edit(lambda s: s["teacher"].__setitem__("checkpoint", "nowhere/teacher.pt")),
     "teacher.checkpoint"),
]

TEXTS = [
    ("empty file", "", "empty file"),
    ("only comments", "# nothing yet\n", "empty file"),
    ("not YAML", "teacher: {arch: [deepwv3plus\ndata: 1\n", "line 2: not valid YAML"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00".decode("latin-1"), "not valid YAML"),
    ("a list", "- teacher\n- data\n", "(top level): expected a mapping"),
    ("a field twice", "teacher: {}\nteacher: {}\n", "line 2: not valid YAML (field 'teacher' given twice)"),
]


def assert_one_line(code: Any, lines: list[str], space: Path, field: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {space}: "), lines[0]
    assert field in lines[0], lines[0]


@pytest.mark.parametrize("change, field", [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_space_is_one_line_and_exit_2(tmp_path, capsys, change, field):
    space = write_space(tmp_path, change(tiny(tmp_path)))
    storage = tmp_path / "runs"
    code, lines = run_command(space, storage, capsys)
    assert_one_line(code, lines, space, field)
    assert not storage.exists()


@pytest.mark.parametrize("text, field", [case[1:] for case in TEXTS], ids=[case[0] for case in TEXTS])
def test_unreadable_space_is_one_line_and_exit_2(tmp_path, capsys, text, field):
    space = tmp_path / "space.yaml"
    space.write_bytes(text.encode("latin-1"))
    code, lines = run_command(space, tmp_path / "runs", capsys)
    assert_one_line(code, lines, space, field)
    assert not (tmp_path / "runs").exists()


def test_missing_space_file(tmp_path, capsys):
    space = tmp_path / "nowhere.yaml"
    code, lines = run_command(space, tmp_path / "runs", capsys)
    assert_one_line(code, lines, space, "no such file")


def test_missing_data_root_names_space_and_field(tmp_path, capsys):
    space = write_space(tmp_path, tiny(tmp_path))
    code, lines = run_command(space, tmp_path / "runs", capsys)
    assert_one_line(code, lines, space, "data.root")
    assert str(tmp_path / "data") in lines[0]


def test_valid_space_passes_every_check_before_ray_and_writes_nothing(tmp_path, capsys):
    generate(tmp_path / "data", train=0, val=1, size=(32, 64), seed=0, extra=1)
    storage = tmp_path / "runs"
    code, lines = run_command(write_space(tmp_path, tiny(tmp_path)), storage, capsys)
    assert code == "ray started", lines
    written = [path.name for path in storage.rglob("*") if path.is_file()]
    assert written == [LOCK_FILE]  # the driver's lock is taken before Ray starts; nothing else is written


def test_command_line_refuses_a_broken_space(tmp_path):
    space = write_space(tmp_path, edit(lambda s: s.__setitem__("extras", {}))(tiny(tmp_path)))
    done = subprocess.run([sys.executable, "search/run.py", "--space", str(space), "--storage", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {space}: extras: unknown field; expected one of teacher, data, policy, distill, search, library, latency"
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name, groups", [("demo", 15), ("demo_classification", 4), ("wrn38", 34), ("gscnn", 35),
                                          ("resnet50", 16)])
def test_shipped_spaces_load_and_resolve(name, groups):
    space = load_space(ROOT / "spaces" / f"{name}.yaml")
    choices = resolve_choices(space)
    assert len(choices.choices) == groups
    assert choices.max_params is not None and choices.max_params < choices.teacher_params
    assert space.library is not None  # trials start from trained plugs


@pytest.mark.parametrize("name", ["wrn38", "resnet50"])
def test_real_spaces_library_batch_is_one_chunk(name):
    """A library batch's captured conv inputs and outputs fit the space's bound: one teacher forward per batch."""
    space = load_space(ROOT / "spaces" / f"{name}.yaml")
    layers = [layer for choice in resolve_choices(space).choices for layer in choice.layers]
    images = torch.empty(space.library.batch_size, 3, *space.input_size, device="meta")
    sizes = probe(space.teacher.structure(), images, layers, torch.device("cpu"))
    assert len(chunk_layers({layer: size for layer, (_, size) in sizes.items()}, space.library.max_activation_bytes)) == 1


def test_defaults_become_fixed_values(tmp_path):
    space = load_space(write_space(tmp_path, tiny(tmp_path)))
    assert space.searched["w_hint"] == Distribution("loguniform", (0.1, 10), 2.5)
    assert space.distill.w_hint == 2.5
    assert space.searched["w_kd"] == Distribution("uniform", (0.5, 2), None)
    assert space.distill.w_kd == DistillSettings().w_kd  # no default: the distillation's own
    assert space.searched["temperature"].default == 2 and space.distill.temperature == 2  # a choice: its first
    assert space.distill.epochs == 3 and "epochs" not in space.searched


def test_per_layer_gives_one_choice_per_layer(tmp_path):
    choices = resolve_choices(load_space(write_space(tmp_path, tiny(tmp_path))))
    group, *layers = choices.choices
    assert group.key == "group0" and len(group.layers) == 4  # mod7's conv2 and three ASPP branches
    assert [c.layers for c in layers] == [(c.key,) for c in layers]
    assert len(layers) == 6 and all(c.key.startswith("mod5.") for c in layers)


def test_load_space_raises_input_error(tmp_path):
    with pytest.raises(InputError, match=r"space\.yaml: distill\.lr\.uniform: expected \[low, high\] with low < high"):
        load_space(write_space(tmp_path, _set("distill", "lr", {"uniform": [5, 1]})(tiny(tmp_path))))
