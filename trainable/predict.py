"""Segment every image below a folder and write Cityscapes submission PNGs (labelIds, one channel, uint8).

python -m trainable.predict (--student FILE | --teacher ARCH --checkpoint FILE [--num-classes C] [--width W])
    --images DIR --out DIR [--sliding] [--crop N] [--flip] [--device auto|cpu|cuda]

Each `<images>/<rel>/<name>.<ext>` becomes `<out>/<rel>/<name>.png`, which
`python -m trainable.evaluate --pred-dir OUT --gt-dir G` scores.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from data.errors import InputError, run_cli
from data.folder import find_images, open_rgb, require_dir
from data.labels import NUM_CLASSES, train_to_label_lut
from data.transforms import normalize
from trainable.config import TeacherSettings, pick_device
from trainable.evaluate import infer_logits
from data.settings import EvalSettings
from trainable.models import info
from trainable.surgery import load_student

_TO_LABEL_ID = torch.from_numpy(train_to_label_lut())


def _require_segmentation(arch: str, num_classes: int, source: str) -> None:
    if info(arch).task != "segmentation":
        raise InputError(f"{source}: arch {arch!r} is a {info(arch).task} model; expected a segmentation arch")
    if num_classes != NUM_CLASSES:
        raise InputError(
            f"{source}: num_classes is {num_classes}; the Cityscapes labelIds format expects {NUM_CLASSES}"
        )


def load_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The student file, or the teacher arch with its checkpoint, on `device` in eval mode."""
    if args.student is not None:
        model, meta = load_student(args.student, map_location=device)
        _require_segmentation(meta["arch"], int(meta["arch_args"].get("num_classes", NUM_CLASSES)), args.student)
        return model.eval()
    num_classes = NUM_CLASSES if args.num_classes is None else args.num_classes
    _require_segmentation(args.teacher, num_classes, f"--teacher {args.teacher}")
    settings = TeacherSettings(args.teacher, num_classes=num_classes, width=1.0 if args.width is None else args.width,
                               checkpoint=Path(args.checkpoint))
    return settings.build().to(device)


def output_paths(images: Path, out: Path) -> list[tuple[Path, Path]]:
    """`(input, output)` per image below `images`, sorted; refuses an `out` that could overwrite an input."""
    require_dir(images, "a folder of .png/.jpg/.jpeg images")
    images_abs, out_abs = images.resolve(), out.resolve()
    if out_abs == images_abs or images_abs in out_abs.parents:
        raise InputError(f"--out {out}: inside the image folder {images}; expected a folder outside it")
    inputs = find_images(images)
    if not inputs:
        raise InputError(f"{images}: no images found; expected .png, .jpg or .jpeg files below it")
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
    """Save a uint8 (H, W) array as a one-channel PNG: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(label_ids).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@torch.inference_mode()
def predict_label_ids(model: nn.Module, image: Image.Image, settings: EvalSettings, device: torch.device) -> np.ndarray:
    """labelIds (H, W) uint8 of one RGB image: argmax of the trainId logits, mapped to the official labelIds."""
    batch = normalize(image).unsqueeze(0).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        logits = infer_logits(model, batch, settings)
    return _TO_LABEL_ID[logits[0].argmax(0).cpu()].numpy()


def predict_folder(
    model: nn.Module, pairs: Sequence[tuple[Path, Path]], settings: EvalSettings, device: torch.device,
    log: Callable[[str], None] = print,
) -> float:
    """Write one labelIds PNG per `(input, output)` pair (see `output_paths`), logging progress; returns images/s."""
    total = len(pairs)
    every = max(1, math.ceil(total / 10))
    start = time.perf_counter()
    for done, (source, target) in enumerate(pairs, start=1):
        write_png(predict_label_ids(model, open_rgb(source), settings, device), target)
        if done % every == 0 or done == total:
            log(f"{done}/{total}")
    return total / max(time.perf_counter() - start, 1e-9)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.predict", description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--student", help="a student file written by save_student (search/retrain.py)")
    model.add_argument("--teacher", help="a teacher arch of the zoo; needs --checkpoint")
    parser.add_argument("--checkpoint", help="the teacher's weights (with --teacher)")
    parser.add_argument("--num-classes", type=int, help="teacher classes (default 19)")
    parser.add_argument("--width", type=float, help="teacher channel width (default 1.0)")
    parser.add_argument("--images", required=True, help="folder of images, searched recursively")
    parser.add_argument("--out", required=True, help="output folder for the labelIds PNGs (outside --images)")
    parser.add_argument("--sliding", action="store_true", help="sliding-window inference instead of whole-image")
    parser.add_argument("--crop", type=int, default=1024, help="sliding-window tile size in px (default 1024)")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
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
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; expected --device cpu or auto")
    pairs = output_paths(Path(args.images), Path(args.out))
    model = load_model(args, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    settings = EvalSettings(mode="sliding" if args.sliding else "whole", crop=args.crop, flip=args.flip)
    rate = predict_folder(model, pairs, settings, device, log=lambda line: print(line, flush=True))
    print(f"wrote {len(pairs)} labelIds PNGs to {args.out} ({rate:.2f} images/s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
