"""`searcher: library` on a synthetic plug library: proposals first, then refitted picks that fill the front's widest
gap, never a policy twice, and the same picks after a save and restore."""
from __future__ import annotations

import numpy as np
import pytest
from ray.tune.search import Searcher

from data.names import KEEP
from search.choices import Choice, PolicyChoices
from search.library_search import PROPOSAL, LibrarySearch

LAYERS = [f"l{i}" for i in range(6)]
OPS = ("keep", "dws", "g4")
TEACHER_PARAMS, TEACHER_SCORE = 50_000, 0.9


def _choices(seed: int = 0) -> tuple[PolicyChoices, dict[tuple[str, str], float]]:
    """Six per-layer choices (729 policies) with the library's solo drops, and the true drops they misjudge."""
    rng = np.random.default_rng(seed)
    prior = {(layer, op): float(rng.uniform(0.0, 0.05)) for layer in LAYERS for op in OPS[1:]}
    truth = {plug: drop * float(rng.uniform(0.5, 2.0)) for plug, drop in prior.items()}
    params = {layer: {"keep": 1000 * (i + 1), "dws": 150 * (i + 1), "g4": 400 * (i + 1)} for i, layer in enumerate(LAYERS)}
    choices = PolicyChoices(tuple(Choice(layer, (layer,), OPS) for layer in LAYERS), TEACHER_PARAMS, params,
                            max_params=TEACHER_PARAMS - 6000, layer_drop=prior)
    return choices, truth


def _searcher(choices: PolicyChoices, proposals: int = 3) -> LibrarySearch:
    return LibrarySearch(choices, ["params", "top1"], ["min", "max"], "top1", first=choices.proposals(proposals),
                         distill={"w_hint": 1.0})


def _run(searcher: LibrarySearch, truth: dict, trials: range) -> list[dict]:
    """Suggest and complete each trial at once; its top1 is the teacher's less the true additive drop."""
    configs = []
    for i in trials:
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        policy = searcher.choices.policy(config["policy"])
        drop = sum(truth[(layer, op)] for layer, op in policy.items() if op != KEEP)
        searcher.on_trial_complete(f"t{i}", {"params": searcher.choices.params(policy), "top1": TEACHER_SCORE - drop,
                                             "teacher_top1": TEACHER_SCORE, "epoch": 2, "epochs_total": 2,
                                             "error_reason": None})
        configs.append(config)
    return configs


def test_proposals_go_first_then_refitted_picks_never_twice():
    choices, truth = _choices()
    configs = _run(_searcher(choices), truth, range(25))
    assert [c["proposal"] for c in configs[:3]] == ["library"] * 3 and {c["proposal"] for c in configs[3:]} == {PROPOSAL}
    assert [c["policy"] for c in configs[:3]] == choices.proposals(3)
    picks = [tuple(sorted(c["policy"].items())) for c in configs]
    assert len(set(picks)) == len(picks) == 25
    assert all(choices.feasible_picks(c["policy"]) for c in configs)
    assert all(c["distill"] == {"w_hint": 1.0} for c in configs)


def test_the_refit_moves_the_predicted_drops_towards_the_measured_ones():
    choices, truth = _choices()
    searcher = _searcher(choices)
    _run(searcher, truth, range(25))
    rng = np.random.default_rng(1)
    unseen = [{layer: OPS[rng.integers(3)] for layer in LAYERS} for _ in range(200)]

    def error(drops: dict) -> float:
        """Mean absolute error of a predictor's policy drops, over random policies."""
        return float(np.mean([abs(sum(drops[(k, op)] - truth[(k, op)] for k, op in p.items() if op != KEEP))
                              for p in unseen]))

    assert error(searcher.drops()) < 0.6 * error(choices.layer_drop)


def test_the_next_pick_fills_the_widest_gap_of_the_front():
    choices, truth = _choices()
    searcher = _searcher(choices, proposals=2)  # the cheapest policy and the best at the budget
    configs = _run(searcher, truth, range(2))
    low, high = (choices.params(choices.policy(c["policy"])) for c in configs)
    assert low == choices.params(choices.policy(choices.cheapest())) and high <= choices.max_params
    (third,) = _run(searcher, truth, range(2, 3))
    assert low < choices.params(choices.policy(third["policy"])) <= (low + high) / 2


def test_a_restored_searcher_picks_as_the_original_and_a_small_space_runs_out(tmp_path):
    choices, truth = _choices()
    original = _searcher(choices)
    _run(original, truth, range(8))
    original.save(str(tmp_path / "searcher-state.pkl"))
    restored = _searcher(choices)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    assert [c["policy"] for c in _run(restored, truth, range(8, 14))] == \
        [c["policy"] for c in _run(original, truth, range(8, 14))]
    small = PolicyChoices(choices.choices[:2], TEACHER_PARAMS, choices.layer_params, max_params=TEACHER_PARAMS,
                          layer_drop=choices.layer_drop)
    assert len(_run(_searcher(small), truth, range(20))) == 9  # 3 x 3 policies, then FINISHED


def test_without_the_library_s_drops_it_is_refused():
    choices, _ = _choices()
    with pytest.raises(ValueError, match="plug library"):
        LibrarySearch(PolicyChoices(choices.choices, TEACHER_PARAMS, choices.layer_params, None), "top1", "max", "top1")
