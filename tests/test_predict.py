"""The predict command: labelIds PNGs per image that the evaluate command scores exactly like in-process evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from data.cityscapes import CityscapesSegmentation
from data.labels import TRAIN_TO_LABEL_ID, train_to_label_lut
from data.synthetic import generate
from data.settings import DataSettings, EvalSettings
from data.transforms import eval_transforms, normalize
from tests.cli import exit_2_line, run_main
from trainable import evaluate, tasks
from trainable.inference import infer_logits
from trainable.models import build
from trainable.predict import main
from trainable.surgery import apply_policy, save_student

WIDTH = 0.0625
POLICY = {"mod2.block1.convs.conv2": "dws", "mod3.block2.convs.conv1": "dws"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict_data")
    generate(path, train=2, val=3, size=(32, 64), seed=0)
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    teacher = build("deepwv3plus", width=WIDTH)
    model = apply_policy(teacher, POLICY).eval()
    path = tmp_path_factory.mktemp("predict_student") / "student.pt"
    save_student(path, model, "deepwv3plus", {"num_classes": 19, "width": WIDTH}, POLICY)
    return model, path


def _expected_label_ids(model: nn.Module, image_path: Path, settings: EvalSettings) -> np.ndarray:
    with Image.open(image_path) as image:
        batch = normalize(image.convert("RGB")).unsqueeze(0)
    logits = infer_logits(model, batch, settings)
    return train_to_label_lut()[logits[0].argmax(0).numpy()]


def test_student_predictions_score_like_in_process_evaluation(root, student, tmp_path):
    model, path = student
    images = root / "leftImg8bit" / "val"
    out = tmp_path / "pred"
    code, stdout, stderr = run_main(main, ["--student", path, "--images", images, "--out", out, "--device", "cpu"])
    assert code == 0, stderr
    assert "3/3" in stdout and str(out) in stdout.splitlines()[-1]
    inputs = sorted(p.relative_to(images) for p in images.rglob("*.png"))
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written == inputs and len(written) == 3
    for rel in written:
        ids = np.array(Image.open(out / rel))
        assert ids.dtype == np.uint8 and ids.shape == (32, 64)
        assert set(np.unique(ids)) <= set(TRAIN_TO_LABEL_ID)

    code, scored, stderr = run_main(evaluate.main, ["--pred-dir", out, "--gt-dir", root / "gtFine" / "val", "--json"])
    assert code == 0, stderr
    dataset = CityscapesSegmentation(root, "val", eval_transforms())
    segmentation = tasks.get(tasks.Segmentation.name)
    expected = segmentation.evaluate(model, DataLoader(dataset, batch_size=1), DataSettings(root=root), 19)
    assert json.loads(scored)["mIoU"] == pytest.approx(expected["miou"], abs=1e-9)


def test_teacher_from_plain_state_dict(root, tmp_path, capsys):
    torch.manual_seed(1)
    teacher = build("deepwv3plus", width=WIDTH).eval()
    checkpoint = tmp_path / "teacher.pth"
    torch.save(teacher.state_dict(), checkpoint)
    images = root / "leftImg8bit" / "train"
    out = tmp_path / "pred"
    assert main(["--teacher", "deepwv3plus", "--width", str(WIDTH), "--checkpoint", str(checkpoint),
                 "--images", str(images), "--out", str(out), "--device", "cpu"]) == 0
    assert "images/s" in capsys.readouterr().out
    sources = sorted(images.rglob("*.png"))
    assert len(sources) == 2
    for source in sources:
        written = np.array(Image.open(out / source.relative_to(images)))
        np.testing.assert_array_equal(written, _expected_label_ids(teacher, source, EvalSettings()))


def test_sliding_with_flip_on_one_image(root, student, tmp_path):
    model, path = student
    source = next((root / "leftImg8bit" / "val").rglob("*.png"))
    images = tmp_path / "images" / "city"
    images.mkdir(parents=True)
    (images / source.name).write_bytes(source.read_bytes())
    out = tmp_path / "pred"
    assert main(["--student", str(path), "--images", str(images.parent), "--out", str(out), "--sliding",
                 "--crop", "24", "--flip", "--device", "cpu"]) == 0
    settings = EvalSettings(mode="sliding", crop=24, flip=True)
    written = np.array(Image.open(out / "city" / source.name))
    np.testing.assert_array_equal(written, _expected_label_ids(model, source, settings))
    assert not np.array_equal(written, _expected_label_ids(model, source, EvalSettings()))


def test_bad_input_exits_2_naming_the_path(root, student, tmp_path):
    _, path = student
    images = root / "leftImg8bit" / "val"
    out = tmp_path / "pred"
    missing = tmp_path / "nowhere"
    assert str(missing) in exit_2_line(main, ["--student", path, "--images", missing, "--out", out])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in exit_2_line(main, ["--student", path, "--images", empty, "--out", out])
    inside = images / "pred"
    assert str(inside) in exit_2_line(main, ["--student", path, "--images", images, "--out", inside])
    assert str(images) in exit_2_line(main, ["--student", path, "--images", images, "--out", images])
    assert not inside.exists()
    no_student = tmp_path / "student.pt"
    assert str(no_student) in exit_2_line(main, ["--student", no_student, "--images", images, "--out", out])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert str(junk) in exit_2_line(main, ["--student", junk, "--images", images, "--out", out])
    assert str(junk) in exit_2_line(main, ["--teacher", "deepwv3plus", "--checkpoint", junk, "--images", images,
                                            "--out", out])
    assert "nosuchnet" in exit_2_line(main, ["--teacher", "nosuchnet", "--checkpoint", junk, "--images", images,
                                              "--out", out])
    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    corrupt = corrupt_dir / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert str(corrupt) in exit_2_line(main, ["--student", path, "--images", corrupt_dir, "--out", out,
                                               "--device", "cpu"])
    assert not out.exists() or not any(out.rglob("*.png"))
