"""Predict every image below a folder: a classifier writes predictions.csv, a segmenter Cityscapes labelIds PNGs.

python -m trainable.predict (--student FILE | --teacher ARCH --checkpoint FILE [--num-classes C] [--width W])
    --images DIR --out DIR [--batch N] [--sliding] [--crop N] [--flip] [--device auto|cpu|cuda]

The student file says its task, and the task writes the predictions (`Task.write_predictions`). A classifier
writes `<out>/predictions.csv`, one row `path,class,score` per image: `path` relative to `--images` (with `/`),
`class` the class name the student file records (the val split's class folders; the class index when it records
none), `score` its softmax probability. Images are read with the eval transform the file records (`image_size`,
`eval_resize`, `mean`, `std` of the space's data; without one: a resize to the file's input size and ImageNet's
mean and std). `python -m trainable.evaluate --pred-csv OUT/predictions.csv --val-dir VAL` scores it.
A segmenter turns each `<images>/<rel>/<name>.<ext>` into `<out>/<rel>/<name>.png` (labelIds, one
channel, uint8), which `python -m trainable.evaluate --pred-dir OUT --gt-dir G` scores; `--teacher`
is for segmentation archs of the zoo.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from data.errors import InputError, run_cli
from data.folder import find_images, require_dir, suffix_list
from data.labels import NUM_CLASSES
from data.settings import EvalSettings
from trainable import tasks
from trainable.config import TeacherSettings, pick_device
from trainable.models import info, is_zoo
from trainable.surgery import load_student


def _task_of(name: str | None, source: str) -> tasks.Task:
    if name not in tasks.names():
        raise InputError(f"{source}: the student file records task {name!r}; expected {' or '.join(tasks.names())}")
    return tasks.get(name)


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, dict[str, Any], tasks.Task]:
    """The student file (its metadata, its task), or the zoo teacher with its checkpoint, on `device` in eval mode;
    InputError when its task cannot write predictions of it."""
    if args.student is not None:
        model, meta = load_student(args.student, map_location=device)
        if meta.get("task") is None and is_zoo(meta["arch"]):  # a file written before students recorded their task
            meta["task"] = info(meta["arch"]).task
        task = _task_of(meta.get("task"), args.student)
        task.check_predictable(meta, args.student)
        return model.eval(), meta, task
    source = f"--teacher {args.teacher}"
    arch_args = {"num_classes": NUM_CLASSES if args.num_classes is None else args.num_classes,
                 "width": 1.0 if args.width is None else args.width}
    meta = {"task": info(args.teacher).task, "arch_args": arch_args}
    task = tasks.get(meta["task"])
    task.check_predictable(meta, source)
    settings = TeacherSettings.of(args.teacher, args=arch_args, checkpoint=Path(args.checkpoint))
    return settings.build().to(device), meta, task


def input_images(images: Path) -> list[Path]:
    """Every image below `images`, sorted; InputError naming the folder when it is missing or holds none."""
    require_dir(images, f"a folder of {suffix_list()} images")
    found = find_images(images)
    if not found:
        raise InputError(f"{images}: no images found; expected {suffix_list()} files below it")
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.predict", description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--student", help="a student file written by save_student (search/retrain.py)")
    model.add_argument("--teacher", help="a segmentation teacher arch of the zoo; needs --checkpoint")
    parser.add_argument("--checkpoint", help="the teacher's weights (with --teacher)")
    parser.add_argument("--num-classes", type=int, help=f"teacher classes (default {NUM_CLASSES})")
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
    images, out = Path(args.images), Path(args.out)
    paths = input_images(images)
    model, meta, task = load_model(args, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    options = tasks.PredictOptions(args.batch, EvalSettings(mode="sliding" if args.sliding else "whole", crop=args.crop,
                                                            flip=args.flip))
    started = time.perf_counter()
    written = task.write_predictions(model, meta, images, paths, out, options, device, lambda line: print(line, flush=True))
    print(f"wrote {written} ({len(paths) / max(time.perf_counter() - started, 1e-9):.2f} images/s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
