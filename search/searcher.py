"""Optuna through Ray Tune: samplers by name, a define-by-run space that never trains a policy over the
budget (an over-budget proposal is repaired to the nearest feasible one and recorded as such), trials
ASHA stopped told as PRUNED, and trials that failed told as FAILED."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

if TYPE_CHECKING:
    from search.choices import PolicyChoices
    from search.space import Distribution, Space


@dataclass(frozen=True)
class Sampler:
    build: Callable[[int, int], optuna.samplers.BaseSampler]  # (seed, num_samples) -> sampler
    multi_objective: bool = False


def _startup(num_samples: int, most: int) -> int:
    """Random start-up trials (or NSGA-II's population): a quarter of the search, 4 to `most`.

    Optuna's own defaults (10 for TPE, 50 for NSGA-II) would make a search of a few dozen trials random.
    """
    return max(4, min(most, num_samples // 4))


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that Ray can pickle: Optuna 5.1's genetic samplers hold a `threading.Lock`, which Ray Tune's
    experiment snapshot (it pickles the searcher with its sampler) cannot serialise; the lock is made anew."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


SAMPLERS: dict[str, Sampler] = {
    "tpe": Sampler(lambda seed, n: optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup(n, 10))),
    "random": Sampler(lambda seed, n: optuna.samplers.RandomSampler(seed=seed)),
    "nsga2": Sampler(lambda seed, n: PicklableNSGAIISampler(seed=seed, population_size=_startup(n, 50)),
                     multi_objective=True),
}
SEARCHERS = tuple(SAMPLERS)
# How each cost objective is optimised; the task's metrics are maximised.
COSTS = ("params", "flops", "latency_ms")


def _suggest(trial: optuna.Trial, key: str, dist: Distribution) -> None:
    if dist.kind == "loguniform":
        trial.suggest_float(key, dist.values[0], dist.values[1], log=True)
    elif dist.kind == "uniform":
        trial.suggest_float(key, dist.values[0], dist.values[1])
    elif dist.kind == "int":
        trial.suggest_int(key, dist.values[0], dist.values[1])
    else:
        trial.suggest_categorical(key, list(dist.values))


class DefineByRun:
    """Optuna define-by-run space: one categorical per policy choice plus the `distill` distributions.

    An over-budget proposal is repaired (fewest changed choices) and the repaired picks are returned as
    the trial's `repaired` constant, which the trainable trains instead. A module-level class, because
    Ray pickles the searcher with the space inside it.
    """

    def __init__(self, choices: PolicyChoices, searched: Mapping[str, Distribution]):
        self.choices, self.searched = choices, dict(searched)

    def __call__(self, trial: optuna.Trial) -> dict:
        picks = {c.key: trial.suggest_categorical(c.name, list(c.ops)) for c in self.choices.choices}
        for name, dist in self.searched.items():
            _suggest(trial, f"distill/{name}", dist)
        proposal = trial.user_attrs.get("proposal", "optuna")  # the library's solver enqueued its proposals
        if self.choices.feasible_picks(picks):
            return {"proposal": proposal}
        trial.set_user_attr("repaired", True)
        return {"proposal": "repaired", "repaired": self.choices.repair(picks)}


class TellingOptunaSearch(OptunaSearch):
    """Tells Optuna what happened: ASHA-stopped trials PRUNED and failed ones FAILED.

    Ray's OptunaSearch reports a stopped trial COMPLETE with its last value, and an errored trial with
    whatever it reported last; it also fails on results of a trial it does not know, which a resumed
    search has when its driver was killed between two files of one snapshot (this one ignores them).
    `first` trials are enqueued before any sample, tagged `proposal: library`.
    """

    def __init__(self, *args, first: list[dict] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self._fail_strays()
        for point in first:
            self._ot_study.enqueue_trial(point, user_attrs={"proposal": "library"})

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_strays()

    def _fail_strays(self) -> None:
        """Tell FAILED the study's running trials that no Ray trial holds: a driver killed after asking Optuna
        for them and before its next snapshot. A study in memory has none; the experiment's SQLite file may."""
        held = {trial.number for trial in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in held:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials:  # see on_trial_complete for the others
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            # A trial the driver started after the searcher's last snapshot and before it was killed: Ray resumes it
            # from the experiment's snapshot, but the study never had it (its stray was told FAILED on restore).
            self._completed_trials.add(trial_id)
            return
        if trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        failed = error or (result is not None and result.get("error_reason") is not None)
        stopped = (
            result is not None and not failed and not result.get("infeasible", False)
            and result.get("epoch", 0) < result.get("epochs_total", 0)
        )
        if not failed and not stopped:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL if failed else TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def objectives(space: Space) -> tuple[list[str], list[str]]:
    """Result keys and modes the searcher optimises: the score alone, or the space's objectives (multi-objective)."""
    if not SAMPLERS[space.search.searcher].multi_objective:
        return ["score"], ["max"]
    names = list(space.search.objectives)
    return names, ["min" if name in COSTS else "max" for name in names]


def first_points(space: Space, choices: PolicyChoices) -> list[dict]:
    """The plug library solver's proposals as Optuna parameters, with the space's defaults for searched settings."""
    if not choices.layer_drop or space.search.proposals == 0:
        return []
    defaults = {f"distill/{name}": d.default for name, d in space.searched.items() if d.default is not None}
    return [{**{f"policy/{key}": op for key, op in picks.items()}, **defaults}
            for picks in choices.proposals(space.search.proposals)]


def make_searcher(space: Space, choices: PolicyChoices, num_samples: int,
                  storage: optuna.storages.BaseStorage | None = None) -> OptunaSearch:
    """The searcher; `storage` keeps its study (the experiment's SQLite file). The library's proposals go first."""
    metric, mode = objectives(space)
    points = first_points(space, choices)
    return TellingOptunaSearch(
        space=DefineByRun(choices, space.searched),
        metric=metric if len(metric) > 1 else metric[0],
        mode=mode if len(mode) > 1 else mode[0],
        sampler=SAMPLERS[space.search.searcher].build(space.search.seed, num_samples),
        storage=storage,
        study_name="plugkd",
        first=points,
    )


def make_scheduler(space: Space) -> TrialScheduler:
    """ASHA over epochs (a resumed trial is judged by its epoch, not by how many reports it made), or FIFO."""
    asha = space.search.asha
    if asha is None:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        metric="score",
        mode="max",
        max_t=asha.max_t or space.distill.epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
