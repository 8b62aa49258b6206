"""Retrain a search's best (or a chosen) trial to full length, or run one distillation outside a search.

    python search/retrain.py runs/<name> [--trial ID] [--epochs E] [--from-scratch]
    python search/retrain.py --space FILE --policy FILE [--set key=value ...] [--epochs E] [--name N]

Writes checkpoints/<name>/student.pt (rebuilds alone: trainable.surgery.load_student), policy.json, eval.json.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from data.errors import InputError, run_cli
from search.space import Space, load_space
from trainable.checkpoint import read_file
from trainable.config import DistillSettings, pick_device
from trainable.distill import Distillation
from trainable.inventory import count_params
from trainable.surgery import save_student
from trainable.tune_trainable import STATE_FILE


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search/retrain.py", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", type=Path, help="experiment folder of a finished search")
    parser.add_argument("--trial", help="trial_id to retrain (default: highest miou among the feasible)")
    parser.add_argument("--from-scratch", action="store_true", help="start from the policy, not the trial's checkpoint")
    parser.add_argument("--space", type=Path, help="space file, for one run outside a search (with --policy)")
    parser.add_argument("--policy", type=Path, help="JSON file {layer: op}, with --space")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="distill setting, e.g. w_kd=2")
    parser.add_argument("--epochs", type=int, help="epochs (default: the space's search.retrain_epochs, else distill.epochs)")
    parser.add_argument("--name", help="output name under checkpoints/ (default: the experiment's or the policy file's)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"), help="parent folder of the output")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if (args.experiment is None) == (args.space is None):
        parser.error("give an experiment folder, or --space with --policy")
    if args.space is not None and args.policy is None:
        parser.error("--space needs --policy")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def pick_trial(experiment: Path, trial_id: str | None) -> pd.Series:
    table_path = experiment / "trials.parquet"
    if not table_path.is_file():
        raise InputError(f"{experiment}: no trials.parquet (has the search finished? resume it with search/run.py --resume)")
    table = pd.read_parquet(table_path)
    if trial_id is not None:
        rows = table[table["trial_id"] == trial_id]
        if rows.empty:
            raise InputError(f"{table_path}: no trial {trial_id!r}")
        return rows.iloc[0]
    measured = table[table["status"].isin(["completed", "stopped_early"]) & table["miou"].notna()]
    if measured.empty:
        raise InputError(f"{table_path}: no trial with a measured miou")
    return measured.sort_values("miou", ascending=False).iloc[0]


def trial_overrides(row: pd.Series) -> dict[str, Any]:
    """The trial's sampled distillation settings, from its `hp.<name>` columns."""
    return {
        name[3:]: (value.item() if hasattr(value, "item") else value)
        for name, value in row.items()
        if name.startswith("hp.") and not name.startswith("hp.policy.") and not (isinstance(value, float) and math.isnan(value))
    }


def parse_sets(space: Space, items: Sequence[str]) -> dict[str, Any]:
    known = set(DistillSettings.__dataclass_fields__)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise InputError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        values[key] = yaml.safe_load(text)
    missing = [name for name, dist in space.searched.items() if dist.default is None and name not in values]
    if missing:
        raise InputError(f"{space.path}: distill.{missing[0]} is searched without a default: give it with --set {missing[0]}=VALUE")
    return values


def read_policy(path: Path) -> dict[str, str]:
    try:
        policy = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON policy ({err})") from err
    if not isinstance(policy, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in policy.items()):
        raise InputError(f"{path}: expected a JSON object {{layer: op}}")
    return policy


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_state = None
    if args.experiment is not None:
        space = load_space(args.experiment / "space.yaml")
        row = pick_trial(args.experiment, args.trial)
        policy = json.loads(row["policy"])
        overrides = trial_overrides(row)
        name = args.name or args.experiment.name
        if not args.from_scratch and isinstance(row["checkpoint"], str):
            start_state = read_file(Path(row["checkpoint"]) / STATE_FILE)
        origin = f"trial {row['trial_id']} of {args.experiment} (val mIoU {row['miou']:.4f} after {row['epochs']} epochs)"
    else:
        space = load_space(args.space)
        policy = read_policy(args.policy)
        overrides = parse_sets(space, args.set)
        name = args.name or args.policy.stem
        origin = f"policy {args.policy}"
    epochs = args.epochs or space.search.retrain_epochs or space.distill.epochs
    settings = replace(space.distill, **overrides, epochs=epochs)
    out = args.out / name
    device = pick_device(args.device)
    print(f"retraining {origin} for {epochs} epochs on {device}", flush=True)
    run = Distillation(space.teacher.build(), space.teacher, policy, space.data, settings, log_dir=out / "tb", device=device)
    if start_state is not None:
        run.init_student(start_state)
    run.fit()
    result = run.last_eval
    save_student(out / "student.pt", run.student.cpu(), space.teacher.arch, space.teacher.arch_args, policy)
    (out / "policy.json").write_text(json.dumps(policy, indent=2))
    (out / "eval.json").write_text(json.dumps({
        **result.to_json(), "params": count_params(run.student), "teacher_params": run.teacher_params,
        "teacher_mIoU": run.teacher_miou, "epochs": epochs, "settings": settings.to_dict(),
    }, indent=2))
    print(f"student: {out / 'student.pt'}  params {count_params(run.student) / 1e6:.3f}M  val mIoU {result.miou:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
