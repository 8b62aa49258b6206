"""Policies proposed from the plug library: an additive predictor of the metric drop and exact solvers over it.

A policy is `{choice key: op}`. Its predicted drop is the sum of its choices' drops and its cost
the sum of its choices' costs (params delta vs keep, keep = 0); a choice that sets several layers
costs and drops the sums over its layers (`per_choice`). `propose` solves the multiple-choice
knapsack (one op per choice, total cost <= budget, least predicted drop) exactly with
`scipy.optimize.milp` at K budgets; `best_between` solves it for a cost range, never returning an
excluded policy; `repair` moves an over-budget policy to the nearest feasible one. Costs are
integers (parameter counts). All honour `limits`: further per-(choice, op) tables (keep = 0) whose
sums must stay under their own maxima (the latency budget: each plug's change of the predicted
latency). `refit` moves the predictor's per-plug drops towards measured policies' drops.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from data.names import KEEP

Choices = Sequence[tuple[str, Sequence[str]]]
Picks = dict[str, str]
Limit = tuple[Mapping[tuple[str, str], float], float]  # a per-(choice, op) table and the most its sum may be


def per_choice(
    choices: Choices, layers: Mapping[str, Sequence[str]], per_layer: Mapping[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    """`{(key, op): sum over the choice's layers of per_layer[(layer, op)]}`; keep is 0 (params delta or drop)."""
    return {
        (key, op): 0 if op == KEEP else sum(per_layer[(layer, op)] for layer in layers[key])
        for key, ops in choices
        for op in ops
    }


def _value(table: Mapping[tuple[str, str], float], key: str, op: str) -> float:
    return 0 if op == KEEP else table[(key, op)]


def predict(
    picks: Mapping[str, str], cost: Mapping[tuple[str, str], int], drop: Mapping[tuple[str, str], float]
) -> tuple[int, float]:
    """The policy's total cost and predicted drop."""
    return (
        sum(_value(cost, key, op) for key, op in picks.items()),
        sum(_value(drop, key, op) for key, op in picks.items()),
    )


class _Model:
    """The knapsack: one binary per (choice, op), one equality row per choice, a cost row and a row per limit."""

    def __init__(self, choices: Choices, cost: Mapping[tuple[str, str], int], drop: Mapping[tuple[str, str], float],
                 limits: Sequence[Limit] = ()):
        self.variables = [(key, op) for key, ops in choices for op in dict.fromkeys(ops)]
        self.cost = np.array([_value(cost, key, op) for key, op in self.variables], dtype=float)
        self.drop = np.array([_value(drop, key, op) for key, op in self.variables], dtype=float)
        self.limits = [
            LinearConstraint(np.array([[_value(table, key, op) for key, op in self.variables]]), -np.inf, most)
            for table, most in limits
        ]
        keys = list(dict.fromkeys(key for key, _ in choices))
        self.one_each = np.zeros((len(keys), len(self.variables)))
        for j, (key, _) in enumerate(self.variables):
            self.one_each[keys.index(key), j] = 1
        self.cheapest = int(sum(min(_value(cost, key, op) for op in ops) for key, ops in choices))

    def solve(self, objective: np.ndarray, budget: float, least: float = -np.inf,
              exclude: Sequence[Mapping[str, str]] = ()) -> Picks:
        """The picks minimising `objective` with least <= total cost <= budget, none of `exclude` (exact: no MIP gap).

        ValueError when no policy qualifies.
        """
        n = len(self.variables)
        # A no-good cut per excluded policy: at most all its picks but one.
        cuts = [LinearConstraint(np.array([[1.0 if picks.get(key) == op else 0.0 for key, op in self.variables]]),
                                 -np.inf, len(self.one_each) - 1) for picks in exclude]
        result = milp(
            objective,
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            constraints=[LinearConstraint(self.one_each, 1, 1), LinearConstraint(self.cost[None, :], least, budget),
                         *self.limits, *cuts],
            options={"mip_rel_gap": 0},
        )
        if result.x is None:
            raise ValueError(f"no policy costs <= {budget}: the cheapest costs {self.cheapest} ({result.message})")
        return {key: op for (key, op), x in zip(self.variables, result.x) if x > 0.5}


def propose(
    choices: Choices, cost: Mapping[tuple[str, str], int], drop: Mapping[tuple[str, str], float], max_cost: int, k: int,
    limits: Sequence[Limit] = (),
) -> list[Picks]:
    """The least-drop policy at each of `k` budgets spread evenly over [cheapest policy's cost, max_cost], deduplicated.

    Budgets go from the cheapest (within `limits`) up (k = 1: max_cost alone); ValueError when no policy fits.
    """
    model = _Model(choices, cost, drop, limits)
    if model.cheapest > max_cost:
        raise ValueError(f"no policy costs <= {max_cost}: the cheapest costs {model.cheapest}")
    cheapest = predict(model.solve(model.cost, max_cost), cost, drop)[0] if limits else model.cheapest
    proposals: list[Picks] = []
    for budget in np.linspace(max_cost, cheapest, k)[::-1]:
        picks = model.solve(model.drop, np.floor(budget))
        if picks not in proposals:
            proposals.append(picks)
    return proposals


def best_between(
    choices: Choices, cost: Mapping[tuple[str, str], int], drop: Mapping[tuple[str, str], float], least: float,
    most: float, exclude: Sequence[Mapping[str, str]] = (), limits: Sequence[Limit] = (),
) -> Picks | None:
    """The least-drop policy with least <= cost <= most that is none of `exclude`; None when there is none."""
    model = _Model(choices, cost, drop, limits)
    try:
        return model.solve(model.drop, np.floor(most), least, exclude)
    except ValueError:
        return None


def refit(prior: Mapping[tuple[str, str], float], measured: Sequence[tuple[Mapping[str, str], float]],
          strength: float = 1.0) -> dict[tuple[str, str], float]:
    """Per-(layer, op) drops fitted to measured policies' drops: ridge regression on plug indicators, shrunk to `prior`.

    `measured` holds `({layer: op}, drop)` pairs; a policy's predicted drop is the sum of its plugs' drops (keep adds
    nothing). Minimises the squared error over `measured` plus `strength` times the squared distance to `prior`, so
    each plug's prior counts as `strength` observations; plugs no measured policy has keep their prior.
    """
    plugs = list(prior)
    if not measured:
        return dict(prior)
    column = {plug: j for j, plug in enumerate(plugs)}
    features = np.zeros((len(measured), len(plugs)))
    for i, (policy, _) in enumerate(measured):
        for layer, op in policy.items():
            if op != KEEP:
                features[i, column[(layer, op)]] = 1.0
    w0 = np.array([prior[plug] for plug in plugs])
    y = np.array([drop for _, drop in measured])
    gram = features.T @ features + strength * np.eye(len(plugs))
    w = w0 + np.linalg.solve(gram, features.T @ (y - features @ w0))
    return dict(zip(plugs, w.tolist()))


def repair(
    picks: Mapping[str, str], choices: Choices, cost: Mapping[tuple[str, str], int],
    drop: Mapping[tuple[str, str], float], max_cost: float, limits: Sequence[Limit] = (),
) -> Picks:
    """The feasible policy nearest `picks`: fewest changed choices, then least predicted drop; picks itself if it fits.

    Feasible: cost <= max_cost and within every limit; ValueError when no policy is.
    """
    model = _Model(choices, cost, drop, limits)
    if predict(picks, cost, drop)[0] <= max_cost and all(
        sum(_value(table, key, op) for key, op in picks.items()) <= most for table, most in limits
    ):
        return dict(picks)
    changed = np.array([0.0 if picks[key] == op else 1.0 for key, op in model.variables])
    # A change must outweigh any difference in drop: more than the whole range of total drops.
    spread = sum(np.ptp(model.drop[model.one_each[i] > 0]) for i in range(len(model.one_each)))
    return model.solve((spread + 1) * changed + model.drop, max_cost)
