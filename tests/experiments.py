"""Reading a search's experiment folder while it runs and after: trial results, file trees, the Optuna study."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest

TIMEOUT = 300


def result_rows(trial_dir: Path) -> list[dict]:
    """The complete lines of a trial's result.json (Ray may be writing the last one)."""
    path = trial_dir / "result.json"
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def tree(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file below the folder: size, modification time and content digest."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def study_states(experiment: Path) -> dict[float, str]:
    """The experiment's Optuna study, read as optuna-dashboard reads it: trial state by its sampled w_hint."""
    study = optuna.load_study(study_name="plugkd", storage=f"sqlite:///{experiment / 'optuna.db'}")
    return {t.params["distill/w_hint"]: t.state.name for t in study.trials}


def state_of(states: dict[float, str], w_hint: float) -> str:
    matches = [state for value, state in states.items() if value == pytest.approx(w_hint, rel=1e-12)]
    assert len(matches) == 1, (w_hint, states)
    return matches[0]


def wait_for(condition: Callable[[], object], process: subprocess.Popen, log: Path, timeout: float = TIMEOUT):
    """Poll `condition` until it returns something truthy; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"driver ended (rc {process.returncode}) before the awaited state:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting:\n{log.read_text()}")
