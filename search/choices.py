"""A search's policy choices resolved against the teacher's convs: one categorical per layer or group,
and each policy's parameter count (and, with a latency table, its predicted latency) without building it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from data.errors import InputError
from search import proposals
from search.space import Space
from trainable.inventory import convs, count_params, select, unmatched_patterns
from trainable.latency import predicted_latency
from trainable.ops import check_op, op_params


@dataclass(frozen=True)
class Choice:
    """One categorical of the search: its key (Optuna name `policy/<key>`), the layers it sets, its ops."""

    key: str
    layers: tuple[str, ...]
    ops: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"policy/{self.key}"


@dataclass(frozen=True)
class PolicyChoices:
    choices: tuple[Choice, ...]
    teacher_params: int
    layer_params: dict[str, dict[str, int]]
    max_params: int | None
    # Per-(layer, op) latency in ms (each plug timed alone), the teacher's latency, and the budget.
    layer_latency: dict[str, dict[str, float]] = field(default_factory=dict)
    teacher_latency_ms: float | None = None
    max_latency_ms: float | None = None
    # Per-(layer, op) solo drop of the task's metric, from the plug library: the additive predictor.
    layer_drop: dict[tuple[str, str], float] = field(default_factory=dict)

    def policy(self, picks: Mapping[str, str]) -> dict[str, str]:
        """`{layer: op}` from `{choice key: op}`."""
        return {layer: picks[c.key] for c in self.choices for layer in c.layers}

    def params(self, policy: Mapping[str, str]) -> int:
        """Student parameters, from the per-layer table."""
        return self.teacher_params + sum(
            self.layer_params[layer][op] - self.layer_params[layer]["keep"] for layer, op in policy.items()
        )

    def latency_ms(self, policy: Mapping[str, str]) -> float | None:
        """The teacher's latency plus each plug's change of its layer's latency; None without a table."""
        if self.teacher_latency_ms is None or not self.layer_latency:
            return None
        return predicted_latency(self.layer_latency, self.teacher_latency_ms, policy)

    def feasible(self, policy: Mapping[str, str]) -> bool:
        if self.max_params is not None and self.params(policy) > self.max_params:
            return False
        latency = self.latency_ms(policy)
        return self.max_latency_ms is None or latency is None or latency <= self.max_latency_ms

    def feasible_picks(self, picks: Mapping[str, str]) -> bool:
        return self.feasible(self.policy(picks))

    def cost(self, key: str, op: str) -> int:
        """Parameters a choice's op adds (negative: saves) against keeping its layers."""
        choice = next(c for c in self.choices if c.key == key)
        return sum(self.layer_params[layer][op] - self.layer_params[layer]["keep"] for layer in choice.layers)

    def predicted_drop(self, policy: Mapping[str, str]) -> float | None:
        """The sum of the plugged layers' solo drops; None without a plug library."""
        if not self.layer_drop:
            return None
        return sum(self.layer_drop[(layer, op)] for layer, op in policy.items() if op != "keep")

    def _tables(self) -> tuple[list[tuple[str, tuple[str, ...]]], dict, dict]:
        """The solver's view: choices, params delta and predicted drop per (choice, op)."""
        keyed = [(c.key, c.ops) for c in self.choices]
        layers = {c.key: c.layers for c in self.choices}
        cost = {(c.key, op): self.cost(c.key, op) for c in self.choices for op in c.ops}
        drop = proposals.per_choice(keyed, layers, self.layer_drop) if self.layer_drop else {k: 0.0 for k in cost}
        return keyed, cost, drop

    def _latency_limits(self) -> list[proposals.Limit]:
        """The latency budget as a solver limit: each (choice, op)'s change of the predicted latency, its maximum."""
        if self.max_latency_ms is None or self.latency_ms({}) is None:
            return []
        delta = {(layer, op): ms - ops["keep"] for layer, ops in self.layer_latency.items() for op, ms in ops.items()}
        table = proposals.per_choice([(c.key, c.ops) for c in self.choices], {c.key: c.layers for c in self.choices},
                                     delta)
        return [(table, self.max_latency_ms - self.teacher_latency_ms)]

    def repair(self, picks: Mapping[str, str]) -> dict[str, str]:
        """The picks nearest to `picks` within the parameter and latency budgets: fewest changed choices, then the
        least predicted drop. ValueError when no policy meets both."""
        limits = self._latency_limits()
        if self.max_params is None and not limits:
            return dict(picks)
        keyed, cost, drop = self._tables()
        max_cost = math.inf if self.max_params is None else self.max_params - self.teacher_params
        return proposals.repair(picks, keyed, cost, drop, max_cost, limits)

    def proposals(self, count: int) -> list[dict[str, str]]:
        """The least-predicted-drop picks at `count` budgets spread over the feasible range (needs a library)."""
        keyed, cost, drop = self._tables()
        limit = self.max_params if self.max_params is not None else self.teacher_params
        return proposals.propose(keyed, cost, drop, limit - self.teacher_params, count, self._latency_limits())


def resolve_choices(space: Space, teacher: nn.Module | None = None) -> PolicyChoices:
    """Check every layer pattern and op of the space against the teacher; InputError naming file and field."""
    teacher = teacher if teacher is not None else space.teacher.structure()
    named = convs(teacher)
    owner: dict[str, int] = {}
    choices: list[Choice] = []
    table: dict[str, dict[str, int]] = {}
    for i, group in enumerate(space.policy.groups):
        where = f"{space.path}: policy.groups[{i}]"
        missing = unmatched_patterns(named, group.layers)
        if missing:
            raise InputError(
                f"{where}.layers: expected glob patterns that each select a conv of {space.teacher.arch} "
                f"(python -m trainable.layers --teacher {space.teacher.arch} lists them), got {missing[0]!r}, which selects none"
            )
        layers = select(named, group.layers)
        for layer in layers:
            if layer in owner:
                raise InputError(
                    f"{where}.layers: expected each layer in one group only, got {layer}, "
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
                        f"{where}.ops: expected ops that fit every selected layer, got {err} (layer {layer})"
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
    cheapest = result.policy({c.key: min(c.ops, key=lambda op: result.cost(c.key, op)) for c in choices})
    if not result.feasible(cheapest):
        least = result.params(cheapest)
        raise InputError(
            f"{space.path}: policy.budget: expected a budget the cheapest policy meets ({least:,} params, "
            f"{least / teacher_params:.3f} of the teacher), got {result.max_params:,} params"
        )
    return result
