"""Tests for the `imagefolder` and `pairs` dataset kinds, their transforms and synthetic generators."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import synthetic
from data.errors import InputError
from data.kinds import kind, names
from data.labels import IGNORE_INDEX
from data.pairs import MaskPairs, read_mask
from data.settings import Augment, DataSettings, Split
from data.transforms import classification_eval_transforms, classification_train_transforms, normalize
from trainable import tasks

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CAMVID = dict(dataset="pairs", train=Split("train", "trainannot"), val=Split("val", "valannot"), num_classes=11,
              ignore_index=11, mask_suffix="_L", unlabeled=("unlabeled",), crop=(24, 40), mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    synthetic.generate_imagefolder(root, classes=3, train=2, val=2, unlabeled=5, size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def camvid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("camvid")
    synthetic.generate_pairs(root, train=2, val=2, size=(32, 48), seed=1, unlabeled=2)
    return root


def _folder_settings(root: Path, **fields) -> DataSettings:
    defaults = dict(dataset="imagefolder", unlabeled=("unlabeled",), image_size=32, mean=MEAN, std=STD)
    return DataSettings(root=root, **{**defaults, **fields})


def _save(array: np.ndarray, path: Path, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    image.save(path)
    return path


def _pair_tree(root: Path) -> Path:
    """images/a/x.jpg + masks/a/x_L.png (palette), images/y.png + masks/y_L.png (L), images/z.png (no mask)."""
    rgb = np.full((6, 8, 3), 90, dtype=np.uint8)
    _save(rgb, root / "images" / "a" / "x.jpg")
    _save(rgb, root / "images" / "y.png")
    _save(rgb, root / "images" / "z.png")
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[:, 4:] = 2
    mask[0, 0] = 3
    _save(mask, root / "masks" / "a" / "x_L.png", palette=True)
    _save(mask, root / "masks" / "y_L.png")
    (root / "masks" / "notes.txt").write_text("not a mask")
    return root


# registry ---------------------------------------------------------------------------------------


def test_kinds_are_registered() -> None:
    assert {"cityscapes", "imagefolder", "pairs"} <= set(names())
    assert kind("imagefolder").task == tasks.Classification.name and kind("pairs").task == tasks.Segmentation.name


# imagefolder --------------------------------------------------------------------------------------


def test_imagefolder_sorted_class_order(shapes: Path) -> None:
    s = _folder_settings(shapes)
    val = kind("imagefolder").val(s)
    assert val.classes == ("disc", "square", "triangle")  # sorted, not generation order
    assert [target for _, target in val.samples] == [0, 0, 1, 1, 2, 2]
    assert all(path.parent.name == val.classes[t] for path, t in val.samples)
    assert kind("imagefolder").num_classes(s) == 3 and kind("imagefolder").input_size(s) == (32, 32)
    image, target = val[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and target == 1
    assert len(kind("imagefolder").train(s)) == 6


def test_imagefolder_classes_list_sets_order_and_must_match(shapes: Path) -> None:
    s = _folder_settings(shapes, classes=("triangle", "disc", "square"))
    val = kind("imagefolder").val(s)
    assert val.classes == s.classes and val[0][1] == 0 and val.samples[0][0].parent.name == "triangle"
    for wrong in (("disc", "square"), ("disc", "square", "triangle", "cross")):
        with pytest.raises(InputError, match=re.escape(str(shapes / "val"))):
            kind("imagefolder").val(_folder_settings(shapes, classes=wrong))
    with pytest.raises(InputError, match="disc listed more than once"):
        kind("imagefolder").val(_folder_settings(shapes, classes=("disc", "disc", "square", "triangle")))


def test_imagefolder_train_must_hold_val_classes(shapes: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(shapes, tmp_path / "copy"))
    for image in (root / "train" / "disc").iterdir():
        image.unlink()  # an empty class folder is fine
    train = kind("imagefolder").train(_folder_settings(root))
    assert len(train) == 4 and {t for _, t in train.samples} == {1, 2}
    (root / "train" / "disc").rmdir()
    with pytest.raises(InputError, match=r"missing: disc"):
        kind("imagefolder").train(_folder_settings(root))


def test_imagefolder_bad_splits(shapes: Path, tmp_path: Path) -> None:
    (tmp_path / "val" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "dog" / "deep").mkdir(parents=True)
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'val'}: no images")):
        kind("imagefolder").val(_folder_settings(tmp_path))
    (tmp_path / "flat").mkdir()
    with pytest.raises(InputError, match="no class folders"):
        kind("imagefolder").val(_folder_settings(tmp_path, val="flat"))
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "gone"))):
        kind("imagefolder").val(_folder_settings(tmp_path, val="gone"))
    with pytest.raises(InputError, match="data.val"):
        kind("imagefolder").val(_folder_settings(shapes, val=Split("val", "masks")))


def test_imagefolder_images_recurse_in_class_folders(tmp_path: Path) -> None:
    pixels = np.full((5, 7, 3), 200, dtype=np.uint8)
    for name in ("b/one.PNG", "b/deep/two.webp", "a/three.bmp", "a/x/y/four.JPEG"):
        _save(pixels, tmp_path / "val" / name)
    (tmp_path / "val" / "a" / "readme.txt").write_text("not an image")
    val = kind("imagefolder").val(_folder_settings(tmp_path))
    found = [(p.name, t) for p, t in val.samples]
    assert found == [("three.bmp", 0), ("four.JPEG", 0), ("two.webp", 1), ("one.PNG", 1)]
    assert val[1][0].shape == (3, 32, 32)


def test_imagefolder_unlabeled_recursive_mixed_suffixes(shapes: Path, tmp_path: Path) -> None:
    s = _folder_settings(shapes, augment=Augment("resized", True))
    unlabeled = kind("imagefolder").unlabeled(s)
    assert len(unlabeled) == 5 and {p.suffix for p in unlabeled.paths} == {".png", ".jpg"}
    assert all(len(p.relative_to(shapes / "unlabeled").parts) == 3 for p in unlabeled.paths)
    assert unlabeled[0].shape == (3, 32, 32) and unlabeled[0].dtype == torch.float32
    pixels = np.full((9, 11, 3), 50, dtype=np.uint8)
    for name in ("p/q/a.bmp", "p/b.WEBP", "c.Jpg", "p/q/r/d.png"):
        _save(pixels, tmp_path / "u" / name)
    unlabeled = kind("imagefolder").unlabeled(_folder_settings(tmp_path, unlabeled=("u",)))
    assert sorted(p.name for p in unlabeled.paths) == ["a.bmp", "b.WEBP", "c.Jpg", "d.png"]
    assert all(unlabeled[i].shape == (3, 32, 32) for i in range(4))


@pytest.mark.parametrize("crop", ["pad", "resized", "none"])
@pytest.mark.parametrize("flip", [True, False])
def test_classification_train_transform_shapes(crop: str, flip: bool) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    transform = classification_train_transforms(24, Augment(crop, flip), None, MEAN, STD)
    out = transform(image)
    assert type(out) is torch.Tensor and out.shape == (3, 24, 24) and out.dtype == torch.float32
    eval_out = classification_eval_transforms(24, None, MEAN, STD)(image)
    if crop == "none" and not flip:
        assert torch.equal(out, eval_out)
    resized = classification_train_transforms(24, Augment(crop, flip), 28, MEAN, STD)(image)
    assert resized.shape == (3, 24, 24)


def test_classification_pad_crop_shifts_by_at_most_4() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    reference = normalize(image, MEAN, STD)
    transform = classification_train_transforms(32, Augment("pad", False), None, MEAN, STD)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(8)]
    assert any(not torch.equal(out, reference) for out in outs)
    for out in outs:
        shifts = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                  if torch.equal(out[:, 4:-4, 4:-4], reference[:, 4 + dy:28 + dy, 4 + dx:28 + dx])]
        assert shifts


def test_classification_eval_transform_conventions() -> None:
    cifar = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    transform = classification_eval_transforms(32, None, MEAN, STD)
    assert torch.equal(transform(cifar), normalize(cifar, MEAN, STD))  # already image_size: untouched
    wide = Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    assert transform(wide).shape == (3, 32, 32)
    center = classification_eval_transforms(32, 48, MEAN, STD)(wide)  # shorter side 48, then centre 32
    assert torch.equal(center, normalize(wide, MEAN, STD)[:, 8:40, 24:56])
    assert torch.equal(classification_eval_transforms(32, 48, MEAN, STD)(wide), center)  # deterministic


def test_imagefolder_corrupt_image_named_at_read(shapes: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(shapes, tmp_path / "copy"))
    val = kind("imagefolder").val(_folder_settings(root))
    broken = val.samples[3][0]
    broken.write_bytes(b"not an image")
    val = kind("imagefolder").val(_folder_settings(root))
    val[0]
    with pytest.raises(InputError, match=re.escape(str(broken))):
        val[3]


# pairs --------------------------------------------------------------------------------------------


def test_pairs_match_by_stem_and_suffix(tmp_path: Path) -> None:
    root = _pair_tree(tmp_path)
    ds = MaskPairs(root, Split("images", "masks"), num_classes=4, mask_suffix="_L")
    assert ds.pairs == [(root / "images/a/x.jpg", root / "masks/a/x_L.png"),
                        (root / "images/y.png", root / "masks/y_L.png")]
    for index in range(2):  # palette and grey masks alike give their indices
        image, mask = ds[index]
        assert image.shape == (3, 6, 8) and image.dtype == torch.uint8
        assert mask.dtype == torch.int64 and mask[:, :4].sum() == 3 and (mask[:, 4:] == 2).all()


def test_read_mask_palette_indices_and_ignore(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 11], [10, 11, 5]], dtype=np.uint8)
    path = _save(mask, tmp_path / "m.png", palette=True)
    with Image.open(path) as image:
        assert image.mode == "P"
    assert read_mask(path, 11, ignore_index=11).tolist() == [[0, 1, IGNORE_INDEX], [10, IGNORE_INDEX, 5]]
    with pytest.raises(InputError, match=re.escape(f"{path}: mask holds value 11")):
        read_mask(path, 11)
    with pytest.raises(InputError, match=re.escape(f"{path}: mask holds value 11")):
        read_mask(path, 11, ignore_index=0)
    rgb = _save(np.zeros((2, 3, 3), dtype=np.uint8), tmp_path / "rgb.png")
    with pytest.raises(InputError, match=re.escape(f"{rgb}: mask is a mode RGB image")):
        read_mask(rgb, 11)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match=re.escape(str(broken))):
        read_mask(broken, 11)


def test_pairs_missing_image_refused_image_without_mask_left_out(tmp_path: Path) -> None:
    root = _pair_tree(tmp_path)
    images = {image for image, _ in MaskPairs(root, Split("images", "masks"), 4, 255, "_L").pairs}
    assert images == {root / "images/a/x.jpg", root / "images/y.png"}  # z.png has no mask
    (root / "images" / "y.png").unlink()
    with pytest.raises(InputError, match=re.escape(f"{root / 'masks/y_L.png'}: no image")):
        MaskPairs(root, Split("images", "masks"), 4, 255, "_L")
    _save(np.zeros((6, 8, 3), dtype=np.uint8), root / "images" / "y.png")
    _save(np.zeros((6, 8, 3), dtype=np.uint8), root / "images" / "y.bmp")
    with pytest.raises(InputError, match="several images"):
        MaskPairs(root, Split("images", "masks"), 4, 255, "_L")


def test_pairs_empty_folders_refused(tmp_path: Path) -> None:
    root = _pair_tree(tmp_path)
    with pytest.raises(InputError, match=re.escape(f"{root / 'masks'}: no masks found")):
        MaskPairs(root, Split("images", "masks"), 4, 255, "_mask")
    (root / "none").mkdir()
    with pytest.raises(InputError, match=re.escape(f"{root / 'none'}: no images found")):
        MaskPairs(root, Split("none", "masks"), 4, 255, "_L")
    with pytest.raises(InputError, match=re.escape(str(root / "gone"))):
        MaskPairs(root, Split("images", "gone"), 4, 255, "_L")


def test_pairs_read_errors_name_the_file(tmp_path: Path) -> None:
    root = _pair_tree(tmp_path)
    with pytest.raises(InputError, match=re.escape(f"{root / 'masks/a/x_L.png'}: mask holds value 3")):
        MaskPairs(root, Split("images", "masks"), 3, 255, "_L")[0]
    ds = MaskPairs(root, Split("images", "masks"), 4, 255, "_L")
    (root / "images" / "a" / "x.jpg").write_bytes(b"garbage")
    _save(np.zeros((5, 8), dtype=np.uint8), root / "masks" / "y_L.png")
    with pytest.raises(InputError, match=re.escape(str(root / "images/a/x.jpg"))):
        ds[0]
    with pytest.raises(InputError, match=re.escape(f"{root / 'masks/y_L.png'}: mask size 8x5 differs")):
        ds[1]


def test_pairs_kind_reads_synthetic_camvid(camvid: Path) -> None:
    s = DataSettings(root=camvid, **CAMVID)
    pairs = kind("pairs")
    val = pairs.val(s)
    assert [image.name for image, _ in val.pairs] == ["0016E5_000000.png", "0016E5_000030.png"]
    assert pairs.num_classes(s) == 11 and pairs.input_size(s) == (24, 40)
    with Image.open(val.pairs[0][1]) as mask:
        assert mask.mode == "P"
    values = set()
    for index in range(len(val)):
        image, mask = val[index]
        assert image.shape == (3, 32, 48) and image.dtype == torch.float32 and mask.shape == (32, 48)
        values |= set(mask.unique().tolist())
    assert values == set(range(11)) | {IGNORE_INDEX}  # every class, and the ego vehicle's void as 255
    image, mask = pairs.train(s)[0]
    assert image.shape == (3, 24, 40) and mask.shape == (24, 40) and mask.dtype == torch.int64
    unlabeled = pairs.unlabeled(s)
    assert len(unlabeled) == 2 and unlabeled[0].shape == (3, 24, 40)


def test_pairs_settings_errors(camvid: Path) -> None:
    fields = dict(CAMVID)
    with pytest.raises(InputError, match="data.num_classes"):
        kind("pairs").val(DataSettings(root=camvid, **{**fields, "num_classes": None}))
    with pytest.raises(InputError, match="data.val"):
        kind("pairs").val(DataSettings(root=camvid, **{**fields, "val": "val"}))


# synthetic generators and CLI ---------------------------------------------------------------------


def test_generators_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        synthetic.generate_imagefolder(tmp_path / name / "f", classes=2, train=1, val=1, unlabeled=2, size=16)
        synthetic.generate_pairs(tmp_path / name / "p", train=1, val=1, size=(32, 32), unlabeled=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 4 + 2 + 4 + 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_cli_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main(["--out", str(tmp_path / "f"), "--layout", "imagefolder", "--classes", "2", "--train", "1",
                           "--val", "1", "--extra", "1", "--size", "16"]) == 0
    assert sorted(p.name for p in (tmp_path / "f" / "val").iterdir()) == ["disc", "square"]
    with Image.open(tmp_path / "f" / "train" / "disc" / "00000.png") as image:
        assert image.size == (16, 16)
    assert synthetic.main(["--out", str(tmp_path / "p"), "--layout", "pairs", "--train", "1", "--val", "1",
                           "--size", "32", "40"]) == 0
    assert (tmp_path / "p" / "valannot" / "0016E5_000000_L.png").is_file()
    assert "wrote" in capsys.readouterr().out
    for bad in (["--layout", "pairs", "--classes", "3"], ["--layout", "imagefolder", "--size", "16", "24"],
                ["--size", "32", "32", "32"]):
        with pytest.raises(SystemExit) as exit_:
            synthetic.main(["--out", str(tmp_path / "x"), *bad])
        assert exit_.value.code == 2
    with pytest.raises(InputError, match="at most 8"):
        synthetic.main(["--out", str(tmp_path / "x"), "--layout", "imagefolder", "--classes", "9"])
    assert not (tmp_path / "x").exists()
