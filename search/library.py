"""Build (or complete) a space's plug library: `python search/library.py --space FILE`.

Every (layer, op) the space can choose, except `keep`, is trained alone against the teacher's input
and output at that layer on the unlabeled images (trainable.library), cached by content under
`library.cache`, then scored: its local error on the val images and its solo score, the teacher's
metric with only that plug in. `search/run.py` runs the same build first when the space has a
`library` section; a second build over the same teacher and data trains nothing.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader

from data.errors import InputError, run_cli
from search.choices import PolicyChoices, resolve_choices
from search.space import Space, load_space
from trainable.config import pick_device
from trainable.inventory import output_classes
from trainable.library import TABLE_NAME, PlugCache, plugs_table, train_plugs
from trainable.loaders import kept_in_memory, same_shape_batches, train_loader, unlabeled_set, val_loader


SCORING_CACHE_BYTES = 1 << 30  # val images decoded once for the scoring (one pass per plug) when they fit in this


@dataclass(frozen=True)
class Library:
    """A built library: where its plugs are and the per-(layer, op) table."""

    cache: PlugCache
    table: pd.DataFrame
    seconds: float  # what this build took (training and scoring what the cache lacked)

    @property
    def table_path(self) -> Path:
        return self.cache.folder / TABLE_NAME

    def drops(self) -> dict[tuple[str, str], float]:
        """Solo drop per (layer, op): the additive predictor's terms."""
        return {(row.layer, row.op): float(row.solo_drop) for row in self.table.itertuples()}


def layer_ops(choices: PolicyChoices) -> dict[str, list[str]]:
    """Every op (but keep) each layer of the space can take."""
    return {layer: [op for op in choice.ops if op != "keep"] for choice in choices.choices for layer in choice.layers}


def library_images(space: Space) -> Callable[[], DataLoader]:
    """The unlabeled images the library trains on: each call, one epoch in a new order."""
    data = replace(space.data, batch_size=space.library.batch_size)
    unlabeled = unlabeled_set(data)
    epoch = iter(range(1 << 30))
    return lambda: train_loader(unlabeled, data, space.distill.seed * 7919 + next(epoch))


def build_library(space: Space, teacher: torch.nn.Module, choices: PolicyChoices, device: torch.device,
                  progress: bool = True) -> Library:
    """Train what the cache lacks, score what the table lacks; returns the library."""
    settings = space.library
    if settings is None:
        raise InputError(f"{space.path}: library: missing section; expected {{epochs, lr, batch_size, cache}}")
    names = [str(space.data.root / folder) for folder in space.data.unlabeled]
    cache = PlugCache.of(teacher, names, settings)
    wanted = layer_ops(choices)
    started = time.monotonic()
    train_plugs(teacher, wanted, library_images(space), settings, device, cache, progress=progress)
    task = space.task
    val = val_loader(space.data, task.eval_batch_size(space.data))
    classes = output_classes(teacher, space.input_size)
    score = space.search.score

    val_batches = kept_in_memory(lambda: same_shape_batches(val, settings.batch_size), SCORING_CACHE_BYTES)

    def score_fn(model: torch.nn.Module) -> float:
        return task.evaluate(model, val_batches(), space.data, classes, device)[score]

    table = plugs_table(teacher, wanted, lambda: (images for images, _ in val_batches()), score_fn, device, cache)
    seconds = time.monotonic() - started
    print(f"plug library: {len(table)} plugs in {cache.folder} ({seconds:.1f}s)", flush=True)
    return Library(cache, table, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="search/library.py", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, type=Path, help="space file with a library section")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    space = load_space(args.space)
    if space.library is None:
        raise InputError(f"{space.path}: library: missing section; expected {{epochs, lr, batch_size, cache}}")
    if not space.teacher.checkpoint.is_file():
        raise InputError(f"{space.path}: teacher.checkpoint: file {space.teacher.checkpoint} not found")
    library = build_library(space, space.teacher.build(), resolve_choices(space), pick_device(args.device))
    shown = library.table.sort_values("solo_drop").to_string(index=False, columns=["layer", "op", "params", "local_error", "solo_drop"])
    print(shown)
    print(f"table: {library.table_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
