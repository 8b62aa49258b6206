"""Optuna through Ray Tune: a define-by-run space with a budget constraint, ASHA-stopped trials told as PRUNED."""
from __future__ import annotations

from typing import Mapping

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search.space import Distribution, Space
from trainable.choices import PolicyChoices


class DefineByRun:
    """Optuna define-by-run space: one categorical per policy choice plus the `distill` distributions.

    A module-level class, because Ray pickles the searcher with the space inside it.
    """

    def __init__(self, choices: PolicyChoices, searched: Mapping[str, Distribution]):
        self.choices, self.searched = choices, dict(searched)

    def __call__(self, trial: optuna.Trial) -> None:
        picks = {c.key: trial.suggest_categorical(c.name, list(c.ops)) for c in self.choices.choices}
        if self.choices.max_params is not None:
            over = self.choices.params(self.choices.policy(picks)) - self.choices.max_params
            trial.set_constraint("params_over_budget", over)  # samplers steer towards feasible policies
        for name, dist in self.searched.items():
            key = f"distill/{name}"
            if dist.kind == "loguniform":
                trial.suggest_float(key, dist.values[0], dist.values[1], log=True)
            elif dist.kind == "uniform":
                trial.suggest_float(key, dist.values[0], dist.values[1])
            elif dist.kind == "int":
                trial.suggest_int(key, dist.values[0], dist.values[1])
            else:
                trial.suggest_categorical(key, list(dist.values))


class PruningAwareOptunaSearch(OptunaSearch):
    """Tells Optuna that a trial ASHA stopped is PRUNED (Ray's OptunaSearch says COMPLETE with its last value)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped = (
            result is not None
            and not error
            and not result.get("infeasible", False)
            and result.get("epoch", 0) < result.get("epochs_total", 0)
        )
        if not stopped or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_searcher(space: Space, choices: PolicyChoices) -> OptunaSearch:
    seed = space.search.seed
    if space.search.searcher == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
        metric, mode = ["params", "miou"], ["min", "max"]
    else:
        if space.search.searcher == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed)
        metric, mode = "score", "max"
    return PruningAwareOptunaSearch(space=DefineByRun(choices, space.searched), metric=metric, mode=mode, sampler=sampler)


def make_scheduler(space: Space) -> TrialScheduler:
    asha = space.search.asha
    if asha is None:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        metric="score",
        mode="max",
        max_t=asha.max_t or space.distill.epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
