"""Fake experiment folders in the layout the search writes (teacher.json, run.json, trials.parquet,
per-trial result.json, the plug library's plugs.parquet), for the analysis tests."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.names import (
    COMPLETED, ERROR, INFEASIBLE, KEEP, MEASURED_STATUSES, PLUGS_FILE, RESULT_FILE, RUN_FILE, STATUSES, STOPPED_EARLY,
    TEACHER_FILE, TRIALS_FILE,
)
from trainable import tasks

LAYERS = [f"mod{m}.block{b}.convs.conv{c}" for m in (5, 6) for b in (1, 2, 3) for c in (1, 2)]
# op: (share of a layer's params saved, metric drop it costs a layer of sensitivity 1 after distillation)
OPS = {"keep": (0.0, 0.0), "dws": (0.88, 0.012), "group4": (0.7, 0.006), "bottleneck2": (0.6, 0.004)}
# the first layer is the least sensitive, the last the most; a plug inserted without training costs SOLO times more
SENSITIVITY = dict(zip(LAYERS, np.linspace(0.4, 1.6, len(LAYERS))))
SOLO = 3.0
ERROR_REASONS = ["nonfinite_loss", "RuntimeError: CUDA out of memory", None]


@dataclass(frozen=True)
class Task:
    """What the producers write for one task: the score metric, its label, the teacher's figures."""

    name: str
    metric: str
    label: str
    teacher: dict
    others: tuple[str, ...] = ()


SEGMENTATION = Task(tasks.Segmentation.name, "miou", "mIoU",
                    {"arch": "deepwv3plus", "params": 137_000_000, "flops": 2_000_000_000_000, "latency_ms": 180.0,
                     "miou": 0.834})
CLASSIFICATION = Task(tasks.Classification.name, "top1", "top-1",
                      {"arch": "resnet56", "params": 855_770, "flops": 126_000_000, "latency_ms": None,
                       "top1": 0.935, "top5": 0.998}, others=("top5",))
LATENCY_AT_TEACHER = {SEGMENTATION.name: 180.0, CLASSIFICATION.name: 2.5}


def solo_drop(layer: str, op: str) -> float:
    """The teacher's metric lost with only this plug inserted (no training)."""
    return SOLO * OPS[op][1] * SENSITIVITY[layer]


def teacher_json(task: Task, legacy: bool) -> dict:
    """teacher.json as the search writes it; a legacy one predates task, metric, metric_label and latency_ms."""
    if legacy:
        return {k: v for k, v in task.teacher.items() if k != "latency_ms"}
    return {"task": task.name, "metric": task.metric, "metric_label": task.label, **task.teacher}


def write_library(file: Path, task: Task) -> pd.DataFrame:
    """plugs.parquet: every (layer, op) plug but keep, with its costs, local error and solo score."""
    layer_params = task.teacher["params"] // 30
    score = task.teacher[task.metric]
    rows = [{"layer": layer, "op": op, "params": int(layer_params * (1 - saved)),
             "flops": int(layer_params * (1 - saved) * 64), "local_error": 0.1 * drop * SENSITIVITY[layer],
             "solo_score": score - solo_drop(layer, op), "solo_drop": solo_drop(layer, op)}
            for layer in LAYERS for op, (saved, drop) in OPS.items() if op != KEEP]
    file.parent.mkdir(parents=True, exist_ok=True)
    plugs = pd.DataFrame(rows)
    plugs.to_parquet(file)
    return plugs


def make_experiment(root: Path, name: str = "exp", n_trials: int = 300, seed: int = 0, shift: float = 0.0,
                    task: Task = SEGMENTATION, legacy: bool = False, teacher: bool = True, results: bool = True,
                    library: str | None = None) -> Path:
    """Write runs-like folder root/name: trials.parquet, teacher.json, per-trial result.json files.

    legacy: the files as written before the metric was named (no task/metric in teacher.json, none of
    latency_ms, latency_pred_ms, reason, retries, predicted_drop, proposal in the table).
    library: run.json names a plugs.parquet written below root/cache: "relative" or "absolute" path, or
    "missing" (run.json names a file that is not there).
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    metric, score = task.metric, task.teacher[task.metric]
    layer_params = task.teacher["params"] // 30
    statuses = rng.choice(list(STATUSES), size=n_trials,
                          p=[0.5, 0.3, 0.12, 0.08])
    rows = []
    for i, status in enumerate(statuses):
        ops = [str(op) for op in rng.choice(list(OPS), size=len(LAYERS), p=[0.4, 0.2, 0.2, 0.2])]
        policy = dict(zip(LAYERS, ops))
        params = int(task.teacher["params"] - sum(OPS[op][0] for op in ops) * layer_params)
        drop = sum(OPS[op][1] * SENSITIVITY[layer] for layer, op in policy.items())
        base = score - 0.004 - drop + shift + rng.normal(0, 0.006)
        epochs = {COMPLETED: 9, STOPPED_EARLY: int(rng.choice([1, 3])), INFEASIBLE: 0}.get(status, 2)
        scored = status in MEASURED_STATUSES
        value = round(float(np.clip(base - 0.05 / epochs, 0, 1)), 4) if scored else None
        trial_id = f"t{seed}_{i:04d}"
        row = {"trial_id": trial_id, "status": str(status), "policy": json.dumps(policy),
               "hp.w_hint": float(rng.uniform(0.1, 10)), "hp.lr": float(rng.uniform(1e-4, 1e-2)),
               **{f"hp.policy.{layer}": op for layer, op in policy.items()},
               "params": params, "flops": params * task.teacher["flops"] // task.teacher["params"],
               metric: value, f"{metric}_last": value,
               **{other: (min(1.0, value + 0.05) if scored else None) for other in task.others},
               "epochs": epochs, "wall_s": float(epochs * 30), "checkpoint": None}
        if not legacy:
            timed = status != ERROR and rng.random() > 0.1
            latency = LATENCY_AT_TEACHER[task.name] * params / task.teacher["params"] * rng.lognormal(0, 0.05)
            row.update({
                "reason": ERROR_REASONS[int(rng.integers(len(ERROR_REASONS)))] if status == ERROR else None,
                "retries": int(rng.choice([0, 0, 0, 1, 2])),
                "latency_ms": float(latency) if timed else None,
                "latency_pred_ms": float(latency * rng.lognormal(0, 0.1)) if timed and rng.random() > 0.05 else None,
                "predicted_drop": sum(solo_drop(layer, op) for layer, op in policy.items() if op != KEEP),
                "proposal": "library" if i < 10 else str(rng.choice(["optuna", "repaired"], p=[0.95, 0.05])),
            })
        rows.append(row)
        if results and epochs:
            trial_dir = folder / f"trainable_{trial_id}_{i}_lr=0.001"
            trial_dir.mkdir()
            lines = [json.dumps({"trial_id": trial_id, "training_iteration": e, "params": params,
                                 metric: float(np.clip(base - 0.05 / e, 0, 1)), "score": base - 0.05 / e,
                                 **{other: float(np.clip(base + 0.05, 0, 1)) for other in task.others}})
                     for e in range(1, epochs + 1)]
            if i == 0:
                lines.insert(1, "{not json")
                lines.append(json.dumps({"trial_id": trial_id, "training_iteration": 99}))
            (trial_dir / RESULT_FILE).write_text("\n".join(lines) + "\n")
    pd.DataFrame(rows).to_parquet(folder / TRIALS_FILE)
    if teacher:
        (folder / TEACHER_FILE).write_text(json.dumps(teacher_json(task, legacy)))
    if library:
        plugs = root / "cache" / name / PLUGS_FILE
        if library != "missing":
            write_library(plugs, task)
        named = str(plugs) if library == "absolute" else os.path.relpath(plugs, folder)
        (folder / RUN_FILE).write_text(json.dumps({"space": "spaces/demo.yaml", "library": named}))
    return folder
