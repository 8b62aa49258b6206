"""Terminal progress of a search, one line per trial event, in the project's columns."""
from __future__ import annotations

import time

from ray.tune import Callback
from ray.tune.experiment import Trial

from search.results import trial_status

class ProgressPrinter(Callback):
    """Prints trial, params, the score metric, epoch and status whenever a trial reports or ends."""

    def __init__(self, metric: str):
        self.metric = metric

    def setup(self, **info) -> None:
        self.started = time.monotonic()
        self.header_shown = False

    def _line(self, trial: Trial, result: dict, status: str) -> None:
        if not self.header_shown:
            print(f"{'trial':<12} {'params':>9} {'ratio':>6} {self.metric:>7} {'epoch':>7}  status", flush=True)
            self.header_shown = True
        params = result.get("params")
        value = result.get(self.metric)
        print(
            f"{trial.trial_id:<12} "
            f"{params / 1e6 if params is not None else float('nan'):>8.3f}M "
            f"{result.get('param_ratio', float('nan')):>6.1%} "
            f"{value if value is not None and not result.get('infeasible') else float('nan'):>7.4f} "
            f"{result.get('epoch', 0):>3}/{result.get('epochs_total', 0):<3}  {status}"
            f"  [{time.monotonic() - self.started:.0f}s]",
            flush=True,
        )

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        if result.get("warning"):
            print(f"warning: trial {trial.trial_id}: {result['warning']}", flush=True)
        if not result.get("infeasible"):
            self._line(trial, result, "running")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        last = trial.last_result or {}
        status = trial_status("TERMINATED", last)
        if status == "infeasible":
            status = "infeasible (over budget, not trained)"
        elif status == "error":
            status = f"error: {last['error_reason']}"
        self._line(trial, last, status)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._line(trial, trial.last_result or {}, f"error (see {trial.path}/error.txt)")
