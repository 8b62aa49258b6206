"""Train (supervised) or evaluate a space's teacher: `python search/teacher.py --space FILE [--evaluate]`.

Training builds the space's teacher (a zoo arch or module:callable) and trains it on the labeled `train`
split of any dataset kind; `--evaluate` prints the
teacher's val metrics as JSON (classification: top1, top5, images; segmentation: miou, per-class IoU).
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

import torch

from data.errors import InputError, run_cli
from data.kinds import kind
from search.space import Space, load_space
from data.files import write_text_atomic
from trainable.checkpoint import save_atomic
from trainable.config import DEVICE_HELP, pick_device
from trainable.inventory import output_classes
from trainable.loaders import val_loader
from trainable.supervised import train_supervised


def check_classes(space: Space) -> int:
    """The classes the teacher outputs; InputError naming the val folder when the val split holds another count."""
    outputs = output_classes(space.teacher.structure(), space.input_size)
    expected = kind(space.data.dataset).num_classes(space.data)
    if expected is not None and expected != outputs:
        raise InputError(
            f"{space.path}: data.val: expected as many classes as the teacher outputs ({outputs}), "
            f"got {expected} class folders in {space.data.root / str(space.data.val)}"
        )
    return outputs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search/teacher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="space file whose teacher to train or evaluate")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate teacher.checkpoint on the val split")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    space = load_space(args.space)
    device = pick_device(args.device)
    t, task = space.teacher, space.task
    classes = check_classes(space)
    if args.evaluate:
        if not t.checkpoint.is_file():
            raise InputError(f"{space.path}: teacher.checkpoint: file {t.checkpoint} not found")
        teacher = t.build().to(device)
        loader = val_loader(space.data, task.eval_batch_size(space.data))
        result = task.evaluate(teacher, loader, space.data, classes, device)
        print(json.dumps({"checkpoint": str(t.checkpoint), **result.to_json()}, indent=2))
        return 0
    if space.teacher.train is None:
        raise InputError(f"{space.path}: teacher.train: missing section (this space's teacher comes from a checkpoint)")
    training = space.teacher.train
    torch.manual_seed(space.search.seed)  # the initial weights: the demo's teacher is the same on every machine run
    teacher = t.build(load=False).train().requires_grad_(True)
    print(f"training {t.arch} {t.arch_args} for {training.epochs} epochs on {space.data.root}", flush=True)
    scores = train_supervised(
        teacher, task, space.data, training.epochs, training.lr, training.batch_size, classes, device,
        seed=space.search.seed, log=lambda line: print(line, flush=True),
    )
    save_atomic(teacher.cpu().state_dict(), t.checkpoint)
    write_text_atomic(t.checkpoint.with_suffix(".json"), json.dumps({"arch": t.arch, **t.arch_args, **scores}, indent=2))
    shown = ", ".join(f"val {name} {value:.4f}" for name, value in scores.items())
    print(f"teacher written to {t.checkpoint} ({shown})")
    return 0


if __name__ == "__main__":
    run_cli(main)
