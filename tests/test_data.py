"""Tests for data/: label maps, Cityscapes and unlabeled datasets, transforms, the synthetic generator."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image
from torch.utils.data import DataLoader

from data import synthetic
from data.cityscapes import CityscapesSegmentation, find_label_files, frame_stem, read_train_ids
from data.errors import InputError
from data.folder import UnlabeledImages
from data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, TRAIN_TO_LABEL_ID, label_to_train_lut
from data.settings import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD
from data.transforms import eval_transforms, normalize, train_transforms

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 128)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(root, train=3, val=2, size=SIZE, seed=1, extra=2)
    return root


def _copy(synth: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth, tmp_path / "copy"))


def _split_classes(root: Path, split: str) -> set[int]:
    labels = find_label_files(root / "gtFine" / split).values()
    return set().union(*(np.unique(read_train_ids(path)).tolist() for path in labels)) - {IGNORE_INDEX}


# label maps ---------------------------------------------------------------------------------------


def test_label_lut_matches_cityscapesscripts() -> None:
    lut = label_to_train_lut()
    for label_id, label in id2label.items():
        if label_id < 0:
            continue
        expected = label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
        assert lut[label_id] == expected, label.name
    assert all(id2label[label_id].trainId == train_id for train_id, label_id in enumerate(TRAIN_TO_LABEL_ID))
    assert len(CLASS_NAMES) == NUM_CLASSES == 19


def test_read_train_ids_maps_every_label_id(tmp_path: Path) -> None:
    ids = np.array([[lab_id for lab_id in sorted(id2label) if lab_id >= 0]], dtype=np.uint8)
    path = tmp_path / "x_000000_000000_gtFine_labelIds.png"
    Image.fromarray(ids).save(path)
    train_ids = read_train_ids(path)
    assert train_ids.dtype == np.uint8 and train_ids.shape == ids.shape
    assert train_ids.tolist() == label_to_train_lut()[ids].tolist()
    assert {int(v) for v in train_ids.ravel()} == set(range(NUM_CLASSES)) | {IGNORE_INDEX}


def test_synthetic_class_constants_follow_cityscapes_order() -> None:
    for name in CLASS_NAMES:
        attr = {"traffic light": "LIGHT", "traffic sign": "SIGN"}.get(name, name.upper())
        assert getattr(synthetic, attr) == CLASS_NAMES.index(name)


def test_frame_stem() -> None:
    assert frame_stem("aachen_000000_000019_leftImg8bit.png") == "aachen_000000_000019"
    assert frame_stem(Path("a/b/bad-honnef_000012_000019_gtFine_labelIds.png")) == "bad-honnef_000012_000019"
    assert frame_stem("stuttgart_00_000000_000001_leftImg8bit.png") == "stuttgart_00_000000_000001"
    with pytest.raises(InputError, match="holiday.png"):
        frame_stem("holiday.png")


# Cityscapes dataset ------------------------------------------------------------------------------


def test_dataset_reads_synthetic_split(synth: Path) -> None:
    ds = CityscapesSegmentation(synth, "train")
    assert len(ds) == 3 and len(ds.labels) == 3
    assert [frame_stem(p) for p in ds.images] == [frame_stem(p) for p in ds.labels]
    image, mask = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.int64 and mask.shape == SIZE
    values = set(torch.unique(mask).tolist())
    assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    assert IGNORE_INDEX in values  # the first scene of a split shows the ego vehicle (labelId 1)


def test_dataset_with_transforms_batches(synth: Path) -> None:
    image, mask = CityscapesSegmentation(synth, "val", eval_transforms())[1]
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.int64 and mask.shape == SIZE
    loader = DataLoader(CityscapesSegmentation(synth, "train", train_transforms((32, 48))), batch_size=3)
    images, masks = next(iter(loader))
    assert images.shape == (3, 3, 32, 48) and images.dtype == torch.float32
    assert masks.shape == (3, 32, 48) and masks.dtype == torch.int64


# transforms -------------------------------------------------------------------------------------

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40], [40, 220, 220]], dtype=np.uint8)


def _coded_pair(seed: int) -> tuple[Image.Image, np.ndarray]:
    """An image whose colour encodes its mask: 8x8 blocks of random classes."""
    blocks = np.random.default_rng(seed).integers(0, len(PALETTE), (6, 10))
    mask = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    return Image.fromarray(PALETTE[mask]), mask


def _denormalize(image: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds one class (away from interpolated edges)."""
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones(mask.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    return same & (mask != IGNORE_INDEX)


@pytest.mark.parametrize("seed", range(6))
def test_train_transforms_keep_image_and_mask_aligned(seed: int) -> None:
    torch.manual_seed(seed)
    image, mask = _coded_pair(seed)
    out_image, out_mask = train_transforms((40, 56), scale=(0.6, 1.6))(image, mask)
    assert out_image.shape == (3, 40, 56) and out_image.dtype == torch.float32
    assert out_mask.shape == (40, 56) and out_mask.dtype == torch.int64
    rgb, labels = _denormalize(out_image), out_mask.numpy()
    inside = _interior(labels)
    assert inside.sum() > 200
    nearest = np.abs(rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)).sum(-1).argmin(-1)
    assert (nearest[inside] == labels[inside]).mean() > 0.995


def test_train_transforms_pad_mask_with_ignore_and_image_with_zero() -> None:
    torch.manual_seed(0)
    image, mask = _coded_pair(0)
    out_image, out_mask = train_transforms((96, 128), scale=(0.5, 0.5))(image, mask)
    padded = out_mask == IGNORE_INDEX
    assert padded.float().mean() > 0.5
    zero = normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))[:, 0, 0]
    assert torch.allclose(out_image[:, padded], zero[:, None])
    assert (out_image[:, ~padded] != zero[:, None]).any(0).all()


def test_train_transforms_flip_both_ways() -> None:
    image, mask = _coded_pair(3)
    reference_image, reference_mask = eval_transforms()(image, mask)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = train_transforms((48, 80), scale=(1.0, 1.0))(image, mask)
        flipped = torch.equal(out_mask, reference_mask.flip(-1))
        assert flipped or torch.equal(out_mask, reference_mask)
        assert torch.allclose(out_image, reference_image.flip(-1) if flipped else reference_image)
        flips.add(flipped)
    assert flips == {True, False}


def test_eval_transforms_and_normalize_agree() -> None:
    image, mask = _coded_pair(1)
    out_image, out_mask = eval_transforms()(image, Image.fromarray(mask))
    assert torch.equal(out_mask, torch.from_numpy(mask).long())
    alone = eval_transforms()(image)
    assert isinstance(alone, torch.Tensor) and torch.equal(alone, out_image)
    assert torch.allclose(normalize(image), out_image)
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert torch.allclose(normalize(as_tensor), out_image)
    assert normalize(as_tensor[None]).shape == (1, 3, 48, 80)
    assert torch.allclose(out_image.mean((1, 2)), torch.from_numpy(
        ((np.array(image) / 255.0 - MEAN) / STD).mean((0, 1))).float(), atol=1e-5)


# unlabeled folders ------------------------------------------------------------------------------


def test_unlabeled_images_recurse_and_sort(tmp_path: Path) -> None:
    pixels = np.full((6, 9, 3), 128, dtype=np.uint8)
    names = ["b/z.png", "a/deep/er/y.JPG", "a/x.jpeg", "c.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / name, format="JPEG" if "jp" in name.lower() else "PNG")
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "b" / "gray.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = UnlabeledImages([tmp_path / "b", tmp_path])
    assert ds.paths == sorted({tmp_path / n for n in names} | {tmp_path / "b" / "gray.png"})
    assert all(ds[i].shape == (3, 6, 9) and ds[i].dtype == torch.uint8 for i in range(len(ds)))
    assert UnlabeledImages([str(tmp_path)], eval_transforms())[0].dtype == torch.float32


def test_unlabeled_images_read_synthetic_extra(synth: Path) -> None:
    ds = UnlabeledImages([synth / "leftImg8bit" / "train_extra"], train_transforms((32, 32)))
    assert len(ds) == 2 and ds[1].shape == (3, 32, 32)


# bad input --------------------------------------------------------------------------------------


def test_missing_root_and_split(tmp_path: Path, synth: Path) -> None:
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nowhere"))):
        CityscapesSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(InputError, match=re.escape(str(synth / "leftImg8bit" / "test"))):
        CityscapesSegmentation(synth, "test")


def test_empty_split(tmp_path: Path, synth: Path) -> None:
    root = _copy(synth, tmp_path)
    shutil.rmtree(root / "leftImg8bit" / "val")
    (root / "leftImg8bit" / "val" / "frankfurt").mkdir(parents=True)
    with pytest.raises(InputError, match=re.escape(str(root / "leftImg8bit" / "val"))):
        CityscapesSegmentation(root, "val")


def test_missing_label_file_and_folder(tmp_path: Path, synth: Path) -> None:
    root = _copy(synth, tmp_path)
    label = sorted((root / "gtFine" / "train").rglob("*_labelIds.png"))[1]
    label.unlink()
    with pytest.raises(InputError, match=re.escape(str(label))):
        CityscapesSegmentation(root, "train")
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(InputError, match=re.escape(str(root / "gtFine" / "val"))):
        CityscapesSegmentation(root, "val")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_fails_when_read(tmp_path: Path, synth: Path, damage: str) -> None:
    root = _copy(synth, tmp_path)
    ds = CityscapesSegmentation(root, "train")
    data = ds.images[2].read_bytes()
    ds.images[2].write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
    ds = CityscapesSegmentation(root, "train")  # construction does not read pixels
    ds[0]
    with pytest.raises(InputError, match=re.escape(str(ds.images[2]))):
        ds[2]
    folder = UnlabeledImages([root / "leftImg8bit" / "train"])
    with pytest.raises(InputError, match=re.escape(str(ds.images[2]))):
        folder[folder.paths.index(ds.images[2])]


def test_corrupt_label_and_size_mismatch(tmp_path: Path, synth: Path) -> None:
    root = _copy(synth, tmp_path)
    ds = CityscapesSegmentation(root, "val")
    ds.labels[0].write_bytes(b"\x89PNG broken")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(ds.labels[1])
    with pytest.raises(InputError, match=re.escape(str(ds.labels[0]))):
        ds[0]
    with pytest.raises(InputError, match=re.escape(str(ds.labels[1]))):
        ds[1]


def test_unlabeled_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "gone"))):
        UnlabeledImages([tmp_path / "gone"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "empty"))):
        UnlabeledImages([tmp_path / "empty"])


# synthetic generator ----------------------------------------------------------------------------


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.generate(tmp_path / name, train=2, val=1, size=(32, 64), seed=seed, extra=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * 2 + 2 * 1 + 1
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


@pytest.mark.parametrize("count", [1, 2, 5])
def test_synthetic_split_holds_all_classes(tmp_path: Path, count: int) -> None:
    synthetic.generate(tmp_path, train=count, val=count, size=SIZE, seed=count)
    for split in ("train", "val"):
        assert _split_classes(tmp_path, split) == set(range(NUM_CLASSES)), split


def test_synthetic_classes_look_different(synth: Path) -> None:
    ds = CityscapesSegmentation(synth, "train")
    sums, counts = np.zeros((NUM_CLASSES, 3)), np.zeros(NUM_CLASSES)
    for image, mask in (ds[i] for i in range(len(ds))):
        for cls in range(NUM_CLASSES):
            where = mask == cls
            sums[cls] += image[:, where].double().sum(1).numpy()
            counts[cls] += where.sum().item()
    means = sums / counts[:, None]
    distance = np.abs(means[:, None] - means[None]).sum(-1) + np.eye(NUM_CLASSES) * 1e9
    assert distance.min() > 15


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "data.synthetic", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_cli_writes_layout(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    done = _cli("--out", str(out), "--train", "4", "--val", "1", "--size", "32", "48", "--extra", "2")
    assert done.returncode == 0, done.stderr
    assert "train: 4/4" in done.stdout
    assert (out / "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png").is_file()
    assert (out / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").is_file()
    assert (out / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png").is_file()
    assert len(list((out / "leftImg8bit/train_extra").rglob("*_leftImg8bit.png"))) == 2
    assert not (out / "gtFine/train_extra").exists()
    with Image.open(out / "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png") as image:
        assert image.size == (48, 32) and image.mode == "RGB"
    assert len(CityscapesSegmentation(out, "train")) == 4


@pytest.mark.parametrize("args", [["--train", "-1"], ["--size", "8", "64"], ["--val", "two"], []])
def test_cli_bad_argument_exits_2(tmp_path: Path, args: list[str]) -> None:
    out = ["--out", str(tmp_path / "syn")] if args else []
    done = _cli(*out, *args)
    assert done.returncode == 2
    assert done.stderr.strip()
    assert not (tmp_path / "syn").exists()
