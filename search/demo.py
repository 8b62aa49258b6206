"""The whole job on a laptop: synthetic data, teacher, plug library, search, analysis, retraining, export and scoring.

    python search/demo.py [--task segmentation|classification]      (`make demo` runs both)

segmentation (the default): spaces/demo.yaml, a narrow DeepWV3Plus trained here on synthetic street scenes.
classification: spaces/demo_classification.yaml, a small CNN of one's own (spaces/small_cnn.py) trained here on
synthetic shape images.
Each step is skipped when its output already exists, so an interrupted demo continues where it stopped. A demo's
files land in its space's data.root, the folder of its teacher.checkpoint (its plug library and retrained student
too) and runs/<space name>; its summary is runs/<space name>/summary.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from data.errors import InputError, run_cli
from data.files import write_text_atomic
from data.names import (CURVES_PLOT, EVAL_FILE, FRONT_CSV, FRONT_PLOT, LAYERS_PLOT, REPORT_FILE, RUN_FILE, STUDENT_FILE,
                        SUMMARY_FILE, TEACHER_FILE, TRIALS_FILE)
from data.settings import DataSettings
from search.space import load_space
from trainable import tasks
from trainable.predictions_csv import PREDICTIONS_CSV

RUNS = Path("runs")


@dataclass(frozen=True)
class Demo:
    """One task's demo: its space, the synthetic data it generates, where its val images and their truth lie, and
    the front's check: a student with at most `param_share` of the teacher's params and `kept_share` of its metric."""

    space: Path
    data_args: tuple[str, ...]  # python -m data.synthetic's arguments besides --out
    val_images: Callable[[DataSettings], Path]  # what trainable.predict reads
    val_truth: Callable[[DataSettings], Path]  # what trainable.evaluate scores against
    scored: Callable[[Path], Path]  # what trainable.evaluate reads of the folder trainable.predict writes
    param_share: float
    kept_share: float


DEMOS = {
    tasks.Segmentation.name: Demo(
        Path("spaces/demo.yaml"),
        ("--train", "64", "--val", "48", "--extra", "96", "--size", "64", "128", "--seed", "0"),
        lambda data: data.root / "leftImg8bit" / data.val, lambda data: data.root / "gtFine" / data.val,
        lambda out: out, param_share=0.6, kept_share=0.9),
    tasks.Classification.name: Demo(
        Path("spaces/demo_classification.yaml"),
        ("--layout", "imagefolder", "--classes", "8", "--train", "64", "--val", "16", "--extra", "512", "--size", "16",
         "--seed", "0"),
        lambda data: data.root / data.val, lambda data: data.root / data.val,
        lambda out: out / PREDICTIONS_CSV, param_share=0.4, kept_share=0.95),
}


def step(title: str, done: bool, args: list[str], timings: dict[str, float]) -> None:
    """Run one stage as its own process, its output streaming through; skipped when `done`."""
    if done:
        print(f"== {title}: already there, skipped", flush=True)
        timings[title] = 0.0
        return
    print(f"== {title}", flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, *args])
    timings[title] = time.monotonic() - started
    if code != 0:
        raise SystemExit(code)
    print(f"== {title}: {timings[title]:.0f}s", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search/demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=tasks.names(), default=tasks.Segmentation.name,
                        help="which demo (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    demo = DEMOS[_parser().parse_args(argv).task]
    started = time.monotonic()
    space = load_space(demo.space)
    experiment = RUNS / space.name
    students = space.teacher.checkpoint.parent
    predictions = experiment / "predictions"
    timings: dict[str, float] = {}

    step("synthetic data", all(space.data.folder(f).is_dir() for f in space.data.unlabeled),
         ["-m", "data.synthetic", "--out", str(space.data.root), *demo.data_args], timings)
    step("teacher", space.teacher.checkpoint.is_file(), ["search/teacher.py", "--space", str(demo.space)], timings)
    step("plug library", (experiment / TRIALS_FILE).is_file(), ["search/library.py", "--space", str(demo.space)],
         timings)
    resume = (experiment / RUN_FILE).is_file()
    step("search", (experiment / TRIALS_FILE).is_file(),
         ["search/run.py", "--resume", str(experiment)] if resume else
         ["search/run.py", "--space", str(demo.space), "--name", space.name, "--storage", str(RUNS)], timings)
    step("analysis", (experiment / REPORT_FILE).is_file(), ["-m", "analysis", str(experiment)], timings)
    step("retrain best trial, export", (students / STUDENT_FILE).is_file(),
         ["search/retrain.py", str(experiment), "--out", str(students.parent), "--name", students.name], timings)
    step("predict val", demo.scored(predictions).exists(),
         ["-m", "trainable.predict", "--student", str(students / STUDENT_FILE),
          "--images", str(demo.val_images(space.data)), "--out", str(predictions)], timings)
    print("== official evaluation of the predictions", flush=True)
    given, truth = space.task.score_inputs
    scored = subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", given.name, str(demo.scored(predictions)),
         truth.name, str(demo.val_truth(space.data)), "--json"],
        capture_output=True, text=True,
    )
    if scored.returncode != 0:
        raise InputError(f"evaluation of {predictions} failed: {scored.stderr.strip()}")
    return summarize(demo, experiment, students, json.loads(scored.stdout), time.monotonic() - started, timings)


def summarize(demo: Demo, experiment: Path, students: Path, scored: dict, wall_s: float,
              timings: dict[str, float]) -> int:
    """Print and keep the demo's figures; exit non-zero unless the front has a small student that keeps the metric."""
    teacher = json.loads((experiment / TEACHER_FILE).read_text())
    metric, label = teacher["metric"], teacher["metric_label"]
    trials = pd.read_parquet(experiment / TRIALS_FILE)
    front = pd.read_csv(experiment / FRONT_CSV)
    retrained = json.loads((students / EVAL_FILE).read_text())
    best = trials[trials[metric].notna()].sort_values(metric, ascending=False).iloc[0]
    summary = {
        "metric": metric,
        "teacher": {"params": int(teacher["params"]), metric: teacher[metric]},
        "best": {"trial_id": best["trial_id"], "params": int(best["params"]), metric: float(best[metric])},
        "retrained": {"path": str(students / STUDENT_FILE), "params": retrained["params"], metric: retrained[metric]},
        f"official_eval_{metric}": scored[metric],
        "trials": trials["status"].value_counts().to_dict(),
        "front_size": len(front),
        "wall_s": wall_s,
        "steps_s": timings,
    }
    write_text_atomic(experiment / SUMMARY_FILE, json.dumps(summary, indent=2))

    print(f"\nteacher: {teacher['params'] / 1e6:.3f}M params, val {label} {teacher[metric]:.4f}")
    print(f"front ({len(front)} of {len(trials)} trials):")
    for row in front.itertuples():
        value = getattr(row, metric)
        print(f"  {row.trial_id}  {row.params / 1e6:.3f}M ({row.params / teacher['params']:.0%})  "
              f"{label} {value:.4f} ({value / teacher[metric]:.0%} of the teacher)  {row.policy_summary}")
    small = front[(front["params"] <= demo.param_share * teacher["params"])
                  & (front[metric] >= demo.kept_share * teacher[metric])]
    verdict = "yes" if len(small) else "no"
    print(f"a student with <= {demo.param_share:.0%} of the params keeping >= {demo.kept_share:.0%} of the {label}: "
          f"{verdict}")
    print(f"retrained best trial {best['trial_id']}: {retrained['params'] / 1e6:.3f}M params, val {label} "
          f"{retrained[metric]:.4f}; official evaluation of its predictions: {scored[metric]:.4f}")
    print(f"plots and report: {experiment}/{FRONT_PLOT}, {CURVES_PLOT}, {LAYERS_PLOT}, {REPORT_FILE}")
    print("steps: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {wall_s:.0f}s")
    return 0 if len(small) and abs(scored[metric] - retrained[metric]) < 1e-6 else 1


if __name__ == "__main__":
    run_cli(main)
