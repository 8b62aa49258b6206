"""Retrain a search's best (or a chosen) trial to full length, or run one distillation outside a search.

    python search/retrain.py runs/<name> [--trial ID] [--epochs E] [--from-scratch]
    python search/retrain.py --space FILE --policy FILE [--set key=value ...] [--epochs E] [--name N]

Writes checkpoints/<name>/student.pt (rebuilds alone: trainable.surgery.load_student), policy.json,
eval.json (the task's metrics) and student.onnx (verified in onnxruntime; --no-onnx skips it).
The experiment may be a folder or an s3:// URI.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
import yaml

from data.errors import InputError, run_cli
from data.schema import Reader, keys
from data.names import EVAL_FILE, MEASURED_STATUSES, POLICY_FILE, RUN_FILE, STUDENT_FILE, STUDENT_ONNX, TRIALS_FILE
from search.experiment import read_space_copy
from search.library import start_plugs
from search.space import Space, load_space
from search.storage import Location, write_bytes_atomic
from search.trial import STATE_FILE
from trainable.checkpoint import read_file
from trainable.config import DEVICE_HELP, DistillSettings, pick_device
from trainable.distill import Distillation
from trainable.export import ExportError, check_exportable, export_verified
from trainable.inventory import count_params
from trainable.surgery import read_policy, save_student


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search/retrain.py", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", help="experiment folder (or s3:// URI) of a finished search")
    parser.add_argument("--trial", help="trial_id to retrain (default: the best score among the measured)")
    parser.add_argument("--from-scratch", action="store_true", help="start from the policy, not the trial's checkpoint")
    parser.add_argument("--space", type=Path, help="space file, for one run outside a search (with --policy)")
    parser.add_argument("--policy", type=Path, help="JSON file {layer: op}, with --space")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="distill setting, e.g. w_kd=2")
    parser.add_argument("--epochs", type=int, help="epochs (default: the space's search.retrain_epochs, else distill.epochs)")
    parser.add_argument("--name", help="output name under checkpoints/ (default: the experiment's or the policy file's)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"), help="parent folder of the output")
    parser.add_argument("--no-onnx", action="store_true", help="do not export student.onnx beside student.pt")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.experiment is None) == (args.space is None):
        parser.error("give an experiment folder, or --space with --policy")
    if args.space is not None and args.policy is None:
        parser.error("--space needs --policy")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def pick_trial(experiment: Location, trial_id: str | None, metric: str) -> pd.Series:
    if not experiment.exists(TRIALS_FILE):
        raise InputError(f"{experiment.base}: no {TRIALS_FILE} (has the search finished? resume it with search/run.py --resume)")
    table = experiment.read_parquet(TRIALS_FILE)
    where = f"{experiment.base}/{TRIALS_FILE}"
    if trial_id is not None:
        rows = table[table["trial_id"] == trial_id]
        if rows.empty:
            raise InputError(f"{where}: no trial {trial_id!r}")
        return rows.iloc[0]
    measured = table[table["status"].isin(MEASURED_STATUSES) & table[metric].notna()]
    if measured.empty:
        raise InputError(f"{where}: no trial with a measured {metric}")
    return measured.sort_values(metric, ascending=False).iloc[0]


def read_trial_state(experiment: Location, checkpoint: str) -> dict:
    """A trial's checkpoint state, from the experiment's filesystem (a local folder or an object store)."""
    if experiment.local is not None:
        return read_file(Path(checkpoint) / STATE_FILE)
    folder = Location(experiment.fs, checkpoint, checkpoint)
    with tempfile.TemporaryDirectory() as local:
        (Path(local) / STATE_FILE).write_bytes(folder.read_bytes(STATE_FILE))
        return read_file(Path(local) / STATE_FILE)


def trial_overrides(row: pd.Series) -> dict[str, Any]:
    """The trial's sampled distillation settings, from its `hp.<name>` columns."""
    return {
        name[3:]: (value.item() if hasattr(value, "item") else value)
        for name, value in row.items()
        if name.startswith("hp.") and not name.startswith("hp.policy.") and not (isinstance(value, float) and math.isnan(value))
    }


def _scalar(text: str) -> Any:
    """A YAML value, where a number YAML 1.1 reads as text (`3e-3`, no dot) is the number."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_sets(space: Space, items: Sequence[str]) -> dict[str, Any]:
    known = set(keys(DistillSettings))
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise InputError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        values[key] = _scalar(text)
        if isinstance(values[key], Mapping):
            raise InputError(f"--set {item!r}: expected one value, not a distribution")
    checked = Reader(Path("--set")).read(DistillSettings, values, "distill")  # the schema's rules, one-line errors
    values = {key: getattr(checked, key) for key in values}
    missing = [name for name, dist in space.searched.items() if dist.default is None and name not in values]
    if missing:
        raise InputError(f"{space.path}: distill.{missing[0]} is searched without a default: give it with --set {missing[0]}=VALUE")
    return values


def distill_policy(space: Space, policy: dict[str, str], settings: DistillSettings, device: torch.device,
                   log_dir: Path | None = None, start_state: dict | None = None, teacher: torch.nn.Module | None = None,
                   log: Callable[[str], None] = print) -> Distillation:
    """One distillation of `policy` trained to its last epoch: from `start_state` (a trial's checkpoint) when given,
    else from the space's plug library under `init: library`, else from the ops' own start. `teacher` (the space's,
    loaded) saves reading it again."""
    teacher = teacher if teacher is not None else space.teacher.build()
    plugs = None if start_state is not None else start_plugs(replace(space, distill=settings), teacher, policy, device)
    run = Distillation(teacher, space.teacher, policy, space.data, settings, log_dir=log_dir, device=device, log=log)
    if start_state is not None:
        run.init_student(start_state)
    elif plugs is not None:
        run.init_plugs(plugs)
    run.fit()
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_state = None
    if args.experiment is not None:
        experiment = Location.parse(args.experiment)
        if not experiment.exists(RUN_FILE):
            raise InputError(f"{args.experiment}: not a plugkd experiment folder (no {RUN_FILE})")
        space = read_space_copy(experiment, json.loads(experiment.read_text(RUN_FILE)))
        metric = space.search.score
        row = pick_trial(experiment, args.trial, metric)
        policy = json.loads(row["policy"])
        overrides = trial_overrides(row)
        name = args.name or experiment.name
        origin = f"trial {row['trial_id']} of {experiment.base} (val {metric} {row[metric]:.4f} after {row['epochs']} epochs)"
        if not args.from_scratch and isinstance(row["checkpoint"], str):
            start_state = read_trial_state(experiment, row["checkpoint"])
            origin += f" from its checkpoint {row['checkpoint']}"
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
    start = "" if start_state is not None else (" from the plug library" if settings.init == "library" else
                                                 " from the ops' start (the teacher's weights, data-free)")
    print(f"retraining {origin}{start} for {epochs} epochs on {device}", flush=True)
    run = distill_policy(space, policy, settings, device, out / "tb", start_state)
    result = run.last_eval
    t = space.teacher
    student = run.student.cpu()
    d, val = space.data, run.val.dataset
    save_student(out / STUDENT_FILE, student, t.arch, t.arch_args, policy, task=t.task, input_size=space.input_size,
                 search_path=t.search_path,
                 preprocess={"image_size": d.image_size, "eval_resize": d.eval_resize, "mean": list(d.mean), "std": list(d.std)},
                 classes=getattr(getattr(val, "dataset", val), "classes", None))  # a Subset (max_val_images) wraps the split
    write_bytes_atomic(out / POLICY_FILE, json.dumps(policy, indent=2).encode())
    write_bytes_atomic(out / EVAL_FILE, json.dumps({
        **result.to_json(), "metric": space.search.score, "params": count_params(run.student),
        "teacher_params": run.teacher_params, "teacher": run.teacher_metrics, "epochs": epochs,
        "settings": settings.to_dict(),
    }, indent=2).encode())
    score = space.search.score
    print(f"student: {out / STUDENT_FILE}  params {count_params(run.student) / 1e6:.3f}M  val {score} {result[score]:.4f}")
    return 0 if args.no_onnx else export_student(student, out / STUDENT_ONNX, space.input_size)


def export_student(student, path: Path, input_size: tuple[int, int]) -> int:
    """student.onnx beside student.pt, verified in onnxruntime: 0, or 1 when verification fails.

    A model ONNX cannot hold (e.g. Gated-SCNN's OpenCV step) is said, not fatal.
    """
    try:
        check_exportable(student, str(path))
    except InputError as err:
        print(f"no ONNX export: {err}")
        return 0
    try:
        difference = export_verified(student, path, input_size)
    except ExportError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 1
    print(f"exported {path} (onnxruntime agrees with PyTorch: largest difference {difference:.2e})")
    return 0


if __name__ == "__main__":
    run_cli(main)
