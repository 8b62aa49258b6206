"""The demos' pieces, without a search: each task has a demo whose space loads, whose generated data is what its
space reads, and whose teacher search/teacher.py trains; a space's "selects no conv" error prints a command that
works as printed. The whole demo is `make demo`."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from data import kinds
from data.errors import InputError
from data.synthetic import main as synthetic_main
from search import teacher as teacher_cli
from search.choices import resolve_choices
from search.demo import DEMOS
from search.space import load_space
from tests.cli import run_main, run_ok
from tests.searches import space_with, write_space
from trainable import layers, tasks
from trainable.inventory import select

ROOT = Path(__file__).resolve().parents[1]


def test_every_task_has_a_demo_of_its_task() -> None:
    assert sorted(DEMOS) == tasks.names()
    for task, demo in DEMOS.items():
        assert load_space(ROOT / demo.space).task.name == task


@pytest.mark.parametrize("task", sorted(DEMOS))
def test_demo_data_is_what_its_space_reads(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = DEMOS[task]
    monkeypatch.chdir(tmp_path)  # the space's relative paths land here
    space = load_space(ROOT / demo.space)
    run_ok(synthetic_main, ["--out", space.data.root, *demo.data_args])
    kind = kinds.kind(space.data.dataset)
    assert len(kind.unlabeled(space.data)) and len(kind.val(space.data))
    assert demo.val_images(space.data).is_dir() and demo.val_truth(space.data).is_dir()
    classes = space.teacher.arch_args["num_classes"]
    assert kind.num_classes(space.data) in (None, classes)
    choices = resolve_choices(space)
    assert choices.max_params is not None and choices.layer_params


def _space_copy(folder: Path, demo_space: Path, **changes: dict) -> Path:
    """A copy of a demo space in `folder`, its model files beside it, some fields of its sections changed."""
    raw = space_with(ROOT / demo_space, **changes)
    folder.mkdir(parents=True, exist_ok=True)
    for model in (ROOT / demo_space).parent.glob("*.py"):
        shutil.copy(model, folder)
    return write_space(folder, raw, demo_space.name)


def test_teacher_py_trains_and_evaluates_the_classification_demo_teacher(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    demo = DEMOS[tasks.Classification.name]
    monkeypatch.chdir(tmp_path)
    space = _space_copy(tmp_path / "spaces", demo.space, teacher={"train": {"epochs": 2, "lr": 3e-3, "batch_size": 32}})
    root = load_space(space).data.root
    run_ok(synthetic_main, ["--out", root, "--layout", "imagefolder", "--classes", "8", "--train", "4", "--val", "2",
                            "--size", "16"])
    assert "teacher written to" in run_ok(teacher_cli.main, ["--space", space])
    scores = json.loads(run_ok(teacher_cli.main, ["--space", space, "--evaluate"]))
    assert 0 <= scores["top1"] <= scores["top5"] <= 1 and scores["images"] == 16


@pytest.mark.parametrize("task", sorted(DEMOS))
def test_selects_no_conv_prints_a_command_that_works_as_printed(task: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    demo = DEMOS[task]
    raw = yaml.safe_load((ROOT / demo.space).read_text())
    groups = [{**raw["policy"]["groups"][0], "layers": ["no_such_conv.*"]}]
    space = _space_copy(tmp_path / "user" / "spaces", demo.space, policy={"groups": groups})
    elsewhere = tmp_path / "elsewhere"  # neither the space's folder nor the repository
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_space(space)
    with pytest.raises(InputError, match="which selects none") as raised:
        resolve_choices(loaded)
    printed = str(raised.value).split(" (", 1)[1].split(" lists them)")[0]
    words = shlex.split(printed)
    assert words[:3] == ["python", "-m", "trainable.layers"]
    code, out, err = run_main(layers.main, words[3:])
    assert code == 0, err
    height, width = loaded.input_size
    assert f"{loaded.teacher.arch} at {height}x{width}:" in out
    listed = [line.split()[0] for line in out.split("\n\n")[0].splitlines()[1:]]  # the table's name column
    assert select(listed, raw["policy"]["groups"][0]["layers"])  # the demo's own patterns select listed convs
