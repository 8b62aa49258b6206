"""Segmentation predictions as files: one Cityscapes labelIds PNG per image, written from a model and scored
against a gtFine folder (what `trainable.predict` and `trainable.evaluate` do for a segmenter)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from data.cityscapes import find_label_files, read_train_ids
from data.errors import InputError
from data.files import atomic_output
from data.folder import open_rgb, require_dir
from data.labels import IGNORE_INDEX, NUM_CLASSES, label_to_train_lut, train_to_label_lut
from data.settings import IMAGENET_MEAN, IMAGENET_STD
from data.transforms import normalize
from trainable.miou import confusion_matrix
from trainable.precision import autocast

Infer = Callable[[Tensor], Tensor]  # normalised images (N, 3, H, W) -> logits (N, C, H, W)
PRED_FORMATS = ("labelIds", "trainIds")  # what the pixels of a prediction PNG hold

_TO_LABEL_ID = torch.from_numpy(train_to_label_lut())
_PRED_STEM = re.compile(r"(.+?_\d+_\d+)(?:_.*)?\.png", re.IGNORECASE)
_MAX_LABEL_ID = 33
_LABEL_LUT = label_to_train_lut()
_TRAIN_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_TRAIN_LUT[:NUM_CLASSES] = np.arange(NUM_CLASSES)


def output_paths(images: Path, inputs: Sequence[Path], out: Path) -> list[tuple[Path, Path]]:
    """`(input, output PNG)` per image of `inputs` (below `images`); refuses an `out` that could overwrite an input."""
    images_abs, out_abs = images.resolve(), out.resolve()
    if out_abs == images_abs or images_abs in out_abs.parents:
        raise InputError(f"--out {out}: inside the image folder {images}; expected a folder outside it")
    resolved_inputs = {path.resolve() for path in inputs}
    pairs: dict[Path, Path] = {}
    for path in inputs:
        target = (out / path.relative_to(images)).with_suffix(".png")
        if target in pairs:
            raise InputError(f"{path}: writes the same {target} as {pairs[target]}; expected one image per name stem")
        if target.resolve() in resolved_inputs:
            raise InputError(f"--out {out}: would overwrite the input {target}; expected a folder apart from it")
        pairs[target] = path
    return [(source, target) for target, source in pairs.items()]


def write_png(label_ids: np.ndarray, path: Path) -> None:
    """Save a uint8 (H, W) array as a one-channel PNG, atomically."""
    with atomic_output(path) as handle:
        Image.fromarray(label_ids).save(handle, format="PNG")


@torch.inference_mode()
def predict_label_ids(infer: Infer, image: Image.Image, device: torch.device,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """labelIds (H, W) uint8 of one RGB image: argmax of the trainId logits, mapped to the official labelIds."""
    batch = normalize(image, tuple(mean), tuple(std)).unsqueeze(0).to(device)
    with autocast(device):
        logits = infer(batch)
    return _TO_LABEL_ID[logits[0].argmax(0).cpu()].numpy()


def predict_folder(
    infer: Infer, pairs: Sequence[tuple[Path, Path]], device: torch.device, log: Callable[[str], None] = print,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> None:
    """Write one labelIds PNG per `(input, output)` pair (see `output_paths`), logging progress."""
    total = len(pairs)
    every = max(1, math.ceil(total / 10))
    for done, (source, target) in enumerate(pairs, start=1):
        write_png(predict_label_ids(infer, open_rgb(source), device, mean, std), target)
        if done % every == 0 or done == total:
            log(f"{done}/{total}")


def _read_prediction(path: Path, pred_format: str) -> np.ndarray:
    """A prediction PNG as trainIds, 255 where it predicts no evaluated class."""
    try:
        with Image.open(path) as image:
            ids = np.array(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot read prediction ({err}); expected a one-channel {pred_format} PNG") from err
    if ids.ndim != 2 or ids.size == 0:
        raise InputError(f"{path}: prediction has shape {ids.shape}; expected one channel of {pred_format}")
    top = int(ids.max())
    if pred_format == PRED_FORMATS[0]:
        if ids.min() < 0 or top > _MAX_LABEL_ID:
            raise InputError(f"{path}: prediction holds labelId {top}; expected labelIds 0..{_MAX_LABEL_ID}")
        return _LABEL_LUT[ids.astype(np.uint8)]
    bad = ids[((ids < 0) | (ids >= NUM_CLASSES)) & (ids != IGNORE_INDEX)]
    if bad.size:
        raise InputError(
            f"{path}: prediction holds trainId {int(bad[0])}; expected trainIds 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}"
        )
    return _TRAIN_LUT[ids.astype(np.uint8)]


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Every `<city>_<seq>_<frame>*.png` below `pred_dir`, keyed by frame stem; other files are skipped."""
    found: dict[str, Path] = {}
    for path in sorted(require_dir(pred_dir, "a folder of prediction PNGs").rglob("*")):
        match = _PRED_STEM.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        stem = match.group(1)
        if stem in found:
            raise InputError(f"{path}: second prediction for frame {stem} (also {found[stem]}); expected one")
        found[stem] = path
    if not found:
        raise InputError(f"{pred_dir}: no predictions found; expected <city>_<seq>_<frame>*.png files below it")
    return found


def folder_confusion(pred_dir: Path, gt_dir: Path, pred_format: str = PRED_FORMATS[0]) -> Tensor:
    """The (C, C + 1) confusion matrix of every ground truth `*_gtFine_labelIds.png` below `gt_dir` against its
    prediction below `pred_dir` (`confusion_matrix(other_column=True)`)."""
    predictions = find_predictions(pred_dir)
    labels = find_label_files(gt_dir)
    if not labels:
        raise InputError(f"{gt_dir}: no ground truth found; expected <city>/*_gtFine_labelIds.png files below it")
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES + 1, dtype=torch.int64)
    for stem, gt_path in labels.items():
        if stem not in predictions:
            raise InputError(f"{gt_path}: no prediction; expected {stem}*.png below {pred_dir}")
        pred = _read_prediction(predictions[stem], pred_format)
        gt = read_train_ids(gt_path)
        if pred.shape != gt.shape:
            raise InputError(
                f"{predictions[stem]}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from "
                f"{gt_path} ({gt.shape[1]}x{gt.shape[0]}); expected the same size"
            )
        conf += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), other_column=True)
    return conf
