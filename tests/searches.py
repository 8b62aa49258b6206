"""Tiny searches: the inputs (synthetic Cityscapes, a random narrow teacher), the tiny space over them, space files,
and the search command as a subprocess runs it."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from data.synthetic import generate
from trainable import models

ROOT = Path(__file__).resolve().parents[1]
TINY_WIDTH = 0.0625  # the teacher's width: DeepWV3Plus at 1/16
TINY_SIZE = (32, 64)  # the synthetic scenes' size, and the space's crop
TINY_EPOCHS = 3


def random_teacher(path: Path) -> Path:
    """A random DeepWV3Plus of width 1/16 (seed 0, 19 classes): its state_dict saved at `path`, which is returned."""
    torch.manual_seed(0)
    torch.save(models.build("deepwv3plus", width=TINY_WIDTH).state_dict(), path)
    return path


def tiny_inputs(folder: Path, extra: int = 16) -> Path:
    """Synthetic Cityscapes in folder/data (4 train, 4 val and `extra` unlabeled 32x64 scenes) and the random teacher
    in folder/teacher.pt, whose path is returned."""
    generate(folder / "data", train=4, val=4, size=TINY_SIZE, seed=1, extra=extra)
    return random_teacher(folder / "teacher.pt")


def tiny_space(data_root: Path, teacher: Path, **search) -> dict:
    """The tiny search space: 2 groups over 10 convs of the narrow teacher, 3 epochs of 2 steps, TPE and ASHA over
    8 samples, 2 trials at a time; `search` changes or adds fields of its `search` section. Its teacher has random
    weights, whose BatchNorm running statistics describe nothing: the plugs alone train and the student keeps the
    teacher's statistics (a student normalising with its batch statistics would not resemble such a teacher)."""
    return {
        "teacher": {"arch": "deepwv3plus", "num_classes": 19, "width": TINY_WIDTH, "checkpoint": str(teacher)},
        "data": {"dataset": "cityscapes", "root": str(data_root), "unlabeled": ["leftImg8bit/train_extra"],
                 "val": "val", "crop": list(TINY_SIZE), "scale": [1.0, 1.0], "batch_size": 4, "eval": "whole"},
        "policy": {
            "budget": {"max_param_ratio": 0.75},
            "groups": [
                {"layers": ["mod7.*.convs.conv2", "aspp.features.[123].0"], "ops": ["keep", "dws"]},
                {"layers": ["mod5.*.convs.conv[12]"], "ops": ["keep", "dws", "group2"]},
            ],
        },
        "distill": {"epochs": TINY_EPOCHS, "steps_per_epoch": 2, "w_hint": {"loguniform": [0.1, 10], "default": 1},
                    "lr": {"loguniform": [1e-3, 1e-2], "default": 3e-3}, "train": "plugged", "bn": "frozen"},
        "search": {"num_samples": 8, "searcher": "tpe",
                   "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}}, "resources": {"cpu": 1, "gpu": 0},
                   "max_concurrent": 2, "seed": 0, "retrain_epochs": 1, **search},
    }


def space_with(source: Path, **changes: dict) -> dict:
    """A space file's content, some fields of its sections changed (`section={field: value}`)."""
    raw = yaml.safe_load(source.read_text())
    for section, fields in changes.items():
        raw[section].update(fields)
    return raw


def write_space(folder: Path, content: dict | str, name: str = "space.yaml", sort_keys: bool = False) -> Path:
    """A space file folder/name: `content` as it is when text, else dumped as YAML (its keys in the order given,
    unless `sort_keys`); returns its path."""
    path = folder / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=sort_keys))
    return path


def search_command(*args: str | Path) -> list[str]:
    """`python search/run.py ARGS`, for a subprocess."""
    return [sys.executable, str(ROOT / "search" / "run.py"), *map(str, args)]
