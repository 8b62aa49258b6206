"""`searcher: library`: a Ray Tune searcher that learns from the plug library and from its own trials.

First the proposals (search.searcher.first_points), then, for each new trial: the library's additive predictor (per-plug
solo drops) is refitted to the drops of the trials that ran to their last epoch (`proposals.refit`, the solo drops as
prior mean), and the next policy is the solver's least-predicted-drop pick inside the widest gap of the current front.
The front is over the measured trials (params down, the score up, trials stopped early included): its value at a cost
is the best score measured at that cost or less. Its gaps are the spans between neighbouring measured costs (a
dominated trial splits a gap too, so a gap that yields nothing better closes) and from the cheapest policy's cost to
the first and from the last to the budget, each as wide as the distance between its ends in params over the budget's
span and front value over the teacher's score. In a gap the pick costs more than its lower measured cost and at most
half way to the upper one (up to it when nothing fits). Gaps are measured in params even when latency is an objective
(the solver's cost is params; a latency budget still holds). No policy is proposed twice; when every policy has been,
the search ends. Searched distillation settings take their space defaults (those without one, DistillSettings'
defaults): this searcher searches policies only.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from ray.tune.search import Searcher

from search.proposals import refit

if TYPE_CHECKING:
    from search.choices import PolicyChoices

PROPOSAL = "refit"  # the `proposal` of the trials this searcher picks after the first ones


@dataclass(frozen=True)
class Measured:
    """What a finished trial measured: its params, its score, the teacher's score, and whether it ran every epoch."""

    params: float
    score: float
    teacher_score: float
    complete: bool


class LibrarySearch(Searcher):
    """The `first` picks (`{choice key: op}`), then refitted-predictor picks at the front's gaps."""

    def __init__(self, choices: PolicyChoices, metric: str | list[str], mode: str | list[str], score: str,
                 first: Sequence[dict[str, str]] = (), distill: Mapping[str, object] | None = None,
                 strength: float = 1.0):
        if not choices.layer_drop:
            raise ValueError("the library searcher needs the plug library's drops (choices.layer_drop)")
        super().__init__(metric=metric, mode=mode)
        self.choices, self.score, self.strength = choices, score, strength
        self.distill = dict(distill or {})
        self.pending = list(first)
        self.exhausted = False  # every policy proposed: the search ends before num_samples trials
        self.suggested: dict[str, dict[str, str]] = {}  # trial_id -> picks
        self.measured: dict[str, Measured] = {}

    def suggest(self, trial_id: str) -> dict | str:
        tried = list(self.suggested.values())
        while self.pending and self.pending[0] in tried:
            self.pending.pop(0)
        proposal = "library" if self.pending else PROPOSAL
        picks = self.pending.pop(0) if self.pending else self.next_picks()
        if picks is None:
            self.exhausted = True
            return Searcher.FINISHED
        self.suggested[trial_id] = picks
        return {"policy": picks, "distill": dict(self.distill), "proposal": proposal}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or result.get("error_reason") or result.get("infeasible") or trial_id not in self.suggested:
            return
        teacher = result.get(f"teacher_{self.score}")
        if result.get(self.score) is None or teacher is None:
            return
        self.measured[trial_id] = Measured(float(result["params"]), float(result[self.score]), float(teacher),
                                           result.get("epoch", 0) >= result.get("epochs_total", 0))

    def drops(self) -> dict[tuple[str, str], float]:
        """Per-(layer, op) drops refitted to the complete trials' measured drops."""
        rows = [(self.choices.policy(self.suggested[trial_id]), m.teacher_score - m.score)
                for trial_id, m in self.measured.items() if m.complete]
        return refit(self.choices.layer_drop, rows, self.strength)

    def gaps(self) -> list[tuple[float, float, float]]:
        """`(least, half, most)` params per gap, widest first: a gap's pick costs within [least, half], or within
        [least, most] when nothing fits there."""
        low = float(self.choices.params(self.choices.policy(self.choices.cheapest())))
        high = float(self.choices.max_params if self.choices.max_params is not None else self.choices.teacher_params)
        teacher = max((m.teacher_score for m in self.measured.values()), default=1.0) or 1.0
        span = max(high - low, 1.0)
        costs = sorted({m.params for m in self.measured.values()})
        # The front's score at each measured cost: the best score at that cost or less.
        best = {x: max(m.score for m in self.measured.values() if m.params <= x) for x in costs}
        ends = [low, *(x for x in costs if low < x < high), high]
        gaps = []
        for x0, x1 in zip(ends, ends[1:]):
            dy = (best[x1] - best[x0]) / teacher if x0 in best and x1 in best else 0.0
            least, most = x0 + (x0 in best), x1 - (x1 in best)  # a measured cost is taken; an end's is not
            gaps.append((math.hypot((x1 - x0) / span, dy), least, min(most, (x0 + x1) / 2), most))
        return [(least, half, most) for _, least, half, most in sorted(gaps, key=lambda gap: -gap[0])]

    def next_picks(self) -> dict[str, str] | None:
        """The solver's pick at the widest gap that has an untried policy; any untried policy after; None when none."""
        drops, tried = self.drops(), list(self.suggested.values())
        for least, half, most in self.gaps():
            for ceiling in dict.fromkeys((half, most)):
                picks = self.choices.best_between(least, ceiling, drops, tried)
                if picks is not None:
                    return picks
        return self.choices.best_between(-math.inf, math.inf, drops, tried)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__.copy(), out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as stored:
            self.__dict__.update(pickle.load(stored))
