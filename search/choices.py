"""The policy part of a space resolved against the teacher's convs."""
from __future__ import annotations

import torch
from torch import nn

from data.errors import InputError
from search.space import Space
from trainable import models
from trainable.choices import Choice, PolicyChoices
from trainable.inventory import convs, count_params, select, unmatched_patterns
from trainable.ops import check_op, op_params


def meta_teacher(space: Space) -> nn.Module:
    """The space's teacher structure on the meta device: instant at any width, no weights read."""
    with torch.device("meta"):
        return models.build(space.teacher.arch, **space.teacher.arch_args)


def resolve_choices(space: Space, teacher: nn.Module | None = None) -> PolicyChoices:
    """Check every layer pattern and op of the space against the teacher; InputError naming file and field."""
    teacher = teacher if teacher is not None else meta_teacher(space)
    named = convs(teacher)
    owner: dict[str, int] = {}
    choices: list[Choice] = []
    table: dict[str, dict[str, int]] = {}
    for i, group in enumerate(space.policy.groups):
        field = f"{space.path}: policy.groups[{i}]"
        missing = unmatched_patterns(named, group.layers)
        if missing:
            raise InputError(
                f"{field}.layers: expected glob patterns that each select a conv of {space.teacher.arch} "
                f"(python -m trainable.inspect --teacher {space.teacher.arch} lists them), got {missing[0]!r}, which selects none"
            )
        layers = select(named, group.layers)
        for layer in layers:
            if layer in owner:
                raise InputError(
                    f"{field}.layers: expected each layer in one group only, got {layer}, "
                    f"which policy.groups[{owner[layer]}] selects too"
                )
            owner[layer] = i
            table[layer] = {"keep": op_params(named[layer], "keep")}
            for op in group.ops:
                if op == "keep":
                    continue
                try:
                    check_op(named[layer], op)
                except InputError as err:
                    raise InputError(
                        f"{field}.ops: expected ops that fit every selected layer, got {err} (layer {layer})"
                    ) from None
                table[layer][op] = op_params(named[layer], op)
        if group.per_layer:
            choices += [Choice(layer, (layer,), group.ops) for layer in layers]
        else:
            choices.append(Choice(f"group{i}", tuple(layers), group.ops))
    teacher_params = count_params(teacher)
    limits = [
        int(space.policy.max_param_ratio * teacher_params) if space.policy.max_param_ratio is not None else None,
        space.policy.max_params,
    ]
    limits = [x for x in limits if x is not None]
    result = PolicyChoices(tuple(choices), teacher_params, table, min(limits) if limits else None)
    cheapest = result.policy({c.key: min(c.ops, key=lambda op: sum(table[layer][op] for layer in c.layers)) for c in choices})
    if not result.feasible(cheapest):
        least = result.params(cheapest)
        raise InputError(
            f"{space.path}: policy.budget: expected a budget the cheapest policy meets ({least:,} params, "
            f"{least / teacher_params:.3f} of the teacher), got {result.max_params:,} params"
        )
    return result
