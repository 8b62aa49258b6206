"""Proposals from the plug library: exact knapsack solutions per budget and repair, against brute force."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.names import KEEP
from search.choices import Choice, PolicyChoices
from search.proposals import best_between, per_choice, predict, propose, refit, repair

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


@pytest.mark.parametrize("seed", SEEDS)
def test_best_between_is_the_least_drop_in_the_range_and_never_an_excluded_policy(seed: int) -> None:
    choices, cost, drop, max_cost = _instance(seed)
    rng = np.random.default_rng(seed + 200)
    cheapest = sum(min(cost.get((key, op), 0) for op in ops) for key, ops in choices)
    least, most = sorted(rng.uniform(cheapest, 0, size=2))
    inside = [p for p in _all_policies(choices) if least <= predict(p, cost, drop)[0] <= most]
    exclude = [inside[i] for i in rng.permutation(len(inside))[: len(inside) // 2]]
    allowed = [p for p in inside if p not in exclude]
    found = best_between(choices, cost, drop, least, most, exclude)
    if not allowed:
        assert found is None
        return
    assert found in allowed
    assert predict(found, cost, drop)[1] == pytest.approx(min(predict(p, cost, drop)[1] for p in allowed), abs=1e-9)


def test_refit_keeps_the_prior_without_data_and_recovers_the_truth_from_enough_of_it() -> None:
    prior = {("x", "dws"): 0.1, ("y", "dws"): 0.2, ("z", "dws"): 0.3}
    assert refit(prior, []) == prior
    truth = {("x", "dws"): 0.05, ("y", "dws"): 0.4, ("z", "dws"): 0.3}
    policies = [{"x": "dws"}, {"y": "dws"}, {"x": "dws", "y": "dws"}, {"x": "dws", "y": "keep"}] * 50
    measured = [(p, sum(truth[(layer, op)] for layer, op in p.items() if op != KEEP)) for p in policies]
    fitted = refit(prior, measured)
    assert fitted[("x", "dws")] == pytest.approx(0.05, abs=5e-3) and fitted[("y", "dws")] == pytest.approx(0.4, abs=5e-3)
    assert fitted[("z", "dws")] == 0.3  # no measured policy plugs z: its prior stays
    one = refit(prior, [({"x": "dws"}, 0.5)], strength=1.0)  # one observation against a prior worth one: half way
    assert one[("x", "dws")] == pytest.approx(0.3)


# Three layers of 100 params; a and b offer dws and g2, c only dws. The cheapest policy is not uniform: g2 on b.
LAYER_PARAMS = {"a": {"keep": 100, "dws": 10, "g2": 50}, "b": {"keep": 100, "dws": 20, "g2": 15},
                "c": {"keep": 100, "dws": 30}}
UNIFORM = {"a": "dws", "b": "dws", "c": "dws"}  # 60 params
CHEAPEST = {"a": "dws", "b": "g2", "c": "dws"}  # 55 params
CHOICES = (Choice("a", ("a",), ("keep", "dws", "g2")), Choice("b", ("b",), ("keep", "dws", "g2")),
           Choice("c", ("c",), ("keep", "dws")))


def test_the_first_proposals_span_the_front_from_the_cheapest_uniform_policy_to_the_budget() -> None:
    drops = {("a", "dws"): 0.3, ("a", "g2"): 0.01, ("b", "dws"): 0.2, ("b", "g2"): 0.02, ("c", "dws"): 0.05}
    choices = PolicyChoices(CHOICES, 300, LAYER_PARAMS, max_params=200, layer_drop=drops)
    assert choices.cheapest_uniform() == UNIFORM and choices.cheapest() == CHEAPEST
    assert choices.proposals(1) == [UNIFORM]
    assert choices.proposals(2)[0] == UNIFORM  # and the best at the budget
    for count in (3, 4, 6):
        picks = choices.proposals(count)
        assert picks[:2] == [CHEAPEST, UNIFORM] and len(picks) <= count
        assert len({tuple(sorted(p.items())) for p in picks}) == len(picks)
        assert all(choices.feasible_picks(p) for p in picks)
        costs = [choices.params(choices.policy(p)) for p in picks]
        assert costs == sorted(costs)
    (best,) = propose([(c.key, c.ops) for c in CHOICES], {(c.key, op): choices.cost(c.key, op) for c in CHOICES
                                                          for op in c.ops}, per_choice([(c.key, c.ops) for c in CHOICES],
                                                                                       {c.key: c.layers for c in CHOICES},
                                                                                       drops), -100, 1)
    assert choices.proposals(2)[-1] == choices.proposals(4)[-1] == best  # the last is the best at the budget


def test_without_a_library_the_proposals_are_the_cheapest_uniform_policy_and_the_cheapest() -> None:
    choices = PolicyChoices(CHOICES, 300, LAYER_PARAMS, max_params=160)
    assert choices.uniform("g2") == {"a": "g2", "b": "g2", "c": KEEP}  # 165 params: over the budget
    assert choices.cheapest_uniform() == UNIFORM
    assert choices.proposals(4) == [CHEAPEST, UNIFORM] and choices.proposals(1) == [UNIFORM]
    assert choices.proposals(0) == []
    only_dws = PolicyChoices(CHOICES[2:], 300, LAYER_PARAMS, max_params=250)
    assert only_dws.proposals(4) == [{"c": "dws"}]  # the uniform policy is the cheapest one


def test_importing_proposals_does_not_import_torch() -> None:
    code = "import sys, search.proposals; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
