"""Multi-objective asynchronous successive halving (MO-ASHA: Schmucker et al. 2021, Syne Tune's `MOASHA`) as a Ray Tune
scheduler.

Rungs sit at `grace_period * reduction_factor**k` epochs below `max_t` (time is the reported `epoch`, so a trial resumed
from a checkpoint is judged by its epoch). Asynchronous like Ray's ASHAScheduler: when a trial first reports at or past
a rung's epoch, its objectives are recorded at the highest such rung, and it continues when it lies in the best
`ceil(n / reduction_factor)` of the n results recorded there so far (itself included), ranked by non-dominated front
over the objectives (each by its mode), then by crowding distance, larger first; ties favour the trial. It stops
otherwise, and every trial stops at `max_t`. A trial stopped early stays PRUNED for Optuna (search.searcher).

Ray Tune 2.x keeps no scheduler state in its experiment snapshots; `RungsCallback` carries the rungs in the
snapshots' callback state, so a search resumed after its driver was killed promotes against the rungs it had.
"""
from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING, Sequence

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.pareto import better_than, minimised

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


Rung = tuple[int, dict[str, list[float]]]  # (epoch, {trial_id: objective values})


def rung_epochs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """`grace_period * reduction_factor**k` for k = 0, 1, ... below `max_t`."""
    epochs, epoch = [], grace_period
    while epoch < max_t:
        epochs.append(epoch)
        epoch *= reduction_factor
    return epochs


class MOASHA(FIFOScheduler):
    """MO-ASHA over `objectives` (result keys), each minimised or maximised as `modes` says."""

    def __init__(self, objectives: Sequence[str], modes: Sequence[str], max_t: int, grace_period: int = 1,
                 reduction_factor: int = 3, time_attr: str = "epoch"):
        if len(objectives) != len(modes) or not set(modes) <= {"min", "max"}:
            raise ValueError(f"expected one mode (min or max) per objective, got {list(objectives)} and {list(modes)}")
        if not 1 <= grace_period <= max_t or reduction_factor < 2:
            raise ValueError(f"expected 1 <= grace_period <= max_t and reduction_factor >= 2, got {grace_period}, "
                             f"{max_t} and {reduction_factor}")
        super().__init__()
        self._objectives, self._modes = list(objectives), list(modes)
        self._time_attr, self._max_t, self._reduction_factor = time_attr, max_t, reduction_factor
        self._rungs: list[Rung] = [(epoch, {}) for epoch in rung_epochs(grace_period, reduction_factor, max_t)]
        self._num_stopped = 0

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        action = TrialScheduler.STOP if result[self._time_attr] >= self._max_t else self._record(trial.trial_id, result)
        self._num_stopped += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        if self._time_attr in result:
            self._record(trial.trial_id, result)

    def _record(self, trial_id: str, result: dict) -> str:
        """Record the result at the highest rung its epoch has passed, unless the trial is there already; the decision."""
        values = [result.get(name) for name in self._objectives]
        if any(value is None or math.isnan(value) for value in values):
            return TrialScheduler.CONTINUE
        passed = [recorded for epoch, recorded in self._rungs if result[self._time_attr] >= epoch]
        if not passed or trial_id in passed[-1]:
            return TrialScheduler.CONTINUE
        recorded = passed[-1]
        recorded[trial_id] = [float(value) for value in values]
        return TrialScheduler.CONTINUE if self.promoted(recorded, trial_id) else TrialScheduler.STOP

    def promoted(self, recorded: dict[str, list[float]], trial_id: str) -> bool:
        """Whether the trial lies in the best ceil(n / reduction_factor) of the rung's n results."""
        ids = list(recorded)
        points = minimised([recorded[i] for i in ids], self._modes)
        return better_than(points, ids.index(trial_id)) < math.ceil(len(ids) / self._reduction_factor)

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {epoch}: {len(recorded)}" for epoch, recorded in self._rungs)
        return f"Using MO-ASHA over {', '.join(self._objectives)}: num_stopped={self._num_stopped}; recorded at {rungs}"

    def get_state(self) -> dict:
        return {"rungs": [(epoch, dict(recorded)) for epoch, recorded in self._rungs], "num_stopped": self._num_stopped}

    def set_state(self, state: dict) -> None:
        self._rungs, self._num_stopped = state["rungs"], state["num_stopped"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.get_state(), out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as stored:
            self.set_state(pickle.load(stored))


class RungsCallback(Callback):
    """Keeps a scheduler's state in the experiment's snapshots (Tune saves and restores callback state, not the
    scheduler's). Give Tune the same scheduler object in TuneConfig: they are pickled together in tuner.pkl."""

    def __init__(self, scheduler: MOASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return self.scheduler.get_state()

    def set_state(self, state: dict) -> None:
        self.scheduler.set_state(state)
