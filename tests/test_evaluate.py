"""mIoU, confusion matrices, whole/sliding inference, the segmentation task's evaluation and the scoring CLI against
the official cityscapesscripts."""
from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from data.errors import run_cli
from data.labels import CLASS_NAMES, NUM_CLASSES, TRAIN_TO_LABEL_ID, train_to_label_lut
from data.settings import DataSettings, EvalSettings
from trainable import tasks
from trainable.evaluate import main
from trainable.inference import infer_logits, tile_starts
from trainable.miou import confusion_matrix, iou_per_class, mean_iou

SEGMENTATION = tasks.get(tasks.Segmentation.name)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LABEL_ID = TRAIN_TO_LABEL_ID[CLASS_NAMES.index("train")]


def test_hand_made_miou_with_absent_and_false_positive_only_classes():
    gt = torch.tensor([0, 0, 1, 1, 255, 0])
    pred = torch.tensor([0, 1, 1, 1, 3, 2])
    conf = confusion_matrix(pred, gt, num_classes=4)
    assert conf.dtype == torch.int64 and conf.shape == (4, 4)
    assert iou_per_class(conf) == pytest.approx([1 / 3, 2 / 3, 0.0, None])
    assert iou_per_class(conf)[3] is None
    assert mean_iou(conf) == pytest.approx(1 / 3)
    result = SEGMENTATION.result(conf, 4)
    assert result.to_json() == {"miou": mean_iou(conf), "mIoU": mean_iou(conf), "per_class": dict(zip(
        ["class0", "class1", "class2", "class3"], iou_per_class(conf)))}


def test_other_column_counts_as_false_negative_only():
    gt = torch.tensor([0, 1, 1, 255])
    pred = torch.tensor([255, 1, 1, 0])
    conf = confusion_matrix(pred, gt, num_classes=2, other_column=True)
    assert conf.tolist() == [[0, 0, 1], [0, 2, 0]]
    assert iou_per_class(conf) == [0.0, 1.0]
    with pytest.raises(ValueError):
        confusion_matrix(pred, gt, num_classes=2)


def test_confusion_matches_numpy_reference():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, NUM_CLASSES, size=(2, 17, 23))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, NUM_CLASSES, size=gt.shape)
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    keep = gt != 255
    np.add.at(expected, (gt[keep], pred[keep]), 1)
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8))
    assert conf.dtype == torch.int64
    np.testing.assert_array_equal(conf.numpy(), expected)
    with pytest.raises(ValueError):
        confusion_matrix(torch.from_numpy(pred), torch.full(gt.shape, 40))


def test_tile_layout_matches_nvidia():
    assert tile_starts(2048, 1024, 683) == [0, 683, 1024]
    assert tile_starts(1024, 1024, 683) == [0]


def _image(height: int = 20, width: int = 30) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))


def _conv(kernel: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 5, kernel, padding=kernel // 2).eval()


def test_sliding_equals_whole_when_crop_covers_image():
    model, images = _conv(3), _image()
    whole = infer_logits(model, images, EvalSettings())
    sliding = infer_logits(model, images, EvalSettings(mode="sliding", crop=64))
    assert sliding.shape == (2, 5, 20, 30)
    torch.testing.assert_close(sliding, whole, rtol=0, atol=0)


def test_overlapping_tiles_match_whole_for_pointwise_model():
    model, images = _conv(1), _image()
    calls = []
    model.register_forward_hook(lambda _m, inputs, _o: calls.append(tuple(inputs[0].shape[-2:])))
    sliding = infer_logits(model, images, EvalSettings(mode="sliding", crop=8, overlap=1 / 3))
    assert calls == [(8, 8)] * (len(tile_starts(20, 8, 6)) * len(tile_starts(30, 8, 6)))
    torch.testing.assert_close(sliding, infer_logits(model, images, EvalSettings()))


class _XRamp(nn.Module):
    """Not flip-equivariant: adds the column index to every output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(x.shape[-1], dtype=x.dtype)
        return x[:, :2] + ramp


def test_flip_averages_the_flipped_back_prediction():
    model, images = _XRamp(), _image()
    got = infer_logits(model, images, EvalSettings(flip=True))
    expected = (model(images) + model(images.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(got, expected)
    sliding = infer_logits(_conv(1), images, EvalSettings(mode="sliding", crop=8, flip=True))
    torch.testing.assert_close(sliding, infer_logits(_conv(1), images, EvalSettings()))


def test_multi_scale_on_constant_image_keeps_logits():
    model = _conv(1)
    images = torch.ones(1, 3, 16, 24) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    for mode in ("whole", "sliding"):
        got = infer_logits(model, images, EvalSettings(mode=mode, crop=8, scales=(0.5, 1.0, 2.0), flip=True))
        torch.testing.assert_close(got, infer_logits(model, images, EvalSettings()))


def _pil_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's bilinear resize of each channel (antialiased when shrinking), the reference for the image pyramid."""
    height, width = size
    bilinear = Image.Resampling.BILINEAR
    resized = [[Image.fromarray(plane.numpy()).resize((width, height), bilinear) for plane in im] for im in images]
    return torch.from_numpy(np.array([[np.asarray(channel) for channel in image] for image in resized]))


def _half_pixel_bilinear(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with half-pixel centres and no antialiasing (OpenCV's INTER_LINEAR), written out in numpy."""
    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, n_in - 1), source - low

    (y0, y1, fy), (x0, x1, fx) = taps(logits.shape[-2], size[0]), taps(logits.shape[-1], size[1])
    values = logits.double().numpy()
    rows = values[..., y0, :] * (1 - fy)[:, None] + values[..., y1, :] * fy[:, None]
    return torch.from_numpy(rows[..., x0] * (1 - fx) + rows[..., x1] * fx).float()


@pytest.mark.parametrize("mode,kernel", [("whole", 3), ("sliding", 1)])
def test_multi_scale_flip_equals_mean_of_single_scale_runs(mode, kernel):
    """scales (0.5, 1, 1.5) x flips: each of the 6 runs counts 1/6, at int(side * scale) px, resized back to 13x21."""
    model, images = _conv(kernel), _image(13, 21)
    with torch.no_grad():  # break the conv's mirror symmetry so that a flip that is not undone shows
        model.weight[..., 0] += 0.5
    sizes = []
    model.register_forward_hook(lambda _m, inputs, _o: sizes.append(tuple(inputs[0].shape[-2:])))
    got = infer_logits(model, images, EvalSettings(mode=mode, crop=8, scales=(0.5, 1.0, 1.5), flip=True))
    if mode == "whole":  # int(), not round(): 13 * 1.5 = 19.5 -> 19, 21 * 1.5 = 31.5 -> 31
        assert sizes == [(6, 10), (6, 10), (13, 21), (13, 21), (19, 31), (19, 31)]
    runs = []
    with torch.no_grad():  # a 1x1 conv sees the same pixels in tiles as in the whole image
        for size in [(6, 10), (13, 21), (19, 31)]:
            scaled = images if size == (13, 21) else _pil_resize(images, size)
            for logits in (model(scaled), model(scaled.flip(-1)).flip(-1)):
                runs.append(logits if size == (13, 21) else _half_pixel_bilinear(logits, (13, 21)))
    assert got.shape == (2, 5, 13, 21)
    torch.testing.assert_close(got, torch.stack(runs).mean(0), rtol=0, atol=2e-5)
    assert not torch.allclose(got, runs[2], atol=1e-2)  # the scales change the result: the test is not vacuous


class _Oracle(nn.Module):
    """Predicts the class stored in the first input channel (and one wrong class on the first row)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].round().long().clamp(0, 2)
        labels[:, 0] = 2
        return nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()


def test_segmentation_task_scores_batches_and_restores_mode(tmp_path):
    masks = torch.randint(0, 2, (3, 6, 8))
    masks[:, -1] = 255
    images = masks.clamp(max=1).float().unsqueeze(1).repeat(1, 3, 1, 1)
    loader = [(images[:2], masks[:2]), (images[2:], masks[2:])]
    model = _Oracle().train()
    data = DataSettings(root=tmp_path, eval=EvalSettings(mode="sliding", crop=4))
    result = SEGMENTATION.evaluate(model, loader, data, num_classes=3)
    assert model.training
    expected = confusion_matrix(model(images).argmax(1), masks, 3)
    assert result["miou"] == mean_iou(expected)
    assert list(result.details["per_class"]) == ["class0", "class1", "class2"]
    assert result.details["per_class"]["class2"] == 0.0


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _gt_folder(root: Path, rng: np.random.Generator) -> list[Path]:
    """A tiny gtFine/val with every labelId but 'train', which is absent from gt and predictions alike."""
    label_ids = [i for i in range(34) if i != TRAIN_LABEL_ID]
    paths = []
    for city, index in [("aachen", 0), ("aachen", 1), ("bonn", 7)]:
        path = root / "gtFine" / "val" / city / f"{city}_000000_{index:06d}_gtFine_labelIds.png"
        _write_png(path, rng.choice(label_ids, size=(32, 64)))
        paths.append(path)
    return paths


def _official_ious(pred_paths: list[Path], gt_paths: list[Path]) -> dict[str, float | None]:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = copy.copy(official.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    result = official.evaluateImgLists([str(p) for p in pred_paths], [str(p) for p in gt_paths], args)
    scores = {name: result["classScores"][name] for name in CLASS_NAMES}
    scores["mIoU"] = result["averageScoreClasses"]
    return {name: None if math.isnan(v) else v for name, v in scores.items()}


def _assert_same(printed: dict, official: dict[str, float | None]) -> None:
    """`trainable.evaluate --json`'s class IoUs and mIoU equal the official script's."""
    assert set(printed["per_class"]) == set(CLASS_NAMES)
    for name in CLASS_NAMES:
        if official[name] is None:
            assert printed["per_class"][name] is None, name
        else:
            assert printed["per_class"][name] == pytest.approx(official[name], abs=1e-9), name
    assert printed["miou"] == printed["mIoU"] == pytest.approx(official["mIoU"], abs=1e-9)


@pytest.mark.parametrize("pred_format", ["labelIds", "trainIds"])
def test_cli_equals_official_evaluation(tmp_path, capsys, pred_format):
    import json

    rng = np.random.default_rng(3 if pred_format == "labelIds" else 4)
    gt_paths = _gt_folder(tmp_path, rng)
    pred_dir, official_preds = tmp_path / "pred", []
    for gt in gt_paths:
        stem = gt.name.replace("_gtFine_labelIds.png", "")
        if pred_format == "labelIds":
            pred = rng.choice([i for i in range(34) if i != TRAIN_LABEL_ID], size=(32, 64))
            official = pred
        else:
            pred = rng.choice([i for i in range(NUM_CLASSES) if CLASS_NAMES[i] != "train"] + [255], size=(32, 64))
            official = train_to_label_lut()[pred]
        _write_png(pred_dir / gt.parent.name / f"{stem}_leftImg8bit.png", pred)
        official_preds.append(tmp_path / "official" / f"{stem}_pred.png")
        _write_png(official_preds[-1], official)

    assert main(["--pred-dir", str(pred_dir), "--gt-dir", str(tmp_path / "gtFine" / "val"),
                 "--pred-format", pred_format, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = _official_ious(official_preds, gt_paths)
    assert expected["train"] is None and printed["per_class"]["train"] is None
    _assert_same(printed, expected)

    main(["--pred-dir", str(pred_dir), "--gt-dir", str(tmp_path / "gtFine" / "val"), "--pred-format", pred_format])
    table = capsys.readouterr().out
    assert "mIoU" in table and "n/a" in table and "motorcycle" in table


@pytest.fixture
def small_case(tmp_path):
    gt = tmp_path / "gt" / "aachen" / "aachen_000000_000001_gtFine_labelIds.png"
    _write_png(gt, np.full((4, 6), 7))
    pred = tmp_path / "pred" / "aachen_000000_000001_leftImg8bit.png"
    _write_png(pred, np.full((4, 6), 7))
    return tmp_path, gt, pred


def _error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_cli_bad_inputs_exit_2_with_one_line(small_case, capsys):
    root, gt, pred = small_case
    args = ["--pred-dir", str(root / "pred"), "--gt-dir", str(root / "gt")]
    assert main(args) == 0
    capsys.readouterr()

    assert "nowhere" in _error_line(capsys, ["--pred-dir", str(root / "nowhere"), "--gt-dir", str(root / "gt")])
    (root / "empty").mkdir()
    assert "no predictions" in _error_line(capsys, ["--pred-dir", str(root / "empty"), "--gt-dir", str(root / "gt")])

    other_gt = root / "gt" / "bonn" / "bonn_000000_000002_gtFine_labelIds.png"
    _write_png(other_gt, np.full((4, 6), 7))
    assert other_gt.name in _error_line(capsys, args)
    other_gt.unlink()

    _write_png(pred, np.full((5, 6), 7))
    assert pred.name in _error_line(capsys, args)

    _write_png(pred, np.full((4, 6), 40))
    assert "labelId 40" in _error_line(capsys, args)

    pred.write_bytes(b"not a png")
    assert pred.name in _error_line(capsys, args)


def test_cli_subprocess_missing_dir(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", "--pred-dir", str(tmp_path / "none"), "--gt-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and str(tmp_path / "none") in done.stderr


@pytest.mark.parametrize("argv", [[], ["--pred-dir", "p"], ["--pred-dir", "p", "--val-dir", "v"],
                                  ["--pred-dir", "p", "--gt-dir", "g", "--pred-csv", "c", "--val-dir", "v"]])
def test_cli_takes_one_task_pair_of_flags(argv, capsys):
    """Each task's flags name its predictions and ground truth; any other combination is argparse's usage error."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--pred-dir with --gt-dir (segmentation), or --pred-csv with --val-dir (classification)" in err
