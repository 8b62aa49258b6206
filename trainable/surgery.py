"""Policy surgery: a student is the teacher with some convs replaced by cheap ops, `{layer: op}`."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from data.errors import InputError
from trainable.checkpoint import read_file, save_atomic
from trainable.inventory import convs
from trainable.models import build
from trainable.ops import check_op, make_op

_STUDENT_KEYS = ("arch", "arch_args", "policy", "state_dict")


def plugged_layers(policy: Mapping[str, str]) -> list[str]:
    """The layers a policy replaces (every entry but `keep`), in policy order."""
    return [layer for layer, op in policy.items() if op != "keep"]


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
    path: str | Path, student: nn.Module, arch: str, arch_args: dict[str, Any], policy: Mapping[str, str]
) -> None:
    """Write a whole student (it rebuilds alone from the zoo) atomically."""
    save_atomic({"arch": arch, "arch_args": dict(arch_args), "policy": dict(policy), "state_dict": student.state_dict()}, path)


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved student in eval mode; returns it and its metadata {arch, arch_args, policy}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: student file not found")
    payload = read_file(path)
    if not isinstance(payload, dict) or any(key not in payload for key in _STUDENT_KEYS):
        raise InputError(f"{path}: not a student file, expected the keys {', '.join(_STUDENT_KEYS)}")
    meta = {key: payload[key] for key in _STUDENT_KEYS[:3]}
    try:
        student = apply_policy(build(meta["arch"], **meta["arch_args"]), meta["policy"])
        student.load_state_dict(payload["state_dict"], strict=True)
    except (InputError, RuntimeError, TypeError) as err:
        raise InputError(f"{path}: student does not rebuild: {str(err).splitlines()[0]}") from None
    return student.to(map_location).eval(), meta
