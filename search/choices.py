"""A search's policy choices resolved against the teacher's convs: one categorical per layer or group,
and each policy's parameter count (and, with a latency table, its predicted latency) without building it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch import nn

from data.errors import InputError
from data.names import KEEP
from search import proposals
from search.space import Space
from trainable.inventory import convs, count_params, select, unmatched_patterns
from trainable.latency import predicted_latency
from trainable.layers import command as inventory_command
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
            self.layer_params[layer][op] - self.layer_params[layer][KEEP] for layer, op in policy.items()
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
        return sum(self.layer_params[layer][op] - self.layer_params[layer][KEEP] for layer in choice.layers)

    def predicted_drop(self, policy: Mapping[str, str]) -> float | None:
        """The sum of the plugged layers' solo drops; None without a plug library."""
        if not self.layer_drop:
            return None
        return sum(self.layer_drop[(layer, op)] for layer, op in policy.items() if op != KEEP)

    def _tables(self, layer_drop: Mapping[tuple[str, str], float] | None = None) -> tuple[list, dict, dict]:
        """The solver's view: choices, params delta and predicted drop per (choice, op); drops from `layer_drop`, else
        the library's (0 without one)."""
        layer_drop = self.layer_drop if layer_drop is None else layer_drop
        keyed = [(c.key, c.ops) for c in self.choices]
        layers = {c.key: c.layers for c in self.choices}
        cost = {(c.key, op): self.cost(c.key, op) for c in self.choices for op in c.ops}
        drop = proposals.per_choice(keyed, layers, layer_drop) if layer_drop else {k: 0.0 for k in cost}
        return keyed, cost, drop

    def _latency_limits(self) -> list[proposals.Limit]:
        """The latency budget as a solver limit: each (choice, op)'s change of the predicted latency, its maximum."""
        if self.max_latency_ms is None or self.latency_ms({}) is None:
            return []
        delta = {(layer, op): ms - ops[KEEP] for layer, ops in self.layer_latency.items() for op, ms in ops.items()}
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

    def uniform(self, op: str) -> dict[str, str]:
        """`op` on every choice that offers it; the others keep (or take their cheapest op when keep is not offered)."""
        return {c.key: op if op in c.ops else KEEP if KEEP in c.ops else self._cheapest_op(c) for c in self.choices}

    def _cheapest_op(self, choice: Choice) -> str:
        return min(choice.ops, key=lambda op: self.cost(choice.key, op))

    def cheapest(self) -> dict[str, str]:
        """The fewest-params picks within the budgets (the latency budget may cost some params)."""
        return self.repair({c.key: self._cheapest_op(c) for c in self.choices})

    def cheapest_uniform(self) -> dict[str, str] | None:
        """The feasible uniform policy (`uniform(op)` for an op some choice offers) with the fewest params, if any."""
        ops = dict.fromkeys(op for c in self.choices for op in c.ops if op != KEEP)
        feasible = [picks for picks in map(self.uniform, ops) if self.feasible_picks(picks)]
        return min(feasible, key=lambda picks: self.params(self.policy(picks)), default=None)

    def proposals(self, count: int) -> list[dict[str, str]]:
        """A search's first `count` policies (fewer when some coincide), cheapest first: the cheapest feasible uniform
        policy and, with a plug library, the least-predicted-drop picks at budgets spread evenly from the cheapest
        policy's params to the cap (one budget fewer when the uniform policy is not one of those picks); without a
        library, the cheapest policy."""
        uniform = [] if (picks := self.cheapest_uniform()) is None else [picks]
        if not self.layer_drop:
            chosen = _distinct([*uniform, self.cheapest()])[:count]
        else:
            keyed, cost, drop = self._tables()
            limit = (self.max_params if self.max_params is not None else self.teacher_params) - self.teacher_params
            chosen = proposals.propose(keyed, cost, drop, limit, count, self._latency_limits())
            if uniform and uniform[0] not in chosen:
                chosen = [*uniform, *proposals.propose(keyed, cost, drop, limit, count - 1, self._latency_limits())]
        return sorted(chosen[:count], key=lambda picks: self.params(self.policy(picks)))

    def best_between(self, least: float, most: float, layer_drop: Mapping[tuple[str, str], float],
                     exclude: Sequence[Mapping[str, str]]) -> dict[str, str] | None:
        """The feasible picks of least predicted drop (per-layer `layer_drop`) with least <= params <= most, none of
        `exclude`; None when there are none."""
        keyed, cost, drop = self._tables(layer_drop)
        most = min(most, self.max_params if self.max_params is not None else math.inf)
        return proposals.best_between(keyed, cost, drop, least - self.teacher_params, most - self.teacher_params,
                                      exclude, self._latency_limits())


def _distinct(picks: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    return [p for i, p in enumerate(picks) if p not in picks[:i]]


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
                f"({inventory_command(space.teacher, space.input_size)} lists them), got {missing[0]!r}, "
                "which selects none"
            )
        layers = select(named, group.layers)
        for layer in layers:
            if layer in owner:
                raise InputError(
                    f"{where}.layers: expected each layer in one group only, got {layer}, "
                    f"which policy.groups[{owner[layer]}] selects too"
                )
            owner[layer] = i
            table[layer] = {KEEP: op_params(named[layer], KEEP)}
            for op in group.ops:
                if op == KEEP:
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
