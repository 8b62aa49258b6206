"""Cityscapes mIoU: confusion matrices, whole/sliding inference, model evaluation, and a CLI that scores predictions.

`python -m trainable.evaluate --pred-dir P --gt-dir G [--pred-format labelIds|trainIds] [--json]` gives the
same class IoUs as cityscapesscripts' evalPixelLevelSemanticLabeling (19 classes, ignore 255).
`python -m trainable.evaluate --pred-csv predictions.csv --val-dir VAL [--json]` gives the top-1 accuracy of a
classifier's predictions (`trainable.predict`) on an ImageFolder split: class = the sorted class folder names.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from data.cityscapes import find_label_files, read_train_ids
from data.errors import InputError, run_cli
from data.folder import find_images, require_dir
from data.imagefolder import class_folders
from data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, label_to_train_lut
from data.settings import EvalSettings

_PRED_STEM = re.compile(r"(.+?_\d+_\d+)(?:_.*)?\.png", re.IGNORECASE)
_MAX_LABEL_ID = 33


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
    *, other_column: bool = False,
) -> Tensor:
    """(C, C) int64 counts, rows = ground-truth class, cols = predicted class; gt == ignore_index is dropped.

    With `other_column`, the result is (C, C + 1) and predictions outside [0, C) are counted in the last
    column ("no evaluated class"): false negatives of the gt class, false positives of none. Without it,
    such predictions raise ValueError.
    """
    keep = target != ignore_index
    gt = target[keep].long()
    guess = pred[keep].long()
    guess = torch.where((guess < 0) | (guess >= num_classes), num_classes, guess)
    width = num_classes + 1
    counts = torch.bincount(gt * width + guess, minlength=num_classes * width)
    if counts.numel() != num_classes * width:
        raise ValueError(f"target holds a class >= {num_classes} that is not ignore_index {ignore_index}")
    conf = counts.view(num_classes, width)
    if other_column:
        return conf
    if conf[:, num_classes].any():
        raise ValueError(f"pred holds values outside [0, {num_classes}); use other_column=True to count them")
    return conf[:, :num_classes]


def iou_per_class(conf: Tensor) -> list[float | None]:
    """tp / (tp + fp + fn) per class, None where the denominator is 0; `conf` is (C, C) or (C, C + 1)."""
    conf = conf.detach().cpu().long()
    num_classes = conf.shape[0]
    tp = conf.diagonal()[:num_classes]
    fn = conf.sum(1) - tp
    fp = conf[:, :num_classes].sum(0) - tp
    ious: list[float | None] = []
    for t, p, n in zip(tp.tolist(), fp.tolist(), fn.tolist()):
        denom = t + p + n
        ious.append(t / denom if denom else None)
    return ious


def mean_iou(conf: Tensor) -> float:
    """Mean of the defined class IoUs (nan if none is defined), summed in class order like the official script."""
    valid = [iou for iou in iou_per_class(conf) if iou is not None]
    return sum(valid) / len(valid) if valid else float("nan")


def class_names(num_classes: int) -> tuple[str, ...]:
    return CLASS_NAMES if num_classes == NUM_CLASSES else tuple(f"class{i}" for i in range(num_classes))


@dataclass
class EvalResult:
    miou: float
    per_class: dict[str, float | None]

    @classmethod
    def from_confusion(cls, conf: Tensor) -> EvalResult:
        names = class_names(conf.shape[0])
        return cls(miou=mean_iou(conf), per_class=dict(zip(names, iou_per_class(conf))))

    def to_json(self) -> dict:
        """`{"miou": fraction or None, "mIoU": the same (the Cityscapes scripts' name), "per_class": {name: IoU or None}}`."""
        value = None if math.isnan(self.miou) else self.miou
        return {"miou": value, "mIoU": value, "per_class": dict(self.per_class)}


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins at multiples of `stride`; the last one shifted back to end at `length` (tile <= length)."""
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def _sliding(model: nn.Module, images: Tensor, crop: int, overlap: float) -> Tensor:
    height, width = images.shape[-2:]
    tile_h, tile_w = min(crop, height), min(crop, width)
    stride = max(1, math.ceil(crop * (1 - overlap)))
    total: Tensor | None = None
    count = torch.zeros(height, width, device=images.device)
    for y, x in product(tile_starts(height, tile_h, stride), tile_starts(width, tile_w, stride)):
        logits = model(images[..., y:y + tile_h, x:x + tile_w]).float()
        if total is None:
            total = logits.new_zeros(*logits.shape[:2], height, width)
        total[..., y:y + tile_h, x:x + tile_w] += logits
        count[y:y + tile_h, x:x + tile_w] += 1
    return total / count


@torch.no_grad()
def infer_logits(model: nn.Module, images: Tensor, settings: EvalSettings) -> Tensor:
    """Raw logits (N, C, H, W) in float32 for normalised images (N, 3, H, W), NVIDIA's recipe (model in eval mode).

    Per scale the images are resized bilinearly (antialiased when shrinking, like PIL) and, in sliding mode,
    cut into tiles of crop * max(scale, 1) px; tile logits are averaged per pixel, resized back (bilinear,
    half-pixel, like OpenCV), flipped back, and averaged over flips and scales.
    """
    height, width = images.shape[-2:]
    flips = (False, True) if settings.flip else (False,)
    total: Tensor | None = None
    for scale in settings.scales:
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )
        for flipped in flips:
            view = scaled.flip(-1) if flipped else scaled
            if settings.mode == "sliding":
                logits = _sliding(model, view, round(settings.crop * max(scale, 1.0)), settings.overlap)
            else:
                logits = model(view).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
    return total / (len(settings.scales) * len(flips))


_LABEL_LUT = label_to_train_lut()
_TRAIN_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_TRAIN_LUT[:NUM_CLASSES] = np.arange(NUM_CLASSES)


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
    if pred_format == "labelIds":
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


def score_folders(pred_dir: str | Path, gt_dir: str | Path, pred_format: str = "labelIds") -> EvalResult:
    """Score every ground truth `*_gtFine_labelIds.png` below `gt_dir` against its prediction below `pred_dir`."""
    predictions = find_predictions(Path(pred_dir))
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
    return EvalResult.from_confusion(conf)


def read_prediction_csv(path: Path) -> dict[str, str]:
    """`{path: class}` of a predictions CSV with the columns `path` and `class` (more, e.g. `score`, are ignored)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise InputError(f"{path}: predictions file not found; expected the predictions.csv of trainable.predict") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read predictions ({str(err).splitlines()[0]}); expected a CSV file") from None
    header = rows[0] if rows else []
    if "path" not in header or "class" not in header:
        raise InputError(f"{path}: header {','.join(header) or '(empty file)'}; expected the columns path,class,score")
    at, of = header.index("path"), header.index("class")
    predicted: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(f"{path}: line {line}: {len(row)} fields; expected {len(header)} ({','.join(header)})")
        if row[at] in predicted:
            raise InputError(f"{path}: line {line}: second prediction for {row[at]}; expected one per image")
        predicted[row[at]] = row[of]
    if not predicted:
        raise InputError(f"{path}: no predictions; expected one row per image")
    return predicted


def score_predictions(pred_csv: str | Path, val_dir: str | Path) -> dict:
    """Top-1 accuracy of a predictions CSV on an ImageFolder split: every image below `val_dir/<class>/` scored once.

    A predicted class is a class folder name, or an index into the sorted names; the CSV's paths are relative
    to `val_dir` (predictions made with `--images VAL`). A val image without a prediction, a prediction of no
    val image and an unknown class are InputErrors naming them.
    """
    pred_csv, val_dir = Path(pred_csv), Path(val_dir)
    predicted = read_prediction_csv(pred_csv)
    names = class_folders(val_dir)
    index = {name: i for i, name in enumerate(names)}
    hits, totals = [0] * len(names), [0] * len(names)
    expected: set[str] = set()
    for label, name in enumerate(names):
        for image in find_images(val_dir / name):
            rel = image.relative_to(val_dir).as_posix()
            expected.add(rel)
            if rel not in predicted:
                raise InputError(f"{image}: no prediction in {pred_csv}; expected a row with path {rel}")
            guess = predicted[rel]
            guessed = index.get(guess, int(guess) if guess.isdecimal() and int(guess) < len(names) else None)
            if guessed is None:
                raise InputError(f"{pred_csv}: {rel}: unknown class {guess!r}; expected one of the class folders "
                                 f"of {val_dir} ({', '.join(names)}) or an index 0..{len(names) - 1}")
            totals[label] += 1
            hits[label] += guessed == label
    seen = sum(totals)
    if not seen:
        raise InputError(f"{val_dir}: no images in any class folder; expected images in <class>/ folders")
    extra = sorted(set(predicted) - expected)
    if extra:
        raise InputError(f"{pred_csv}: {len(extra)} predictions of no image of {val_dir} (first: {extra[0]}); "
                         "expected paths relative to the val folder, as written by predict --images VAL")
    per_class = {name: (h / t if t else None) for name, h, t in zip(names, hits, totals)}
    return {"top1": sum(hits) / seen, "images": seen, "per_class": per_class}


def format_table(result: EvalResult) -> str:
    rows = [f"{'class':<15} {'IoU':>7}"]
    rows += [f"{name:<15} {'n/a' if iou is None else f'{iou:.4f}':>7}" for name, iou in result.per_class.items()]
    rows.append(f"{'mIoU':<15} {result.miou:>7.4f}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainable.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--pred-dir", help="segmentation: folder of prediction PNGs, searched recursively")
    parser.add_argument("--gt-dir", help="segmentation: a gtFine/<split> folder of *_gtFine_labelIds.png")
    parser.add_argument("--pred-format", choices=("labelIds", "trainIds"), default="labelIds",
                        help="what the prediction pixels hold (default labelIds)")
    parser.add_argument("--pred-csv", help="classification: predictions.csv of trainable.predict (path,class,score)")
    parser.add_argument("--val-dir", help="classification: the ImageFolder split it predicts (<class>/<image>)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    given = [value is not None for value in (args.pred_dir, args.gt_dir, args.pred_csv, args.val_dir)]
    if given not in ([True, True, False, False], [False, False, True, True]):
        parser.error("give --pred-dir with --gt-dir (segmentation), or --pred-csv with --val-dir (classification)")
    if args.pred_csv is not None:
        scores = score_predictions(args.pred_csv, args.val_dir)
        print(json.dumps(scores, indent=2) if args.json else f"top-1 {scores['top1']:.4f} ({scores['images']} images)")
        return 0
    result = score_folders(args.pred_dir, args.gt_dir, args.pred_format)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
