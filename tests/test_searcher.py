"""The searchers and schedulers behind `search.searcher`: every sampler takes several objectives, pickles and resumes
from optuna.db after a killed driver; no settings train twice; trials are told PRUNED, FAILED or COMPLETE."""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from data.errors import InputError
from data.names import OPTUNA_FILE
from search.choices import Choice, PolicyChoices
from search.moasha import MOASHA, RungsCallback
from search.searcher import (
    SAMPLERS, DefineByRun, Objectives, TellingOptunaSearch, first_points, make_scheduler,
    proposal_count, scheduler_callbacks, settings_key,
)
from search.names import SEARCHERS
from search.space import AshaSettings, Distribution, MOASHASettings, load_space
from tests.searches import space_with, write_space

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = Objectives(("params", "top1"))
# Two choices and a searched temperature. Within the budget of 240 params, `a` is always dws: 3 policies, 6 settings;
# keep/g2 (250 params) is repaired to dws/g2, its only feasible neighbour.
CHOICES = PolicyChoices(
    (Choice("a", ("a",), ("keep", "dws")), Choice("b", ("b",), ("keep", "dws", "g2"))), teacher_params=300,
    layer_params={"a": {"keep": 100, "dws": 20}, "b": {"keep": 100, "dws": 60, "g2": 50}}, max_params=240,
)
SEARCHED = {"temperature": Distribution("choice", (1, 2), 1)}
WIDE = {"w_hint": Distribution("loguniform", (0.1, 10.0), None)}  # settings that never repeat


def _point(a: str, b: str, temperature: int = 1) -> dict:
    return {"policy/a": a, "policy/b": b, "distill/temperature": temperature}


def _searcher(sampler: str = "random", storage: optuna.storages.BaseStorage | None = None, first=(),
              searched=SEARCHED) -> TellingOptunaSearch:
    return TellingOptunaSearch(space=DefineByRun(CHOICES, searched), metric=OBJECTIVES.metric, mode=OBJECTIVES.mode,
                               sampler=SAMPLERS[sampler](0, 8), storage=storage, study_name="plugkd", first=first)


def _result(config: dict, epoch: int = 2, **extra) -> dict:
    """What a trial reports: its params from the policy it trains, a made-up top1."""
    params = CHOICES.params(CHOICES.policy(config.get("repaired") or config["policy"]))
    return {"params": params, "top1": 1 - params / 1000, "epoch": epoch, "epochs_total": 2, "error_reason": None,
            "infeasible": False, **extra}


def _key(config: dict) -> str:
    flat = {**{f"policy/{k}": v for k, v in config["policy"].items()},
            **{f"distill/{k}": v for k, v in config.get("distill", {}).items()}}
    return settings_key({**flat, **({"repaired": config["repaired"]} if "repaired" in config else {})})


def _states(searcher: TellingOptunaSearch) -> list[str]:
    """The states of the study's trials that trained (not the duplicates told for them)."""
    return [t.state.name for t in searcher._ot_study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_pickles_mid_study_and_samples_after(name: str) -> None:
    # Ray pickles the searcher (with its sampler) in tuner.pkl and every experiment snapshot; Optuna 5.1's
    # NSGAIISampler holds a threading.Lock, which made every nsga2 search fail before its first trial.
    for directions in (["minimize", "maximize"], ["maximize"]):
        sampler = SAMPLERS[name](0, 8)
        study = optuna.create_study(sampler=sampler, directions=directions)
        for _ in range(5):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, [x, 1 - x][: len(directions)])
        restored = pickle.loads(pickle.dumps(study.sampler))
        assert type(restored) is type(sampler)
        study.sampler = restored
        study.tell(study.ask(), [0.5, 0.5][: len(directions)])
        assert len(study.trials) == 6


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_multi_objective_samplers_resume_from_optuna_db_after_a_kill(name: str, tmp_path) -> None:
    """As Tuner.restore does: the searcher pickled at the start (tuner.pkl), then its last saved state; the study in
    SQLite goes on with both objectives."""
    url = f"sqlite:///{tmp_path / OPTUNA_FILE}"
    searcher = _searcher(name, optuna.storages.RDBStorage(url), searched=WIDE)
    at_start = pickle.dumps(searcher)
    for i in range(3):
        searcher.on_trial_complete(f"t{i}", _result(searcher.suggest(f"t{i}")))
    held = searcher.suggest("held")
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    searcher.suggest("stray")  # asked, then the driver is killed before its next snapshot
    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    study = optuna.load_study(study_name="plugkd", storage=url)
    assert len(study.directions) == 2
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # NSGA-II's children may copy a parent
    assert [t.state.name for t in trained] == ["COMPLETE"] * 3 + ["RUNNING", "FAIL"]
    restored.on_trial_complete("held", _result(held))
    for i in range(3, 6):
        restored.on_trial_complete(f"t{i}", _result(restored.suggest(f"t{i}")))
    trials = optuna.load_study(study_name="plugkd", storage=url).trials
    assert [t.state.name for t in trials if "duplicate_of" not in t.user_attrs] == ["COMPLETE"] * 4 + ["FAIL"] + ["COMPLETE"] * 3
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert all(len(t.values) == 2 for t in optuna.load_study(study_name="plugkd", storage=url).best_trials)


def test_duplicate_settings_never_train_twice_and_the_space_runs_out() -> None:
    searcher = _searcher()
    seen = []
    while (config := searcher.suggest(f"t{len(seen)}")) != Searcher.FINISHED:
        seen.append(_key(config))
        searcher.on_trial_complete(f"t{len(seen) - 1}", _result(config))
    assert len(seen) == len(set(seen)) == 6
    trials = searcher._ot_study.get_trials(deepcopy=False)
    copies = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(trials) > len(seen) and copies
    for copy in copies:  # each told the outcome of the trial that trained its settings
        assert copy.state == TrialState.COMPLETE and copy.values == trials[copy.user_attrs["duplicate_of"]].values


def test_a_duplicate_of_a_running_trial_waits_for_its_outcome_and_survives_a_killed_driver(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / OPTUNA_FILE}"
    # The same policy twice (the second over the budget and repaired into it), then the first's settings again.
    searcher = _searcher(storage=optuna.storages.RDBStorage(url),
                         first=[(_point("dws", "g2"), "library"), (_point("keep", "g2"), "library")])
    at_start = pickle.dumps(searcher)
    first = searcher.suggest("t0")
    assert first["policy"] == {"a": "dws", "b": "g2"}
    second = searcher.suggest("t1")  # keep/g2 is repaired to dws/g2: a duplicate, so another is drawn
    assert _key(second) != _key(first)
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    trials = restored._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.RUNNING] * 3  # the waiting duplicate is no stray
    assert trials[1].user_attrs["duplicate_of"] == 0
    restored._ot_study.enqueue_trial(_point("dws", "g2"))
    third = restored.suggest("t2")
    assert _key(third) not in {_key(first), _key(second)}
    restored.on_trial_complete("t0", _result(first))
    trials = restored._ot_study.get_trials(deepcopy=False)
    duplicates = [t for t in trials if t.user_attrs.get("duplicate_of") == 0]
    assert len(duplicates) == 2 and all(t.state == TrialState.COMPLETE and t.values == trials[0].values
                                        for t in duplicates)


@pytest.mark.parametrize("outcome, state", [({"epoch": 1}, TrialState.PRUNED),
                                            ({"error_reason": "nonfinite_loss"}, TrialState.FAIL)])
def test_a_duplicate_of_a_pruned_or_failed_trial_is_told_the_same(outcome: dict, state: TrialState) -> None:
    searcher = _searcher(first=[(_point("dws", "dws"), "library")])
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", _result(config, **outcome))
    searcher._ot_study.enqueue_trial(_point("dws", "dws"))
    assert _key(searcher.suggest("t1")) != _key(config)
    trials = searcher._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:2]] == [state, state] and trials[1].user_attrs["duplicate_of"] == 0


def test_failed_infeasible_and_incomplete_reports_do_not_break_a_multi_objective_study() -> None:
    searcher = _searcher()
    reports = [
        _result(searcher.suggest("t0"), infeasible=True, epoch=0),  # COMPLETE: every objective is there
        _result(searcher.suggest("t1"), error_reason="ValueError: boom"),
        {**_result(searcher.suggest("t2")), "top1": None},
        None,
    ]
    searcher.suggest("t3")
    for i, report in enumerate(reports):
        searcher.on_trial_complete(f"t{i}", report)
    assert _states(searcher) == ["COMPLETE", "FAIL", "FAIL", "PRUNED"]


def test_first_points_are_the_proposals_with_the_searched_defaults(tmp_path) -> None:
    space = load_space(_space_file(tmp_path, {}), folder=ROOT / "tests" / "spaces")
    points = first_points(space, CHOICES, num_samples=8)
    # No library: the cheapest policy and the cheapest uniform policy (uniform g2 is over the budget), cheapest first.
    assert [(point["policy/a"], point["policy/b"], tag) for point, tag in points] == [("dws", "g2", "cheapest"),
                                                                                     ("dws", "dws", "cheapest")]
    assert {k: v for k, v in points[0][0].items() if k.startswith("distill/")} == {"distill/w_hint": 1, "distill/w_kd": 1}
    assert [proposal_count(None, n) for n in (1, 2, 8, 20, 64)] == [1, 2, 2, 5, 16]
    assert proposal_count(3, 2) == 2 and proposal_count(0, 20) == 0


def _space_file(tmp_path: Path, search: dict) -> Path:
    return write_space(tmp_path, space_with(ROOT / "tests" / "spaces" / "classification.yaml", search=search),
                       sort_keys=True)


def test_the_library_searcher_without_a_library_is_refused_in_one_line(tmp_path) -> None:
    assert "library" in SEARCHERS
    path = _space_file(tmp_path, {"searcher": "library"})
    with pytest.raises(InputError) as err:
        load_space(path, folder=ROOT / "tests" / "spaces")
    assert str(err.value).startswith(f"{path}: search.searcher: expected another searcher for a space without a library")
    assert "\n" not in str(err.value)


def test_the_default_scheduler_is_moasha_over_several_objectives_and_asha_over_one(tmp_path) -> None:
    raw = yaml.safe_load((ROOT / "tests" / "spaces" / "classification.yaml").read_text())
    del raw["search"]["scheduler"]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    space = load_space(path, folder=ROOT / "tests" / "spaces")
    assert space.search.objectives == ("params", "top1") and space.search.scheduler == MOASHASettings()
    raw["search"]["objectives"] = ["top1"]
    path.write_text(yaml.safe_dump(raw))
    assert load_space(path, folder=ROOT / "tests" / "spaces").search.scheduler == AshaSettings()


def test_make_scheduler_builds_fifo_asha_and_moasha_over_epochs(tmp_path) -> None:
    space = load_space(_space_file(tmp_path, {"scheduler": {"asha": {"grace_period": 1}}}), folder=ROOT / "tests" / "spaces")
    asha = make_scheduler(space)
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "epoch" and scheduler_callbacks(asha) == []
    assert isinstance(make_scheduler(load_space(_space_file(tmp_path, {}), folder=ROOT / "tests" / "spaces")),
                      FIFOScheduler)
    moasha = make_scheduler(replace(space, search=replace(space.search, scheduler=MOASHASettings())))
    assert isinstance(moasha, MOASHA) and moasha._objectives == ["params", "top1"] and moasha._max_t == 2
    (callback,) = scheduler_callbacks(moasha)
    assert isinstance(callback, RungsCallback) and callback.scheduler is moasha
