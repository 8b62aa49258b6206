"""Latency by default: a search whose space says nothing of latency reports each trial's `latency_ms` and the
teacher's (in teacher.json), and times no plug alone (no latency budget or objective needs the table)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from data.names import COMPLETED, LATENCY_PREFIX, TEACHER_FILE, TRIALS_FILE
from data.synthetic import generate
from tests.searches import random_teacher

ROOT = Path(__file__).resolve().parents[1]


def test_a_search_without_a_latency_section_reports_latency_and_times_no_plug(tmp_path):
    generate(tmp_path / "data", train=0, val=2, size=(32, 64), seed=1, extra=4)
    teacher = random_teacher(tmp_path / "teacher.pt")
    space = {
        "teacher": {"arch": "deepwv3plus", "width": 0.0625, "checkpoint": str(teacher)},
        "data": {"root": str(tmp_path / "data"), "unlabeled": ["leftImg8bit/train_extra"], "crop": [32, 64],
                 "scale": [1.0, 1.0]},
        "policy": {"groups": [{"layers": ["mod7.*.convs.conv2"], "ops": ["keep", "dws"]}]},
        "distill": {"epochs": 1, "steps_per_epoch": 1},
        "search": {"num_samples": 2, "searcher": "random"},
    }
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(space))
    done = subprocess.run([sys.executable, "search/run.py", "--space", str(path), "--storage", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    experiment = tmp_path / "runs" / "plain"
    assert json.loads((experiment / TEACHER_FILE).read_text())["latency_ms"] > 0
    table = pd.read_parquet(experiment / TRIALS_FILE)
    assert len(table) == 2 and (table["status"] == COMPLETED).all(), table[["status", "reason"]]
    assert (table["latency_ms"] > 0).all()
    assert table["latency_pred_ms"].isna().all()  # no plug timed alone: nothing predicts a policy's latency
    [timed] = experiment.glob(f"{LATENCY_PREFIX}*.json")
    assert json.loads(timed.read_text())["table"] == {}
