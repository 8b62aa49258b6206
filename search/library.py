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
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader

from data.errors import InputError, run_cli
from data.names import KEEP, PLUGS_FILE
from search.choices import PolicyChoices, resolve_choices
from search.space import Space, load_space
from trainable.config import DEVICE_HELP, pick_device
from trainable.inventory import output_classes
from trainable.library import PlugBuild, PlugCache, plugs_table, policy_plugs, train_plugs
from trainable.loaders import kept_in_memory, same_shape_batches, train_loader, unlabeled_set, val_loader


# The column of the plug table whose sum over a policy's plugs predicts its drop: of the solo measures it ranked
# the drops of distilled students best (benchmarks/recovery.py; README).
PREDICTOR = "solo_drop"
SCORING_CACHE_BYTES = 1 << 30  # val images decoded once for the scoring (one pass per plug) when they fit in this


@dataclass(frozen=True)
class Library:
    """A built library: where its plugs are and the per-(layer, op) table."""

    cache: PlugCache
    table: pd.DataFrame
    seconds: float  # what this build took (training and scoring what the cache lacked)
    build: PlugBuild  # what its training did (no plug trained when the cache had them all)

    @property
    def table_path(self) -> Path:
        return self.cache.folder / PLUGS_FILE

    def drops(self) -> dict[tuple[str, str], float]:
        """Per (layer, op), the additive predictor's term in the metric's units: the `PREDICTOR` column times its
        least-squares fit (through 0) to the solo drops, so that its ranking is the predictor's."""
        values = self.table[PREDICTOR].to_numpy(float)
        fit = float(values @ self.table["solo_drop"].to_numpy(float)) / max(float(values @ values), 1e-12)
        scale = fit if fit > 0 else 1.0
        return {(row.layer, row.op): scale * value for row, value in zip(self.table.itertuples(), values)}


def layer_ops(choices: PolicyChoices) -> dict[str, list[str]]:
    """Every op (but keep) each layer of the space can take."""
    return {layer: [op for op in choice.ops if op != KEEP] for choice in choices.choices for layer in choice.layers}


def library_images(space: Space) -> Callable[[], DataLoader]:
    """The unlabeled images the library trains on: each call, one epoch in a new order."""
    data = replace(space.data, batch_size=space.library.batch_size)
    unlabeled = unlabeled_set(data)
    epoch = iter(range(1 << 30))
    return lambda: train_loader(unlabeled, data, space.distill.seed * 7919 + next(epoch))


def require_library(space: Space) -> None:
    """InputError of one line for a space without a library section."""
    if space.library is None:
        raise InputError(f"{space.path}: library: missing section; expected {{epochs, lr, batch_size, cache}}")


def plug_cache(space: Space, teacher: torch.nn.Module) -> PlugCache:
    """The space's plug library: its teacher's plugs trained on its unlabeled folders with its library settings."""
    require_library(space)
    return PlugCache.of(teacher, [str(space.data.root / folder) for folder in space.data.unlabeled], space.library)


def train_library(space: Space, teacher: torch.nn.Module, wanted: Mapping[str, Sequence[str]], device: torch.device,
                  progress: bool = True) -> tuple[PlugCache, PlugBuild]:
    """Train the plugs of `wanted` (`{layer: [op, ...]}`) that the space's library lacks."""
    cache = plug_cache(space, teacher)
    return cache, train_plugs(teacher, wanted, library_images(space), space.library, device, cache, progress=progress)


def start_plugs(space: Space, teacher: torch.nn.Module, policy: Mapping[str, str],
                device: torch.device) -> dict[str, dict[str, torch.Tensor]] | None:
    """The trained plugs a run of `policy` starts from under `distill.init: library` (built as a search builds
    them), or None under `scratch`; a space without a library section cannot start from it."""
    if space.distill.init != "library":
        return None
    if space.library is None:
        raise InputError(f"{space.path}: distill.init: expected scratch for a space without a library section (give "
                         "one, e.g. library: {epochs: 2}, to start from trained plugs), got library")
    cache, _ = train_library(space, teacher, {layer: [op] for layer, op in policy.items()}, device)
    return policy_plugs(cache, teacher, policy)


def build_library(space: Space, teacher: torch.nn.Module, choices: PolicyChoices, device: torch.device,
                  progress: bool = True) -> Library:
    """Train what the library lacks, score what its table lacks; returns the library."""
    started = time.monotonic()
    wanted = layer_ops(choices)
    cache, build = train_library(space, teacher, wanted, device, progress)
    task = space.task
    val = val_loader(space.data, task.eval_batch_size(space.data))
    classes = output_classes(teacher, space.input_size)
    score = space.search.score
    val_batches = kept_in_memory(lambda: same_shape_batches(val, space.library.batch_size), SCORING_CACHE_BYTES)

    def score_fn(model: torch.nn.Module) -> float:
        return task.evaluate(model, val_batches(), space.data, classes, device)[score]

    table = plugs_table(teacher, wanted, lambda: (images for images, _ in val_batches()), score_fn, task.logits, device,
                        cache)
    seconds = time.monotonic() - started
    print(f"plug library: {len(table)} plugs in {cache.folder} ({seconds:.1f}s)", flush=True)
    return Library(cache, table, seconds, build)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search/library.py", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, type=Path, help="space file with a library section")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    space = load_space(args.space)
    require_library(space)
    if not space.teacher.checkpoint.is_file():
        raise InputError(f"{space.path}: teacher.checkpoint: file {space.teacher.checkpoint} not found")
    library = build_library(space, space.teacher.build(), resolve_choices(space), pick_device(args.device))
    shown = library.table.sort_values("solo_drop").to_string(index=False, columns=["layer", "op", "params", "local_error", "solo_drop"])
    print(shown)
    print(f"table: {library.table_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
