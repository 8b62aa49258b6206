"""Proposals from the plug library: exact knapsack solutions per budget and repair, against brute force."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.proposals import per_choice, predict, propose, repair

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(12)


def _instance(seed: int):
    """A random instance: 3-5 choices of 2-4 ops (keep first), negative integer costs, drops in [-0.01, 0.2]."""
    rng = np.random.default_rng(seed)
    choices = []
    cost, drop = {}, {}
    for i in range(rng.integers(3, 6)):
        ops = ["keep"] + [f"op{j}" for j in range(rng.integers(1, 4))]
        choices.append((f"c{i}", ops))
        for op in ops[1:]:
            cost[(f"c{i}", op)] = -int(rng.integers(1, 1_000_000))
            drop[(f"c{i}", op)] = float(rng.uniform(-0.01, 0.2))
    cheapest = sum(min(cost.get((key, op), 0) for op in ops) for key, ops in choices)
    max_cost = int(cheapest * rng.uniform(0.1, 0.9))
    return choices, cost, drop, max_cost


def _all_policies(choices):
    keys = [key for key, _ in choices]
    for ops in itertools.product(*(ops for _, ops in choices)):
        yield dict(zip(keys, ops))


def _best_drop(choices, cost, drop, budget: float) -> float:
    return min(predict(p, cost, drop)[1] for p in _all_policies(choices) if predict(p, cost, drop)[0] <= budget)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_proposal_fits_and_each_budget_gets_its_optimum(seed: int) -> None:
    choices, cost, drop, max_cost = _instance(seed)
    k = 5
    proposals = propose(choices, cost, drop, max_cost, k)
    assert proposals and len(proposals) <= k
    assert len({tuple(sorted(p.items())) for p in proposals}) == len(proposals)
    for picks in proposals:
        assert set(picks) == {key for key, _ in choices}
        assert all(picks[key] in ops for key, ops in choices)
        spent, lost = predict(picks, cost, drop)
        assert spent <= max_cost
        assert lost == pytest.approx(_best_drop(choices, cost, drop, spent), abs=1e-9)
    cheapest = sum(min(cost.get((key, op), 0) for op in ops) for key, ops in choices)
    for budget in np.linspace(cheapest, max_cost, k):
        reached = min(predict(p, cost, drop)[1] for p in proposals if predict(p, cost, drop)[0] <= budget)
        assert reached == pytest.approx(_best_drop(choices, cost, drop, budget), abs=1e-9)


def test_one_budget_is_the_maximum_and_no_fit_is_an_error() -> None:
    choices, cost, drop, max_cost = _instance(0)
    (picks,) = propose(choices, cost, drop, max_cost, 1)
    assert predict(picks, cost, drop)[1] == pytest.approx(_best_drop(choices, cost, drop, max_cost))
    cheapest = sum(min(cost.get((key, op), 0) for op in ops) for key, ops in choices)
    with pytest.raises(ValueError, match="cheapest"):
        propose(choices, cost, drop, cheapest - 1, 3)
    with pytest.raises(ValueError, match="no policy"):
        repair({key: "keep" for key, _ in choices}, choices, cost, drop, cheapest - 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_repair_changes_the_fewest_choices_then_loses_the_least(seed: int) -> None:
    choices, cost, drop, max_cost = _instance(seed)
    rng = np.random.default_rng(seed + 100)
    over = [p for p in _all_policies(choices) if predict(p, cost, drop)[0] > max_cost]
    picks = over[rng.integers(len(over))]

    def changes(p: dict) -> int:
        return sum(p[key] != picks[key] for key in picks)

    fixed = repair(picks, choices, cost, drop, max_cost)
    assert predict(fixed, cost, drop)[0] <= max_cost
    feasible = [p for p in _all_policies(choices) if predict(p, cost, drop)[0] <= max_cost]
    fewest = min(changes(p) for p in feasible)
    assert changes(fixed) == fewest
    best = min(predict(p, cost, drop)[1] for p in feasible if changes(p) == fewest)
    assert predict(fixed, cost, drop)[1] == pytest.approx(best, abs=1e-9)


def test_repair_keeps_a_policy_that_fits() -> None:
    choices, cost, drop, max_cost = _instance(3)
    (picks, *_) = propose(choices, cost, drop, max_cost, 2)
    assert repair(picks, choices, cost, drop, max_cost) == picks


def test_a_choice_costs_and_drops_the_sums_over_its_layers() -> None:
    choices = [("g", ["keep", "dws"]), ("a", ["keep", "dws", "group2"])]
    layers = {"g": ["x", "y"], "a": ["z"]}
    params = {("x", "dws"): -10, ("y", "dws"): -5, ("z", "dws"): -7, ("z", "group2"): -3}
    drops = {("x", "dws"): 0.1, ("y", "dws"): 0.2, ("z", "dws"): 0.05, ("z", "group2"): 0.01}
    cost, drop = per_choice(choices, layers, params), per_choice(choices, layers, drops)
    assert cost == {("g", "keep"): 0, ("g", "dws"): -15, ("a", "keep"): 0, ("a", "dws"): -7, ("a", "group2"): -3}
    assert drop[("g", "dws")] == pytest.approx(0.3)
    assert predict({"g": "dws", "a": "group2"}, cost, drop) == (-18, pytest.approx(0.31))
    assert propose(choices, cost, drop, -16, 3)[-1] == {"g": "dws", "a": "group2"}


def test_importing_proposals_does_not_import_torch() -> None:
    code = "import sys, search.proposals; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
