"""The searchers and schedulers of a search. Optuna through Ray Tune: samplers by name, each single- or
multi-objective over the space's objectives; a define-by-run space that never trains a policy over the budget (an
over-budget proposal is repaired to the nearest feasible one and recorded as such) nor the same settings twice (a
duplicate is told to Optuna from the earlier trial's outcome and another drawn); trials a scheduler stopped told as
PRUNED and trials that failed as FAILED. Or `library` (search.library_search). Schedulers: ASHA on the score, MO-ASHA
over the objectives (search.moasha), or FIFO."""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from data.names import COSTS
from search.library_search import LibrarySearch
from search.moasha import MOASHA, RungsCallback
from search.names import LIBRARY
from search.space import MOASHASettings

if TYPE_CHECKING:
    from search.choices import PolicyChoices
    from search.space import Distribution, Space


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


# Optuna samplers by name, (seed, num_samples) -> sampler; each takes one objective or several.
SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, n: optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup(n, 10)),
    "random": lambda seed, n: optuna.samplers.RandomSampler(seed=seed),
    "nsga2": lambda seed, n: PicklableNSGAIISampler(seed=seed, population_size=_startup(n, 50)),
}
# Draws a searcher makes for one new trial before it calls the space exhausted (each duplicate is told at once).
MAX_DRAWS = 100


@dataclass(frozen=True)
class Objectives:
    """Result keys a search optimises and each one's mode (`min` for costs, `max` for metrics)."""

    names: tuple[str, ...]

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple("min" if name in COSTS else "max" for name in self.names)

    @property
    def metric(self) -> str | list[str]:
        """Ray's `metric`: one key, or the list of several."""
        return self.names[0] if len(self.names) == 1 else list(self.names)

    @property
    def mode(self) -> str | list[str]:
        return self.modes[0] if len(self.modes) == 1 else list(self.modes)


def objectives(space: Space) -> Objectives:
    """The space's `search.objectives` (one of them: a single-objective search)."""
    return Objectives(tuple(space.search.objectives))


def proposal_count(setting: int | None, num_samples: int) -> int:
    """How many first trials are proposals: `search.proposals` when set, else a quarter of the trials and at least 2;
    never more than the trials."""
    return min(num_samples, setting if setting is not None else max(2, num_samples // 4))


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


def settings_key(config: Mapping) -> str:
    """What a trial trains, from a define-by-run config (flat `policy/<key>` picks, `repaired`, `proposal` and the
    other sampled settings): the picks after repair and the other settings, as text."""
    picks = config.get("repaired") or {k.removeprefix("policy/"): v for k, v in config.items() if k.startswith("policy/")}
    rest = {k: v for k, v in config.items() if not k.startswith("policy/") and k not in ("repaired", "proposal")}
    return json.dumps([sorted(picks.items()), sorted(rest.items())])


class TellingOptunaSearch(OptunaSearch):
    """Tells Optuna what happened: scheduler-stopped trials PRUNED, failed ones FAILED, and never the same settings
    to train twice.

    Ray's OptunaSearch reports a stopped trial COMPLETE with its last value, and an errored trial with
    whatever it reported last; it also fails on results of a trial it does not know, which a resumed
    search has when its driver was killed between two files of one snapshot (this one ignores them).
    A suggestion whose settings (`settings_key`) a trial of this search already has is told at once with that trial's
    outcome (or, while that trial runs, when it ends) and another drawn; after `MAX_DRAWS` duplicates in a row the
    space counts as exhausted and the search ends. `first` trials, `(params, proposal)`, are enqueued before any sample.
    """

    def __init__(self, *args, first: Sequence[tuple[dict, str]] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.exhausted = False  # no new settings to draw: the search ends before num_samples trials
        self._trained: dict[str, int] = {}  # settings key -> number of the study's trial that trains them
        self._copies: dict[int, list[int]] = {}  # a running trial's number -> duplicates told when it ends
        self._fail_strays()
        for point, proposal in first:
            self._ot_study.enqueue_trial(point, user_attrs={"proposal": proposal})

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_strays()

    def _fail_strays(self) -> None:
        """Tell FAILED the study's running trials that no Ray trial holds and no running one waits for: a driver killed
        after asking Optuna for them and before its next snapshot. A study in memory has none; the experiment's SQLite
        file may."""
        held = {trial.number for trial in self._ot_trials.values()}
        held.update(number for copies in self._copies.values() for number in copies)
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in held:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)

    def suggest(self, trial_id: str) -> dict | str:
        for _ in range(MAX_DRAWS):
            ot_trial = self._ot_study.ask()
            config = self._suggest_from_define_by_run_func(self._space, ot_trial)
            key = settings_key(config)
            if key not in self._trained:
                self._trained[key] = ot_trial.number
                self._ot_trials[trial_id] = ot_trial
                return unflatten_dict(config)
            self._tell_duplicate(ot_trial, self._trained[key])
        self.exhausted = True
        return Searcher.FINISHED

    def _tell_duplicate(self, ot_trial: optuna.Trial, earlier: int) -> None:
        """Tell a duplicate of trial `earlier` its outcome, or hold it until that trial ends."""
        ot_trial.set_user_attr("duplicate_of", earlier)
        done = self._ot_study.get_trials(deepcopy=False)[earlier]
        if done.state == TrialState.RUNNING:
            self._copies.setdefault(earlier, []).append(ot_trial.number)
        else:
            self._ot_study.tell(ot_trial.number, done.values if done.state == TrialState.COMPLETE else None,
                                state=done.state)

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
        number = self._ot_trials[trial_id].number
        state, values = self._outcome(result, error)
        for told in (number, *self._copies.pop(number, [])):
            self._ot_study.tell(told, values, state=state)
        self._completed_trials.add(trial_id)

    def _outcome(self, result: dict | None, error: bool) -> tuple[TrialState, list[float] | None]:
        """FAIL for an error (or an objective it lacks), PRUNED for a trial stopped before its last epoch, else
        COMPLETE with the objectives' values (an infeasible policy's report has them all)."""
        if error or (result or {}).get("error_reason") is not None:
            return TrialState.FAIL, None
        if result is None or (not result.get("infeasible", False) and result.get("epoch", 0) < result.get("epochs_total", 0)):
            return TrialState.PRUNED, None
        names = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(name) for name in names]
        if any(value is None or math.isnan(value) for value in values):
            return TrialState.FAIL, None
        return TrialState.COMPLETE, [float(value) for value in values]


def searched_defaults(space: Space) -> dict[str, object]:
    """The searched distillation settings that have a default in the space, with it."""
    return {name: d.default for name, d in space.searched.items() if d.default is not None}


def first_picks(space: Space, choices: PolicyChoices, num_samples: int) -> list[dict[str, str]]:
    """The picks of the first trials: choices.proposals, as many as proposal_count says."""
    return choices.proposals(proposal_count(space.search.proposals, num_samples))


def first_points(space: Space, choices: PolicyChoices, num_samples: int) -> list[tuple[dict, str]]:
    """The first trials as Optuna params with the space's defaults for searched settings, and their `proposal`:
    `library` with a plug library, `cheapest` without."""
    defaults = {f"distill/{name}": value for name, value in searched_defaults(space).items()}
    proposal = "library" if choices.layer_drop else "cheapest"
    return [({**{f"policy/{key}": op for key, op in picks.items()}, **defaults}, proposal)
            for picks in first_picks(space, choices, num_samples)]


def make_searcher(space: Space, choices: PolicyChoices, num_samples: int,
                  storage: optuna.storages.BaseStorage | None = None) -> Searcher:
    """The space's searcher; `storage` keeps an Optuna searcher's study (the experiment's SQLite file). The proposals
    go first."""
    goals = objectives(space)
    if space.search.searcher == LIBRARY:
        return LibrarySearch(choices, goals.metric, goals.mode, space.search.score,
                             first=first_picks(space, choices, num_samples), distill=searched_defaults(space))
    return TellingOptunaSearch(
        space=DefineByRun(choices, space.searched),
        metric=goals.metric,
        mode=goals.mode,
        sampler=SAMPLERS[space.search.searcher](space.search.seed, num_samples),
        storage=storage,
        study_name="plugkd",
        first=first_points(space, choices, num_samples),
    )


def make_scheduler(space: Space) -> TrialScheduler:
    """ASHA on the score or MO-ASHA over the objectives, both over epochs (a resumed trial is judged by its epoch, not
    by how many reports it made), or FIFO."""
    settings = space.search.scheduler
    if settings is None:
        return FIFOScheduler()
    max_t = settings.max_t or space.distill.epochs
    if isinstance(settings, MOASHASettings):
        goals = objectives(space)
        return MOASHA(goals.names, goals.modes, max_t=max_t, grace_period=settings.grace_period,
                      reduction_factor=settings.reduction_factor)
    return ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=max_t,
                         grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)


def scheduler_callbacks(scheduler: TrialScheduler) -> list[Callback]:
    """Callbacks that keep the scheduler's state in the experiment's snapshots (MO-ASHA's rungs)."""
    return [RungsCallback(scheduler)] if isinstance(scheduler, MOASHA) else []
