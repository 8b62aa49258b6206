"""`trials.parquet`: one row per trial of an experiment folder, read through Ray's ExperimentAnalysis.

Metric columns are named after the task's metrics (`miou`, `miou_last`; `top1`, `top1_last`, ...): the
best value over the trial's epochs and its last one.
"""
from __future__ import annotations

import json
from typing import Sequence

import pandas as pd
from ray.tune import ExperimentAnalysis

from data.names import (COMPLETED, COSTS, ERROR, FLOPS, INFEASIBLE, LATENCY_MS, MEASURED_STATUSES, PARAMS, STOPPED_EARLY,
                        TRIALS_FILE)
from search.storage import Location

FINISHED = ("TERMINATED", "ERROR")


def trial_status(ray_status: str, last: dict) -> str:
    if ray_status == "ERROR" or last.get("error_reason"):
        return ERROR
    if last.get("infeasible", False):
        return INFEASIBLE
    return COMPLETED if last.get("epoch", 0) >= last.get("epochs_total", 1) else STOPPED_EARLY


def _hp_columns(config: dict) -> dict:
    picks = config.get("repaired") or config.get("policy", {})
    row = {f"hp.policy.{key}": op for key, op in picks.items()}
    row.update({f"hp.{name}": value for name, value in config.get("distill", {}).items()})
    return row


def _reason(trial, last: dict) -> str | None:
    if last.get("error_reason"):
        return last["error_reason"]
    if trial.status == "ERROR":
        error = trial.get_error()  # the exception Ray recorded, when it could read it back
        message = str(error).strip().splitlines() if error is not None else []
        return message[-1] if message else "worker failed"
    return None


def retries(trial) -> int:
    """How many times Ray restarted the trial after its worker died: its failures, less the last one of a trial
    that ended in ERROR (max_failures used up)."""
    failures = int(trial.num_failures)
    return failures - 1 if trial.status == "ERROR" and failures > 0 else failures


def trials_table(analysis: ExperimentAnalysis, metrics: Sequence[str]) -> pd.DataFrame:
    """Finished trials of an experiment, in trial order, with the columns documented in docs/experiment.md."""
    rows = []
    for trial in analysis.trials:
        if trial.status not in FINISHED:
            continue
        last = trial.last_result or {}
        status = trial_status(trial.status, last)
        measured = status in MEASURED_STATUSES or (status == ERROR and last.get("epoch", 0) > 0)
        row = {
            "trial_id": trial.trial_id,
            "status": status,
            "reason": _reason(trial, last),
            "retries": retries(trial),
            "proposal": last.get("proposal"),
            "policy": last.get("policy", json.dumps({})),
            **_hp_columns(trial.config),
            **{cost: last.get(cost) for cost in COSTS},
            "latency_pred_ms": last.get("latency_pred_ms"),
            "predicted_drop": last.get("predicted_drop"),
        }
        for name in metrics:
            row[name] = trial.metric_analysis.get(name, {}).get("max") if measured else None
            row[f"{name}_last"] = last.get(name) if measured else None
        row.update({
            "epochs": last.get("epoch", 0),
            "wall_s": last.get("time_total_s"),
            "checkpoint": trial.checkpoint.path if trial.checkpoint is not None else None,
        })
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        for column in (PARAMS, FLOPS, "retries"):
            table[column] = table[column].astype("Int64")
        for column in (LATENCY_MS, "latency_pred_ms", "predicted_drop", *metrics, *(f"{m}_last" for m in metrics)):
            table[column] = table[column].astype("Float64")
    return table


def write_trials(experiment: Location, analysis: ExperimentAnalysis, metrics: Sequence[str]) -> pd.DataFrame:
    table = trials_table(analysis, metrics)
    experiment.write_parquet(TRIALS_FILE, table)
    return table
