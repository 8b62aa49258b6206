"""The reference facts of the zoo's teachers (shared/reference/deepwv3plus.md, gscnn.md): their key lists, the
deterministic weight fill of their check values, and checkpoint files shaped like the authors' own."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEEPWV3PLUS_KEYS = FIXTURES / "deepwv3plus_keys.tsv"  # copies of shared/reference
GSCNN_KEYS = FIXTURES / "gscnn_keys.tsv"


def reference_keys(tsv: Path) -> list[tuple[str, tuple[int, ...]]]:
    """A reference key list: (state_dict key, shape) per line, `-` for a scalar, `#` lines are comments."""
    rows = []
    for line in tsv.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        rows.append((key, () if shape == "-" else tuple(int(x) for x in shape.split(","))))
    return rows


def deterministic_state(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The weight fill of deepwv3plus.md §11B (and gscnn.md §14B) over (key, shape) pairs, in their order: entry i
    drawn from a generator seeded i; conv weights scaled by 1/sqrt(fan-in), BatchNorm statistics and biases near their
    usual values, num_batches_tracked zero."""
    state = {}
    for i, (key, shape) in enumerate(shapes):
        gen = torch.Generator().manual_seed(i)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(shape[1] * shape[2] * shape[3])
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(("running_mean", ".bias")):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
    return state


def write_nvidia_file(path: Path, model: torch.nn.Module, drop_counters: bool, optimizer: dict, command: str) -> None:
    """A checkpoint shaped like the authors' (NVIDIA's cityscapes_best.pth, nv-tlabs' best_cityscapes_checkpoint.pth):
    legacy serialisation, `module.` keys (without the BatchNorm counters when `drop_counters`), a numpy mean_iu.

    The layout is from the references (read from the authors' training code, not from their files); epoch and
    mean_iu are made-up values of the right types, as are the `optimizer` and `command` each test gives.
    """
    state = {f"module.{k}": v for k, v in model.state_dict().items()
             if not (drop_counters and k.endswith("num_batches_tracked"))}
    payload = {"state_dict": state, "optimizer": optimizer, "epoch": 174, "mean_iu": np.float64(0.8123),
               "command": command}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
