"""Train (supervised) or evaluate a space's teacher: `python search/teacher.py --space FILE [--evaluate]`."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

import torch

from data.errors import InputError, run_cli
from search.space import load_space
from trainable.config import pick_device
from trainable.evaluate import evaluate
from trainable.loaders import val_loader
from trainable.supervised import train_supervised
from trainable.checkpoint import save_atomic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="search/teacher.py", description=__doc__)
    parser.add_argument("--space", required=True, help="space file whose teacher to train or evaluate")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate teacher.checkpoint on the val split")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    space = load_space(args.space)
    device = pick_device(args.device)
    t = space.teacher
    if args.evaluate:
        teacher = t.build().to(device)
        result = evaluate(teacher, val_loader(space.data), space.data.eval, t.num_classes, device)
        print(json.dumps({"checkpoint": str(t.checkpoint), **result.to_json()}, indent=2))
        return 0
    if space.teacher_training is None:
        raise InputError(f"{space.path}: teacher.train: missing section (this space's teacher comes from a checkpoint)")
    training = space.teacher_training
    torch.manual_seed(space.search.seed)  # the initial weights: the demo's teacher is the same on every machine run
    teacher = t.build(load=False).train().requires_grad_(True)
    print(f"training {t.arch} (width {t.width}) for {training.epochs} epochs on {space.data.root}", flush=True)
    miou = train_supervised(
        teacher, space.data, training.epochs, training.lr, training.batch_size, t.num_classes, device,
        seed=space.search.seed, log=lambda line: print(line, flush=True),
    )
    save_atomic(teacher.cpu().state_dict(), t.checkpoint)
    t.checkpoint.with_suffix(".json").write_text(json.dumps({"arch": t.arch, **t.arch_args, "miou": miou}, indent=2))
    print(f"teacher written to {t.checkpoint} (val mIoU {miou:.4f})")
    return 0


if __name__ == "__main__":
    run_cli(main)
