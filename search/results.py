"""`trials.parquet`: one row per trial of an experiment folder, read through Ray's ExperimentAnalysis."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from ray.tune import ExperimentAnalysis

STATUSES = ("completed", "stopped_early", "infeasible", "error")
FINISHED = ("TERMINATED", "ERROR")


def trial_status(ray_status: str, last: dict) -> str:
    if ray_status == "ERROR":
        return "error"
    if last.get("infeasible", False):
        return "infeasible"
    return "completed" if last.get("epoch", 0) >= last.get("epochs_total", 1) else "stopped_early"


def _hp_columns(config: dict) -> dict:
    row = {f"hp.policy.{key}": op for key, op in config.get("policy", {}).items()}
    row.update({f"hp.{name}": value for name, value in config.get("distill", {}).items()})
    return row


def trials_table(analysis: ExperimentAnalysis) -> pd.DataFrame:
    """Finished trials of an experiment, in trial order, with the columns documented in README."""
    rows = []
    for trial in analysis.trials:
        if trial.status not in FINISHED:
            continue
        last = trial.last_result or {}
        status = trial_status(trial.status, last)
        measured = status in ("completed", "stopped_early")
        best = trial.metric_analysis.get("miou", {}).get("max") if measured else None
        rows.append({
            "trial_id": trial.trial_id,
            "status": status,
            "policy": last.get("policy", json.dumps({})),
            **_hp_columns(trial.config),
            "params": last.get("params"),
            "flops": last.get("flops"),
            "miou": best,
            "miou_last": last.get("miou") if measured else None,
            "epochs": last.get("epoch", 0),
            "wall_s": last.get("time_total_s"),
            "checkpoint": trial.checkpoint.path if trial.checkpoint is not None else None,
        })
    table = pd.DataFrame(rows)
    if not table.empty:
        table["params"] = table["params"].astype("Int64")
        table["flops"] = table["flops"].astype("Int64")
        table["miou"] = table["miou"].astype("Float64")
        table["miou_last"] = table["miou_last"].astype("Float64")
    return table


def write_trials(experiment: Path, analysis: ExperimentAnalysis) -> pd.DataFrame:
    table = trials_table(analysis)
    tmp = experiment / ".trials.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(experiment / "trials.parquet")
    return table
