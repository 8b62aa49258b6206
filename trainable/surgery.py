"""Policy surgery: a student is the teacher with some convs replaced by cheap ops, `{layer: op}`."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from data.errors import InputError
from data.names import KEEP
from trainable.checkpoint import read_file, save_atomic
from trainable.inventory import convs
from trainable.models import build, info, is_zoo, resolve
from trainable.ops import check_op, make_op

_STUDENT_KEYS = ("arch", "arch_args", "policy", "state_dict")


def plugged_layers(policy: Mapping[str, str]) -> list[str]:
    """The layers a policy replaces (every entry but `keep`), in policy order."""
    return [layer for layer, op in policy.items() if op != KEEP]


def read_policy(path: Path) -> dict[str, str]:
    """A policy file: a JSON object {layer: op} of strings."""
    try:
        policy = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a JSON policy file ({str(err).splitlines()[0]})") from None
    if not isinstance(policy, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in policy.items()):
        raise InputError(f"{path}: expected a JSON object mapping layer names to op names")
    return policy


def check_policy(teacher: nn.Module, policy: Mapping[str, str]) -> None:
    """InputError naming the layer and the op for the first entry that does not fit the teacher."""
    if not isinstance(policy, Mapping):
        raise InputError(f"policy must be a mapping {{layer: op}}, got {type(policy).__name__}")
    named = convs(teacher)
    for layer, op in policy.items():
        if layer not in named:
            raise InputError(f"policy layer {layer!r} (op {op!r}): not a Conv2d of the teacher")
        try:
            check_op(named[layer], op)
        except InputError as err:
            raise InputError(f"policy layer {layer!r}: {err}") from None


def apply_policy(teacher: nn.Module, policy: Mapping[str, str]) -> nn.Module:
    """A new student module: a deep copy of the teacher with each plugged conv replaced; the teacher is untouched."""
    check_policy(teacher, policy)
    student = copy.deepcopy(teacher)
    named = convs(student)
    for layer in plugged_layers(policy):
        parent_name, _, child = layer.rpartition(".")
        parent = student.get_submodule(parent_name)
        setattr(parent, child, make_op(named[layer], policy[layer]))
    return student


def save_student(
    path: str | Path, student: nn.Module, arch: str, arch_args: Mapping[str, Any], policy: Mapping[str, str], *,
    task: str | None = None, input_size: tuple[int, int] | None = None, search_path: Path | None = None,
    preprocess: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None,
) -> None:
    """Write a whole student atomically: it rebuilds alone, in any folder (see `load_student`).

    For a `module:callable` teacher the file records where the module was imported from, so that a
    fresh process elsewhere imports it again. `preprocess` (the eval transform's `image_size`,
    `eval_resize`, `mean`, `std`) and `classes` (class names in output order) are what
    `trainable.predict` needs to read a folder of images as the val split was read.
    """
    origin = None if is_zoo(arch) else asdict(resolve(arch, search_path)[1])
    save_atomic({
        "arch": arch, "arch_args": dict(arch_args), "policy": dict(policy), "state_dict": student.state_dict(),
        "task": task if task is not None else (info(arch).task if is_zoo(arch) else None),
        "origin": origin, "input_size": list(input_size) if input_size is not None else None,
        "preprocess": dict(preprocess) if preprocess is not None else None,
        "classes": list(classes) if classes is not None else None,
    }, path)


def _rebuild_teacher(path: Path, meta: Mapping[str, Any]) -> nn.Module:
    arch, origin = meta["arch"], meta.get("origin")
    if is_zoo(arch) or origin is None:
        return build(arch, **meta["arch_args"])
    root = Path(origin["root"]) if origin.get("root") else None
    try:
        return build(arch, root, **meta["arch_args"])
    except InputError as err:
        gone = origin.get("file") and not Path(origin["file"]).exists()
        where = f"{origin['file']}, which no longer exists" if gone else f"{origin.get('file') or 'an installed package'}"
        raise InputError(
            f"{path}: the student's teacher {arch} was imported from {where}; put the module back or on PYTHONPATH ({err})"
        ) from None


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved student in eval mode; returns it and its metadata (arch, arch_args, policy, task, ...)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: student file not found")
    payload = read_file(path)
    if not isinstance(payload, dict) or any(key not in payload for key in _STUDENT_KEYS):
        raise InputError(f"{path}: not a student file, expected the keys {', '.join(_STUDENT_KEYS)}")
    meta = {key: value for key, value in payload.items() if key != "state_dict"}
    teacher = _rebuild_teacher(path, meta)
    try:
        student = apply_policy(teacher, meta["policy"])
        student.load_state_dict(payload["state_dict"], strict=True)
    except (InputError, RuntimeError, TypeError) as err:
        raise InputError(f"{path}: student does not rebuild: {str(err).splitlines()[0]}") from None
    return student.to(map_location).eval(), meta
