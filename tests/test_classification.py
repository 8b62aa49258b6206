"""The classification path end to end, as a user with their own model file, checkpoint and images walks it.

The model is `tests/spaces/tiny_resnet.py` (not in the zoo), copied beside a copy of
`tests/spaces/classification.yaml` into a work folder that also holds a synthetic ImageFolder tree and a
teacher trained here with a plain PyTorch loop and saved the way training scripts save it
(`{"best_prec1", "epoch", "state_dict": {"module.conv1.weight": ...}}`). Every command runs in that
folder, with the space's relative paths as written: teacher evaluation, a search, retraining, the student
rebuilt in a fresh process elsewhere, predictions and their scoring, and the bad inputs that end in exit 2.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from data.names import COMPLETED, EVAL_FILE, POLICY_FILE, STUDENT_FILE, TEACHER_FILE, TRIALS_FILE
from data.synthetic import generate_imagefolder
from tests.cli import exit_2_line, run_main, run_ok
from tests.searches import space_with, write_space
from trainable import tasks

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "tests" / "spaces"
SPACE = "classification.yaml"
DATA = Path("data/synthetic_cls")  # the space's data.root, relative to the folder the commands run in
CHECKPOINT = Path("checkpoints/tiny_resnet.pth")  # the space's teacher.checkpoint
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the space's data.mean and data.std
CLASSES = ["disc", "square", "triangle", "cross"]  # data.synthetic.SHAPES[:4], sorted: torchvision's class order
SORTED = sorted(CLASSES)
VAL_PER_CLASS = 8
TEACHER_EPOCHS = 20  # enough for the 4-class shapes to be told apart well above chance (0.25): 0.56 measured
TIMEOUT = 600


def _module(path: Path) -> ModuleType:
    """The model file imported under a private name: the commands import `tiny_resnet` themselves."""
    spec = importlib.util.spec_from_file_location("_user_tiny_resnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain_eval_transform() -> v2.Compose:
    """What a user writes for 32 x 32 images: no geometry, float, normalise (the space has no eval_resize)."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


@torch.no_grad()
def plain_topk(model: nn.Module, folder: Path, ks: tuple[int, ...] = (1,)) -> dict[str, float]:
    """Top-k accuracy by a plain PyTorch loop over torchvision's ImageFolder (class = sorted folder names)."""
    model.eval()
    hits, seen = [0] * len(ks), 0
    for images, target in DataLoader(datasets.ImageFolder(str(folder), _plain_eval_transform()), batch_size=7):
        top = model(images).topk(max(ks), dim=1).indices
        for i, k in enumerate(ks):
            hits[i] += int((top[:, :k] == target[:, None]).any(1).sum())
        seen += len(target)
    return {f"top{k}": h / seen for k, h in zip(ks, hits)}


def train_teacher(model: nn.Module, folder: Path, epochs: int) -> None:
    """Plain supervised training, CIFAR style (pad-4 random crop, flip), with AdamW and a one-cycle schedule."""
    augment = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    loader = DataLoader(datasets.ImageFolder(str(folder), augment), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for images, target in loader:
            loss = F.cross_entropy(model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def changed_space(folder: Path, **changes: dict) -> Path:
    """A copy of the test space in `folder` with some fields of its sections changed; returns its path."""
    name = f"{'_'.join(changes) or 'space'}_{len(list(folder.glob('*.yaml')))}.yaml"
    return write_space(folder, space_with(SPACES / SPACE, **changes), name)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The user's folder: the space and its model file side by side, the images, the teacher's checkpoint."""
    folder = tmp_path_factory.mktemp("classification")
    shutil.copy(SPACES / SPACE, folder / SPACE)
    shutil.copy(SPACES / "tiny_resnet.py", folder / "tiny_resnet.py")
    generate_imagefolder(folder / DATA, classes=4, train=32, val=VAL_PER_CLASS, unlabeled=64, size=32, seed=0)
    torch.manual_seed(0)
    teacher = _module(folder / "tiny_resnet.py").resnet8(num_classes=4, width=8)
    train_teacher(teacher, folder / DATA / "train", TEACHER_EPOCHS)
    top1 = plain_topk(teacher, folder / DATA / "val")["top1"]
    (folder / CHECKPOINT).parent.mkdir()
    torch.save({"best_prec1": 100 * top1, "epoch": TEACHER_EPOCHS,
                "state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, folder / CHECKPOINT)
    return folder


@pytest.fixture(scope="module")
def teacher(work) -> nn.Module:
    """The teacher as a user reloads it: their class, the checkpoint's state_dict without DataParallel's prefix."""
    model = _module(work / "tiny_resnet.py").resnet8(num_classes=4, width=8)
    state = torch.load(work / CHECKPOINT, weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


@pytest.fixture
def in_work(work, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    return work


def test_teacher_evaluates_like_a_plain_loop(in_work, teacher):
    from search import teacher as command

    printed = json.loads(run_ok(command.main, ["--space", SPACE, "--evaluate", "--device", "cpu"]))
    assert printed["top1"] == plain_topk(teacher, in_work / DATA / "val")["top1"]
    assert printed["top1"] >= 0.45  # clearly above chance (0.25): the teacher was trained, its weights loaded
    assert printed["images"] == 4 * VAL_PER_CLASS
    assert "top5" not in printed  # 4 classes: top-5 would always be 1


def test_lightning_checkpoint_with_strip_prefix(in_work, teacher):
    from search import teacher as command

    state = torch.load(in_work / CHECKPOINT, weights_only=True)["state_dict"]
    lightning = {"epoch": 19, "global_step": 160, "pytorch-lightning_version": "2.4.0",
                 "state_dict": {f"model.{k.removeprefix('module.')}": v for k, v in state.items()},
                 "hyper_parameters": {"lr": 0.01}, "optimizer_states": [], "lr_schedulers": []}
    torch.save(lightning, in_work / "checkpoints" / "last.ckpt")
    space = changed_space(in_work, teacher={"checkpoint": "checkpoints/last.ckpt", "strip_prefix": "model."})
    printed = json.loads(run_ok(command.main, ["--space", space, "--evaluate", "--device", "cpu"]))
    assert printed["top1"] == plain_topk(teacher, in_work / DATA / "val")["top1"]


def test_top5_with_five_classes(in_work):
    from search import teacher as command

    generate_imagefolder(in_work / "data" / "five", classes=5, train=0, val=3, unlabeled=2, size=32, seed=1)
    torch.manual_seed(1)
    model = _module(in_work / "tiny_resnet.py").resnet8(num_classes=5, width=8).eval()
    torch.save(model.state_dict(), in_work / "checkpoints" / "five.pth")
    space = changed_space(in_work, teacher={"args": {"num_classes": 5, "width": 8}, "checkpoint": "checkpoints/five.pth"},
                        data={"root": "data/five"})
    printed = json.loads(run_ok(command.main, ["--space", space, "--evaluate", "--device", "cpu"]))
    expected = plain_topk(model, in_work / "data" / "five" / "val", ks=(1, 5))
    assert (printed["top1"], printed["top5"], printed["images"]) == (expected["top1"], expected["top5"], 15)


def test_val_classes_unlike_the_teachers_outputs_exit_2(in_work):
    from search import run, teacher as command

    if not (in_work / "data" / "five").exists():
        generate_imagefolder(in_work / "data" / "five", classes=5, train=0, val=3, unlabeled=2, size=32, seed=1)
    space = changed_space(in_work, data={"root": "data/five"})  # 5 class folders, the 4-class teacher
    val = str(in_work / "data" / "five" / "val")
    for main in (run.main, command.main):
        argv = ["--space", space] + (["--evaluate"] if main is command.main else ["--storage", in_work / "bad_runs"])
        line = exit_2_line(main, argv)
        assert val in line and "(4)" in line and "got 5" in line
    assert not (in_work / "bad_runs").exists()


def test_empty_unlabeled_folder_exit_2(in_work):
    from search import run

    (in_work / DATA / "empty").mkdir()
    space = changed_space(in_work, data={"unlabeled": ["empty"]})
    line = exit_2_line(run.main, ["--space", space, "--storage", in_work / "bad_runs"])
    assert str(in_work / DATA / "empty") in line and "no images" in line


@pytest.fixture(scope="module")
def searched(work) -> Path:
    """`python search/run.py --space classification.yaml` in the user's folder: 3 trials, 2 epochs, no scheduler."""
    done = subprocess.run([sys.executable, str(ROOT / "search" / "run.py"), "--space", SPACE], cwd=work,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "runs" / "classification"


def test_search_writes_top1(searched, teacher, work):
    summary = json.loads((searched / TEACHER_FILE).read_text())
    assert (summary["task"], summary["metric"], summary["num_classes"]) == (tasks.Classification.name, "top1", 4)
    assert summary["top1"] == plain_topk(teacher, work / DATA / "val")["top1"]
    assert "top5" not in summary
    table = pd.read_parquet(searched / TRIALS_FILE)
    assert len(table) == 3 and (table["status"] == COMPLETED).all()
    assert {"top1", "top1_last"} <= set(table.columns) and "miou" not in table.columns
    assert table["top1"].between(0, 1).all() and (table["top1"] >= table["top1_last"]).all()
    assert (table["epochs"] == 2).all()
    assert (table["params"] <= 0.8 * summary["params"]).all()


@pytest.fixture(scope="module")
def retrained(searched, work) -> Path:
    """`python search/retrain.py runs/classification --out students` (in process, in the user's folder)."""
    from search import retrain

    here = Path.cwd()
    os.chdir(work)
    try:
        assert retrain.main([str(searched.relative_to(work)), "--out", "students", "--no-onnx", "--device", "cpu"]) == 0
    finally:
        os.chdir(here)
    return work / "students" / "classification"


def test_retrain_writes_student_and_eval(retrained):
    scores = json.loads((retrained / EVAL_FILE).read_text())
    assert scores["metric"] == "top1" and 0 <= scores["top1"] <= 1 and "top5" not in scores
    assert scores["images"] == 4 * VAL_PER_CLASS and scores["epochs"] == 2
    assert scores["params"] < scores["teacher_params"]
    assert (retrained / STUDENT_FILE).is_file() and (retrained / POLICY_FILE).is_file()


def test_student_rebuilds_in_another_folder_and_scores_eval_json(retrained, work, tmp_path):
    script = """
import json, sys, torch
from torch.utils.data import DataLoader
from torchvision import datasets
from data.transforms import classification_eval_transforms
from trainable.surgery import load_student
model, meta = load_student(sys.argv[1])
p = meta["preprocess"]
transform = classification_eval_transforms(p["image_size"], p["eval_resize"], tuple(p["mean"]), tuple(p["std"]))
hits = seen = 0
with torch.no_grad():
    for images, target in DataLoader(datasets.ImageFolder(sys.argv[2], transform), batch_size=16):
        hits += int((model(images).argmax(1) == target).sum())
        seen += len(target)
module = sys.modules[type(model).__module__].__file__
print(json.dumps({"top1": hits / seen, "task": meta["task"], "classes": meta["classes"], "module": module}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, str(retrained / STUDENT_FILE), str(work / DATA / "val")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    rebuilt = json.loads(done.stdout.strip().splitlines()[-1])
    assert rebuilt["top1"] == json.loads((retrained / EVAL_FILE).read_text())["top1"]
    assert (rebuilt["task"], rebuilt["classes"]) == (tasks.Classification.name, SORTED)
    assert Path(rebuilt["module"]) == (work / "tiny_resnet.py").resolve()  # the model file beside the space

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(work / "tiny_resnet.py", moved / "tiny_resnet.py")
    try:
        failed = subprocess.run([sys.executable, "-m", "trainable.predict", "--student", str(retrained / STUDENT_FILE),
                                 "--images", str(work / DATA / "val"), "--out", str(tmp_path / "pred")],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        shutil.move(moved / "tiny_resnet.py", work / "tiny_resnet.py")
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 2 and len(lines) == 1, failed.stderr[-3000:]
    assert str(work / "tiny_resnet.py") in lines[0] and "no longer exists" in lines[0]


@pytest.fixture(scope="module")
def predictions(retrained, work) -> Path:
    """`python -m trainable.predict --student student.pt --images <val> --out pred` (in process)."""
    from trainable import predict

    out = work / "pred"
    assert predict.main(["--student", str(retrained / STUDENT_FILE), "--images", str(work / DATA / "val"),
                         "--out", str(out), "--device", "cpu"]) == 0
    return out / "predictions.csv"


def test_predictions_csv(predictions, work):
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "class", "score"]
    val = work / DATA / "val"
    assert sorted(row["path"] for row in rows) == sorted(p.relative_to(val).as_posix() for p in val.rglob("*.png"))
    assert {row["class"] for row in rows} <= set(CLASSES)
    assert all(1 / len(CLASSES) <= float(row["score"]) <= 1 for row in rows)  # the top softmax probability


def test_evaluate_scores_predictions_like_eval_json(predictions, retrained, work):
    from trainable import evaluate

    val = work / DATA / "val"
    printed = json.loads(run_ok(evaluate.main, ["--pred-csv", predictions, "--val-dir", val, "--json"]))
    assert printed["top1"] == json.loads((retrained / EVAL_FILE).read_text())["top1"]
    assert printed["images"] == 4 * VAL_PER_CLASS and set(printed["per_class"]) == set(CLASSES)

    text = predictions.read_text().splitlines()
    by_index = work / "by_index.csv"  # a class index (into the sorted folder names) scores the same
    by_index.write_text("\n".join([text[0], *(",".join([p, str(SORTED.index(c)), s])
                                              for p, c, s in (line.split(",") for line in text[1:])), ""]))
    again = json.loads(run_ok(evaluate.main, ["--pred-csv", by_index, "--val-dir", val, "--json"]))
    assert again["top1"] == printed["top1"]

    missing = work / "missing.csv"
    missing.write_text("\n".join(text[:-1]) + "\n")
    dropped = text[-1].split(",")[0]
    assert str(val / dropped) in exit_2_line(evaluate.main, ["--pred-csv", missing, "--val-dir", val])
    unknown = work / "unknown.csv"
    path, _, score = text[-1].split(",")
    unknown.write_text("\n".join([*text[:-1], f"{path},hexagon,{score}"]) + "\n")
    assert "'hexagon'" in exit_2_line(evaluate.main, ["--pred-csv", unknown, "--val-dir", val])
    code, _, err = run_main(evaluate.main, ["--pred-csv", predictions])  # argparse's usage error
    assert code == 2 and "--pred-csv" in err
