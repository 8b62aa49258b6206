"""Predict every image below a folder: a classifier writes predictions.csv, a segmenter Cityscapes labelIds PNGs.

python -m trainable.predict (--student FILE | --teacher ARCH --checkpoint FILE [--num-classes C] [--width W])
    --images DIR --out DIR [--batch N] [--sliding] [--crop N] [--flip] [--device auto|cpu|cuda]

The student file says its task. A classifier writes `<out>/predictions.csv`, one row `path,class,score`
per image: `path` relative to `--images` (with `/`), `class` the class name the student file records
(the val split's class folders; the class index when it records none), `score` its softmax
probability. Images are read with the eval transform the file records (`image_size`, `eval_resize`,
`mean`, `std` of the space's data; without one: a resize to the file's input size and ImageNet's
mean and std). `python -m trainable.evaluate --pred-csv OUT/predictions.csv --val-dir VAL` scores it.
A segmenter turns each `<images>/<rel>/<name>.<ext>` into `<out>/<rel>/<name>.png` (labelIds, one
channel, uint8), which `python -m trainable.evaluate --pred-dir OUT --gt-dir G` scores; `--teacher`
is for segmentation archs of the zoo.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from data.errors import InputError, run_cli
from data.files import atomic_output, write_text_atomic
from data.folder import find_images, open_rgb, require_dir, suffix_list
from data.labels import NUM_CLASSES, train_to_label_lut
from data.settings import IMAGENET_MEAN, IMAGENET_STD, EvalSettings
from data.transforms import classification_eval_transforms, normalize
from trainable.config import TeacherSettings, pick_device
from trainable.evaluate import infer_logits
from trainable.models import info, is_zoo
from trainable.precision import autocast
from trainable.surgery import load_student
from trainable.tasks import read_logits

_TO_LABEL_ID = torch.from_numpy(train_to_label_lut())
CSV_NAME = "predictions.csv"
CSV_HEADER = ("path", "class", "score")


def _require_segmentation(task: str, num_classes: int, source: str) -> None:
    if task != "segmentation":
        raise InputError(f"{source}: a {task} model; --teacher expects a segmentation arch")
    if num_classes != NUM_CLASSES:
        raise InputError(
            f"{source}: num_classes is {num_classes}; the Cityscapes labelIds format expects {NUM_CLASSES}"
        )


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The student file (and its metadata), or the zoo teacher with its checkpoint, on `device` in eval mode."""
    if args.student is not None:
        model, meta = load_student(args.student, map_location=device)
        if meta.get("task") is None and is_zoo(meta["arch"]):  # a file written before students recorded their task
            meta["task"] = info(meta["arch"]).task
        if meta.get("task") == "segmentation":
            _require_segmentation("segmentation", int(meta["arch_args"].get("num_classes", NUM_CLASSES)), args.student)
        elif meta.get("task") != "classification":
            raise InputError(f"{args.student}: the student file records task {meta.get('task')!r}; "
                             "expected classification or segmentation")
        return model.eval(), meta
    num_classes = NUM_CLASSES if args.num_classes is None else args.num_classes
    _require_segmentation(info(args.teacher).task, num_classes, f"--teacher {args.teacher}")
    width = 1.0 if args.width is None else args.width
    settings = TeacherSettings.of(args.teacher, args={"num_classes": num_classes, "width": width},
                                  checkpoint=Path(args.checkpoint))
    return settings.build().to(device), {"task": "segmentation"}


def input_images(images: Path) -> list[Path]:
    """Every image below `images`, sorted; InputError naming the folder when it is missing or holds none."""
    require_dir(images, f"a folder of {suffix_list()} images")
    found = find_images(images)
    if not found:
        raise InputError(f"{images}: no images found; expected {suffix_list()} files below it")
    return found


def output_paths(images: Path, out: Path) -> list[tuple[Path, Path]]:
    """`(input, output PNG)` per image below `images`, sorted; refuses an `out` that could overwrite an input."""
    inputs = input_images(images)
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
def predict_label_ids(model: nn.Module, image: Image.Image, settings: EvalSettings, device: torch.device,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """labelIds (H, W) uint8 of one RGB image: argmax of the trainId logits, mapped to the official labelIds."""
    batch = normalize(image, tuple(mean), tuple(std)).unsqueeze(0).to(device)
    with autocast(device):
        logits = infer_logits(model, batch, settings)
    return _TO_LABEL_ID[logits[0].argmax(0).cpu()].numpy()


def predict_folder(
    model: nn.Module, pairs: Sequence[tuple[Path, Path]], settings: EvalSettings, device: torch.device,
    log: Callable[[str], None] = print, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> float:
    """Write one labelIds PNG per `(input, output)` pair (see `output_paths`), logging progress; returns images/s."""
    total = len(pairs)
    every = max(1, math.ceil(total / 10))
    start = time.perf_counter()
    for done, (source, target) in enumerate(pairs, start=1):
        write_png(predict_label_ids(model, open_rgb(source), settings, device, mean, std), target)
        if done % every == 0 or done == total:
            log(f"{done}/{total}")
    return total / max(time.perf_counter() - start, 1e-9)


def classification_transform(meta: Mapping[str, Any], source: str) -> Callable[[Image.Image], torch.Tensor]:
    """The eval transform the student file records (see the module docstring for the fallback)."""
    pre = meta.get("preprocess")
    if pre is None:
        size = meta.get("input_size")
        if size is None:
            raise InputError(f"{source}: the student file records neither preprocess nor input_size; "
                             "expected a student file written by search/retrain.py")
        pre = {"image_size": int(size[0])}
    return classification_eval_transforms(int(pre["image_size"]), pre.get("eval_resize"),
                                          tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD)))


@torch.inference_mode()
def classify_folder(
    model: nn.Module, images: Path, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
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
            logits = read_logits(model(inputs)).float()
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.predict", description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--student", help="a student file written by save_student (search/retrain.py)")
    model.add_argument("--teacher", help="a segmentation teacher arch of the zoo; needs --checkpoint")
    parser.add_argument("--checkpoint", help="the teacher's weights (with --teacher)")
    parser.add_argument("--num-classes", type=int, help="teacher classes (default 19)")
    parser.add_argument("--width", type=float, help="teacher channel width (default 1.0)")
    parser.add_argument("--images", required=True, help="folder of images, searched recursively")
    parser.add_argument("--out", required=True, help="output folder: predictions.csv, or labelIds PNGs (outside --images)")
    parser.add_argument("--batch", type=int, default=32, help="classifier: images per forward pass (default 32)")
    parser.add_argument("--sliding", action="store_true", help="segmenter: sliding-window inference instead of whole-image")
    parser.add_argument("--crop", type=int, default=1024, help="segmenter: sliding-window tile size in px (default 1024)")
    parser.add_argument("--flip", action="store_true", help="segmenter: average with the horizontally flipped image")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.teacher is not None and args.checkpoint is None:
        parser.error("--teacher needs --checkpoint")
    if args.student is not None and (args.checkpoint, args.num_classes, args.width) != (None, None, None):
        parser.error("--checkpoint, --num-classes and --width go with --teacher, not --student")
    if args.crop < 1:
        raise InputError(f"--crop {args.crop}: expected a tile size of at least 1 px")
    if args.batch < 1:
        raise InputError(f"--batch {args.batch}: expected at least 1 image per forward pass")
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; expected --device cpu or auto")
    images, out = Path(args.images), Path(args.out)
    log = lambda line: print(line, flush=True)  # noqa: E731
    paths = input_images(images)
    model, meta = load_model(args, device)
    if meta["task"] == "classification":
        transform = classification_transform(meta, args.student)
        started = time.perf_counter()
        rows = classify_folder(model, images, paths, transform, meta.get("classes"), device, args.batch, log)
        write_csv(rows, out / CSV_NAME)
        rate = len(rows) / max(time.perf_counter() - started, 1e-9)
        print(f"wrote {len(rows)} predictions to {out / CSV_NAME} ({rate:.2f} images/s)")
        return 0
    pairs = output_paths(images, out)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pre = meta.get("preprocess") or {}
    settings = EvalSettings(mode="sliding" if args.sliding else "whole", crop=args.crop, flip=args.flip)
    rate = predict_folder(model, pairs, settings, device, log, pre.get("mean", IMAGENET_MEAN), pre.get("std", IMAGENET_STD))
    print(f"wrote {len(pairs)} labelIds PNGs to {args.out} ({rate:.2f} images/s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
