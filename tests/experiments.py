"""Reading a search while it runs and after: its progress lines, trial results, file trees, the Optuna study."""
from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

import optuna
import pytest

from data.names import COMPLETED, INFEASIBLE, OPTUNA_FILE, RESULT_FILE, STOPPED_EARLY

TIMEOUT = 300
TRIAL_ENDS = (COMPLETED, STOPPED_EARLY, INFEASIBLE)  # the statuses a progress line gives a trial that ended


def trial_end(line: str) -> tuple[str, str] | None:
    """(trial id, status) when a line of the driver's progress says a trial ended, else None."""
    fields = line.split()
    return (fields[0], fields[5]) if len(fields) >= 6 and fields[5] in TRIAL_ENDS else None


def result_rows(trial_dir: Path) -> list[dict]:
    """The complete lines of a trial's result.json (Ray may be writing the last one)."""
    path = trial_dir / RESULT_FILE
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
    study = optuna.load_study(study_name="plugkd", storage=f"sqlite:///{experiment / OPTUNA_FILE}")
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


def snapshot_trials(text: str) -> dict[str, tuple[str, int]]:
    """A Ray experiment snapshot (`experiment_state-*.json`): each trial's status and its last reported iteration
    (0 before its first report); empty for a snapshot being written."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    trials = {}
    for state, runtime in data["trial_data"]:
        state, runtime = json.loads(state), json.loads(runtime)
        trials[state["trial_id"]] = (state["status"], (runtime.get("last_result") or {}).get("training_iteration", 0))
    return trials


def created_trials(state: bytes) -> int:
    """How many trials Tune's trial generator had created, from its snapshot (`search_gen_state-*.json`, a pickle);
    -1 for a snapshot being written."""
    try:
        return int(pickle.loads(state)["counter"])
    except Exception:  # a partly written pickle fails in many ways
        return -1


def local_snapshot(experiment: Path) -> dict[str, tuple[str, int]]:
    """The newest snapshot the driver wrote into a local experiment folder; empty unless its trial generator's
    snapshot counts the same trials (a driver killed between the two files would resume with other counts)."""
    return consistent(*(max(experiment.glob(f"{kind}-*.json"), key=lambda path: path.stat().st_mtime_ns, default=None)
                        for kind in ("experiment_state", "search_gen_state")))


def consistent(experiment_state: Path | bytes | None, generator_state: Path | bytes | None) -> dict[str, tuple[str, int]]:
    """The trials of an experiment snapshot when the trial generator's snapshot counts as many, else empty."""
    if experiment_state is None or generator_state is None:
        return {}
    read = lambda state: state.read_bytes() if isinstance(state, Path) else state  # noqa: E731
    trials = snapshot_trials(read(experiment_state).decode())
    return trials if created_trials(read(generator_state)) == len(trials) else {}


def recorded(snapshot: dict[str, tuple[str, int]], ended: Iterable[str], running: dict[str, int] | None = None) -> bool:
    """The snapshot holds the `ended` trials as TERMINATED and each `running` one at (at least) its reported epoch,
    so a resume neither runs the first again nor misses the second's checkpoint."""
    return (all(snapshot.get(trial, ("", 0))[0] == "TERMINATED" for trial in ended)
            and all(snapshot.get(trial, ("", 0))[1] >= epoch for trial, epoch in (running or {}).items()))
