"""The samplers behind `search.searcher`: each survives the pickling Ray Tune does to snapshot an experiment."""
from __future__ import annotations

import pickle

import optuna
import pytest

from search.searcher import SAMPLERS


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_pickles_mid_study_and_samples_after(name: str) -> None:
    # Ray pickles the searcher (with its sampler) in tuner.pkl and every experiment snapshot; Optuna 5.1's
    # NSGAIISampler holds a threading.Lock, which made every nsga2 search fail before its first trial.
    sampler = SAMPLERS[name].build(0, 8)
    directions = ["minimize", "maximize"] if SAMPLERS[name].multi_objective else ["maximize"]
    study = optuna.create_study(sampler=sampler, directions=directions)
    for _ in range(5):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, [x, 1 - x] if len(directions) == 2 else x)
    restored = pickle.loads(pickle.dumps(study.sampler))
    assert type(restored) is type(sampler)
    study.sampler = restored
    study.tell(study.ask(), [0.5, 0.5] if len(directions) == 2 else 0.5)
    assert len(study.trials) == 6
