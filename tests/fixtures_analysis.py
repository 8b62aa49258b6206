"""Fake experiment folders in the layout the search writes, for the analysis tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

LAYERS = [f"mod{m}.block{b}.convs.conv{c}" for m in (5, 6) for b in (1, 2, 3) for c in (1, 2)]
OPS = {"keep": (0.0, 0.0), "dws": (0.88, 0.012), "group4": (0.7, 0.006), "bottleneck2": (0.6, 0.004)}
LAYER_PARAMS = 4_718_592
TEACHER = {"arch": "deepwv3plus", "params": 137_000_000, "flops": 2_000_000_000_000, "miou": 0.834}


def make_experiment(root: Path, name: str = "exp", n_trials: int = 300, seed: int = 0, miou_shift: float = 0.0,
                    teacher: bool = True, results: bool = True) -> Path:
    """Write runs-like folder root/name with trials.parquet, teacher.json and per-trial result.json files."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    statuses = rng.choice(["completed", "stopped_early", "infeasible", "error"], size=n_trials,
                          p=[0.5, 0.3, 0.12, 0.08])
    rows = []
    for i, status in enumerate(statuses):
        ops = rng.choice(list(OPS), size=len(LAYERS), p=[0.4, 0.2, 0.2, 0.2])
        policy = dict(zip(LAYERS, (str(op) for op in ops)))
        saved = sum(OPS[op][0] for op in ops) * LAYER_PARAMS
        params = int(TEACHER["params"] - saved)
        base = 0.83 - sum(OPS[op][1] for op in ops) + miou_shift + rng.normal(0, 0.01)
        epochs = {"completed": 9, "stopped_early": int(rng.choice([1, 3])), "infeasible": 0}.get(status, 2)
        scored = status in ("completed", "stopped_early")
        miou = round(float(np.clip(base - 0.05 / epochs, 0, 1)), 3) if scored else None
        trial_id = f"t{seed}_{i:04d}"
        rows.append({"trial_id": trial_id, "status": str(status), "policy": json.dumps(policy),
                     "hp.w_hint": float(rng.uniform(0.1, 10)), "hp.lr": float(rng.uniform(1e-4, 1e-2)),
                     **{f"hp.policy.{layer}": op for layer, op in policy.items()},
                     "params": params, "flops": params * 14_000, "miou": miou, "miou_last": miou,
                     "epochs": epochs, "wall_s": float(epochs * 30), "checkpoint": None})
        if results and epochs:
            trial_dir = folder / f"trainable_{trial_id}_{i}_lr=0.001"
            trial_dir.mkdir()
            lines = [json.dumps({"trial_id": trial_id, "training_iteration": e, "params": params,
                                 "miou": float(np.clip(base - 0.05 / e, 0, 1)), "score": base - 0.05 / e})
                     for e in range(1, epochs + 1)]
            if i == 0:
                lines.insert(1, "{not json")
                lines.append(json.dumps({"trial_id": trial_id, "training_iteration": 99}))
            (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    pd.DataFrame(rows).to_parquet(folder / "trials.parquet")
    if teacher:
        (folder / "teacher.json").write_text(json.dumps(TEACHER))
    return folder
