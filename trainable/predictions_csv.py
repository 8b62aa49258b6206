"""Classification predictions as a file: predictions.csv (`path,class,score`) written from a model and scored
against an ImageFolder split (what `trainable.predict` and `trainable.evaluate` do for a classifier)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor

from data.errors import InputError
from data.files import write_text_atomic
from data.folder import find_images, open_rgb
from data.imagefolder import class_folders
from data.settings import IMAGENET_MEAN, IMAGENET_STD
from data.transforms import classification_eval_transforms
from trainable.precision import autocast

PREDICTIONS_CSV = "predictions.csv"
CSV_HEADER = ("path", "class", "score")
Infer = Callable[[Tensor], Tensor]  # normalised images (N, 3, H, W) -> logits (N, classes)


def check_preprocess(meta: Mapping[str, Any], source: str) -> None:
    """InputError naming `source` unless `meta` (a student file's record) says how its images are read."""
    if meta.get("preprocess") is None and meta.get("input_size") is None:
        raise InputError(f"{source}: no preprocess or input_size recorded; a classifier's predictions need a student "
                         "file written by search/retrain.py")


def classification_transform(meta: Mapping[str, Any]) -> Callable[[Image.Image], Tensor]:
    """The eval transform a student file records: its `preprocess`, else a resize to its input size with ImageNet's
    mean and std (see `check_preprocess`)."""
    pre = meta.get("preprocess") or {"image_size": int(meta["input_size"][0])}
    return classification_eval_transforms(int(pre["image_size"]), pre.get("eval_resize"),
                                          tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD)))


@torch.inference_mode()
def classify_folder(
    infer: Infer, images: Path, paths: Sequence[Path], transform: Callable[[Image.Image], Tensor],
    classes: Sequence[str] | None, device: torch.device, batch: int = 32, log: Callable[[str], None] = print,
) -> list[tuple[str, str, float]]:
    """`(path relative to images, class name or index, softmax probability)` per image, in `paths` order."""
    rows: list[tuple[str, str, float]] = []
    total = len(paths)
    every = max(1, math.ceil(total / batch / 10)) * batch
    for first in range(0, total, batch):
        chunk = paths[first:first + batch]
        inputs = torch.stack([transform(open_rgb(path)) for path in chunk]).to(device)
        with autocast(device):
            logits = infer(inputs).float()
        if logits.ndim != 2:
            raise InputError(f"model outputs shape {tuple(logits.shape)}; expected (N, classes) logits of a classifier")
        if classes is not None and logits.shape[1] != len(classes):
            raise InputError(f"model outputs {logits.shape[1]} classes; the student file names {len(classes)}")
        score, index = logits.softmax(1).max(1)
        for path, s, i in zip(chunk, score.tolist(), index.tolist()):
            rows.append((path.relative_to(images).as_posix(), classes[i] if classes is not None else str(i), s))
        done = min(first + batch, total)
        if done % every == 0 or done == total:
            log(f"{done}/{total}")
    return rows


def write_csv(rows: Sequence[tuple[str, str, float]], path: Path) -> None:
    """predictions.csv (`path,class,score`), atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows((rel, name, f"{score:.6f}") for rel, name, score in rows)
    write_text_atomic(path, text.getvalue())


def read_prediction_csv(path: Path) -> dict[str, str]:
    """`{path: class}` of a predictions CSV with the columns `path` and `class` (more, e.g. `score`, are ignored)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise InputError(f"{path}: predictions file not found; expected the {PREDICTIONS_CSV} of trainable.predict") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read predictions ({str(err).splitlines()[0]}); expected a CSV file") from None
    header = rows[0] if rows else []
    if "path" not in header or "class" not in header:
        raise InputError(f"{path}: header {','.join(header) or '(empty file)'}; expected the columns {','.join(CSV_HEADER)}")
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


def class_hits(pred_csv: Path, val_dir: Path) -> dict[str, tuple[int, int]]:
    """Per class folder of an ImageFolder split: (images predicted right, images), every image scored once.

    A predicted class is a class folder name, or an index into the sorted names; the CSV's paths are relative
    to `val_dir` (predictions made with `--images VAL`). A val image without a prediction, a prediction of no
    val image, an unknown class and a split without images are InputErrors naming them.
    """
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
    if not sum(totals):
        raise InputError(f"{val_dir}: no images in any class folder; expected images in <class>/ folders")
    extra = sorted(set(predicted) - expected)
    if extra:
        raise InputError(f"{pred_csv}: {len(extra)} predictions of no image of {val_dir} (first: {extra[0]}); "
                         "expected paths relative to the val folder, as written by predict --images VAL")
    return {name: (h, t) for name, h, t in zip(names, hits, totals)}
