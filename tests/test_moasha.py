"""MO-ASHA's promotion rule on synthetic rung results, its rungs over epochs, and its state across a killed driver."""
from __future__ import annotations

import itertools
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.moasha import MOASHA, RungsCallback, rung_epochs
from search.pareto import better_than, crowding_distances, minimised, nondominated_ranks

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _report(scheduler, trial_id: str, epoch: int, params: float, miou: float) -> str:
    return scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id),
                                     {"epoch": epoch, "params": params, "miou": miou, "score": miou})


def _moasha(reduction_factor: int = 2, max_t: int = 4) -> MOASHA:
    return MOASHA(["params", "miou"], ["min", "max"], max_t=max_t, grace_period=1, reduction_factor=reduction_factor)


# (trial, params, miou) reported at the first rung in this order; every one lies on the front but E.
RUNG = [("A", 100, 0.80), ("B", 90, 0.75), ("C", 80, 0.70), ("D", 50, 0.50)]


def test_a_cheap_trial_on_the_front_is_promoted_though_its_metric_is_the_lowest():
    moasha, asha = _moasha(), ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=4, grace_period=1,
                                            reduction_factor=2)
    for trial_id, params, miou in RUNG:
        asha.on_trial_add(None, SimpleNamespace(trial_id=trial_id))
        decisions = _report(moasha, trial_id, 1, params, miou), _report(asha, trial_id, 1, params, miou)
    assert decisions == (CONTINUE, STOP)  # D: half the params of A; ASHA on the metric alone stops it


def test_a_dominated_trial_is_stopped():
    moasha = _moasha()
    for trial_id, params, miou in RUNG:
        assert _report(moasha, trial_id, 1, params, miou) == CONTINUE
    assert _report(moasha, "E", 1, 95, 0.60) == STOP  # B costs less and scores more


def test_crowding_distance_breaks_ties_within_the_front():
    """Four front points, then a fifth on the front too: in a sparse stretch it continues, beside another it stops."""
    moasha = MOASHA(["x", "y"], ["min", "min"], max_t=4, reduction_factor=2)
    rung = {"a": [0, 10], "b": [2, 8], "c": [9, 1], "d": [10, 0]}
    assert moasha.promoted({**rung, "sparse": [5, 5]}, "sparse")  # 2 extremes before it; the best 3 of 5 go on
    assert not moasha.promoted({**rung, "crowded": [1, 9.1]}, "crowded")  # a, d, b and c before it
    assert nondominated_ranks(minimised([*rung.values(), [1, 9.1]], ["min", "min"])).tolist() == [0] * 5


def test_ties_favour_the_trial_and_the_first_at_a_rung_continues():
    moasha = _moasha()
    assert _report(moasha, "A", 1, 100, 0.8) == CONTINUE
    assert _report(moasha, "B", 1, 50, 0.5) == CONTINUE  # both extremes of the front: a tie


def test_rungs_sit_below_max_t_and_every_trial_stops_there():
    assert rung_epochs(1, 2, 4) == [1, 2]
    assert rung_epochs(1, 3, 10) == [1, 3, 9]
    assert rung_epochs(2, 3, 2) == []
    moasha = _moasha(max_t=4)
    assert _report(moasha, "A", 3, 100, 0.8) == CONTINUE
    assert _report(moasha, "A", 4, 100, 0.9) == STOP


def test_a_resumed_trial_is_judged_at_the_highest_rung_its_epoch_passed():
    moasha = _moasha(max_t=8)  # rungs 1, 2, 4
    for trial_id, params, miou in RUNG[:3]:
        _report(moasha, trial_id, 2, params, miou)
    # Its first report after a restart is epoch 3: it is recorded at epoch 2 (not 1), against A, B and C.
    assert _report(moasha, "R", 3, 95, 0.6) == STOP
    rungs = dict(moasha.get_state()["rungs"])
    assert "R" in rungs[2] and "R" not in rungs[1]
    assert _report(moasha, "R", 3, 95, 0.6) == CONTINUE  # judged once per rung


def test_a_report_without_an_objective_is_not_judged():
    moasha = _moasha()
    _report(moasha, "A", 1, 100, 0.8)
    assert moasha.on_trial_result(None, SimpleNamespace(trial_id="B"), {"epoch": 1, "params": 200, "miou": None}) == CONTINUE
    assert moasha.on_trial_result(None, SimpleNamespace(trial_id="C"), {"params": 200, "miou": 0.1}) == CONTINUE


def test_rungs_survive_a_killed_driver_through_the_callback_state(tmp_path):
    """Tune pickles TuneConfig's scheduler and RunConfig's callbacks together in tuner.pkl and restores the callbacks'
    state from the last snapshot: the restored scheduler promotes against the rungs it had."""
    moasha = _moasha()
    at_start = pickle.dumps({"scheduler": moasha, "callbacks": [RungsCallback(moasha)]})
    callback = RungsCallback(moasha)
    for trial_id, params, miou in RUNG:
        _report(moasha, trial_id, 1, params, miou)
    snapshot = pickle.dumps(callback.get_state())
    restored = pickle.loads(at_start)
    assert restored["callbacks"][0].scheduler is restored["scheduler"]
    restored["callbacks"][0].set_state(pickle.loads(snapshot))
    assert _report(restored["scheduler"], "E", 1, 95, 0.60) == STOP  # against A-D, as before the kill
    moasha.save(str(tmp_path / "moasha.pkl"))
    fresh = _moasha()
    fresh.restore(str(tmp_path / "moasha.pkl"))
    assert fresh.get_state() == moasha.get_state()


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a <= b).all() and (a < b).any())


@pytest.mark.parametrize("seed", range(6))
def test_nondominated_ranks_match_their_definition(seed: int):
    points = np.random.default_rng(seed).integers(0, 6, size=(25, 3)).astype(float)  # ties on purpose
    ranks = nondominated_ranks(points)
    for i, j in itertools.permutations(range(len(points)), 2):
        if _dominates(points[i], points[j]):
            assert ranks[i] < ranks[j]
    for j in range(len(points)):
        if ranks[j] > 0:
            assert any(_dominates(points[i], points[j]) for i in np.flatnonzero(ranks == ranks[j] - 1))


def test_crowding_distance_of_a_line_of_points():
    points = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    distances = crowding_distances(points, nondominated_ranks(points))
    assert distances[[0, 3]].tolist() == [np.inf, np.inf]
    assert distances[1] == pytest.approx(3 / 4 * 2) and distances[2] == pytest.approx(3 / 4 * 2)
    assert better_than(points, 1) == 2


def _trainable(config: dict) -> None:
    """Four epochs: params from x; a `good` trial scores x, another half of it, both growing with the epoch."""
    from ray import tune

    for epoch in range(1, 5):
        score = config["x"] * (1.0 if config["good"] else 0.5) * epoch / 4
        tune.report({"epoch": epoch, "epochs_total": 4, "params": 100 * config["x"], "miou": score, "score": score,
                     "error_reason": None})


def _space(trial) -> None:
    trial.suggest_float("x", 0.1, 1.0)
    trial.suggest_categorical("good", [True, False])


def test_moasha_in_a_tune_run_stops_trials_optuna_hears_pruned_and_the_rungs_are_in_the_snapshot(tmp_path):
    import ray
    from ray import tune

    from search.searcher import TellingOptunaSearch

    moasha = _moasha(reduction_factor=2)
    searcher = TellingOptunaSearch(space=_space, metric=["params", "miou"], mode=["min", "max"], study_name="plugkd",
                                   sampler=optuna.samplers.RandomSampler(0))
    root = str(Path(__file__).resolve().parents[1])  # where workers import this module, tests.test_moasha, from
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        grid = tune.Tuner(_trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=moasha, num_samples=8),
                          run_config=tune.RunConfig(name="moasha", storage_path=str(tmp_path), verbose=0,
                                                    callbacks=[RungsCallback(moasha)])).fit()
    finally:
        ray.shutdown()
    epochs = {result.metrics["trial_id"]: result.metrics["epoch"] for result in grid}
    assert len(epochs) == 8 and min(epochs.values()) < 4  # some stopped at the rungs (epochs 1 and 2)
    states = [t.state.name for t in searcher._ot_study.trials]
    assert sorted(states) == sorted("PRUNED" if epoch < 4 else "COMPLETE" for epoch in epochs.values())
    (snapshot,) = (tmp_path / "moasha").glob("callback-states-*.pkl")
    rungs = dict(next(iter(pickle.loads(snapshot.read_bytes()).values()))["rungs"])
    assert set(rungs[1]) == set(epochs) and set(rungs[2]) == {t for t, epoch in epochs.items() if epoch >= 2}
