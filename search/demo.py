"""The whole job on a laptop: synthetic data, teacher, search, analysis, retraining, prediction and scoring.

    python search/demo.py            (what `make demo` runs)

Each step is skipped when its output already exists, so an interrupted demo continues where it stopped.
Everything lands in data/synthetic, checkpoints/demo and runs/demo; the summary is runs/demo/summary.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from data.errors import InputError, run_cli
from data.files import write_text_atomic
from search.space import load_space

SPACE = Path("spaces/demo.yaml")
NAME = "demo"
RUNS = Path("runs")
DATA_ARGS = ["--train", "64", "--val", "16", "--extra", "96", "--size", "64", "128", "--seed", "0"]
PARAM_SHARE, KEPT_SHARE = 0.6, 0.9


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="search/demo.py", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    started = time.monotonic()
    space = load_space(SPACE)
    experiment = RUNS / NAME
    students = space.teacher.checkpoint.parent
    predictions = experiment / "predictions"
    timings: dict[str, float] = {}

    step("synthetic data", (space.data.root / "leftImg8bit").is_dir(),
         ["-m", "data.synthetic", "--out", str(space.data.root), *DATA_ARGS], timings)
    step("teacher", space.teacher.checkpoint.is_file(), ["search/teacher.py", "--space", str(SPACE)], timings)
    step("plug library", (experiment / "trials.parquet").is_file(), ["search/library.py", "--space", str(SPACE)], timings)
    resume = (experiment / "run.json").is_file()
    step("search", (experiment / "trials.parquet").is_file(),
         ["search/run.py", "--resume", str(experiment)] if resume else
         ["search/run.py", "--space", str(SPACE), "--name", NAME, "--storage", str(RUNS)], timings)
    step("analysis", (experiment / "report.md").is_file(), ["-m", "analysis", str(experiment)], timings)
    step("retrain best trial", (students / "student.pt").is_file(),
         ["search/retrain.py", str(experiment), "--out", str(students.parent)], timings)
    step("predict val", predictions.is_dir(),
         ["-m", "trainable.predict", "--student", str(students / "student.pt"),
          "--images", str(space.data.root / "leftImg8bit" / space.data.val), "--out", str(predictions)], timings)
    print("== official evaluation of the predictions", flush=True)
    scored = subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", "--pred-dir", str(predictions),
         "--gt-dir", str(space.data.root / "gtFine" / space.data.val), "--json"],
        capture_output=True, text=True,
    )
    if scored.returncode != 0:
        raise InputError(f"evaluation of {predictions} failed: {scored.stderr.strip()}")
    return summarize(experiment, students, json.loads(scored.stdout), time.monotonic() - started, timings)


def summarize(experiment: Path, students: Path, scored: dict, wall_s: float, timings: dict[str, float]) -> int:
    """Print and keep the demo's figures; exit non-zero unless the front has a small student that keeps the metric."""
    teacher = json.loads((experiment / "teacher.json").read_text())
    metric, label = teacher["metric"], teacher["metric_label"]
    trials = pd.read_parquet(experiment / "trials.parquet")
    front = pd.read_csv(experiment / "pareto.csv")
    retrained = json.loads((students / "eval.json").read_text())
    best = trials[trials[metric].notna()].sort_values(metric, ascending=False).iloc[0]
    summary = {
        "metric": metric,
        "teacher": {"params": int(teacher["params"]), metric: teacher[metric]},
        "best": {"trial_id": best["trial_id"], "params": int(best["params"]), metric: float(best[metric])},
        "retrained": {"path": str(students / "student.pt"), "params": retrained["params"], metric: retrained[metric]},
        f"official_eval_{metric}": scored[metric],
        "trials": trials["status"].value_counts().to_dict(),
        "front_size": len(front),
        "wall_s": wall_s,
        "steps_s": timings,
    }
    write_text_atomic(experiment / "summary.json", json.dumps(summary, indent=2))

    print(f"\nteacher: {teacher['params'] / 1e6:.3f}M params, val {label} {teacher[metric]:.4f}")
    print(f"front ({len(front)} of {len(trials)} trials):")
    for row in front.itertuples():
        value = getattr(row, metric)
        print(f"  {row.trial_id}  {row.params / 1e6:.3f}M ({row.params / teacher['params']:.0%})  "
              f"{label} {value:.4f} ({value / teacher[metric]:.0%} of the teacher)  {row.policy_summary}")
    small = front[(front["params"] <= PARAM_SHARE * teacher["params"]) & (front[metric] >= KEPT_SHARE * teacher[metric])]
    verdict = "yes" if len(small) else "no"
    print(f"a student with <= {PARAM_SHARE:.0%} of the params keeping >= {KEPT_SHARE:.0%} of the {label}: {verdict}")
    print(f"retrained best trial {best['trial_id']}: {retrained['params'] / 1e6:.3f}M params, val {label} "
          f"{retrained[metric]:.4f}; official evaluation of its predictions: {scored[metric]:.4f}")
    print(f"plots and report: {experiment}/pareto.png, curves.png, layers.png, report.md")
    print("steps: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {wall_s:.0f}s")
    return 0 if len(small) and abs(scored[metric] - retrained[metric]) < 1e-6 else 1


if __name__ == "__main__":
    run_cli(main)
