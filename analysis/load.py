"""Read an experiment folder: trials.parquet, teacher.json, per-epoch result.json files, a reference CSV."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.front import MEASURED_STATUSES, measured
from analysis.policy import policies_of
from data.errors import InputError

STATUSES = ("completed", "stopped_early", "infeasible", "error")
REQUIRED = ("trial_id", "status", "params", "miou")
NUMERIC = ("params", "flops", "miou", "miou_last", "epochs", "wall_s")


@dataclass(frozen=True)
class Experiment:
    """One search's trials (numeric columns as float), parsed policies and teacher figures."""

    path: Path
    trials: pd.DataFrame
    policies: pd.Series
    teacher: dict | None

    @property
    def name(self) -> str:
        return self.path.name

    def reference_x(self, x: str) -> float:
        """Hypervolume reference: the teacher's x, else the largest x over all trials."""
        value = (self.teacher or {}).get(x)
        if value is not None:
            return float(value)
        return float(self.trials[x].max())


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_trials(file: Path) -> pd.DataFrame:
    try:
        trials = pd.read_parquet(file)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{file}: cannot be read as a parquet table ({_first_line(err)})") from err
    if trials.empty:
        raise InputError(f"{file}: the table is empty; expected one row per trial")
    missing = [c for c in REQUIRED if c not in trials.columns]
    if missing:
        raise InputError(f"{file}: column {missing[0]!r} is missing; expected columns {', '.join(REQUIRED)} "
                         "(plus policy, flops, hp.*)")
    trials = trials.reset_index(drop=True)
    trials["trial_id"] = trials["trial_id"].astype(str)
    duplicated = trials["trial_id"][trials["trial_id"].duplicated()]
    if not duplicated.empty:
        raise InputError(f"{file}: column 'trial_id' repeats {duplicated.iloc[0]!r}; expected unique ids")
    unknown = trials["status"][~trials["status"].isin(STATUSES)]
    if not unknown.empty:
        raise InputError(f"{file}: column 'status' holds {unknown.iloc[0]!r}; expected one of {', '.join(STATUSES)}")
    for column in NUMERIC:
        if column not in trials.columns:
            continue
        try:
            trials[column] = pd.to_numeric(trials[column]).astype(float)
        except (ValueError, TypeError) as err:
            raise InputError(f"{file}: column {column!r} is not numeric ({_first_line(err)})") from err
    out_of_range = trials["miou"][(trials["miou"] < 0) | (trials["miou"] > 1)]
    if not out_of_range.empty:
        raise InputError(f"{file}: column 'miou' holds {out_of_range.iloc[0]}; expected a fraction 0..1")
    return trials


def _read_teacher(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        teacher = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{file}: not readable JSON ({_first_line(err)})") from err
    if not isinstance(teacher, dict):
        raise InputError(f"{file}: expected an object with arch, params, flops, miou")
    for key in ("params", "flops", "miou"):
        value = teacher.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"{file}: field {key!r} is {value!r}; expected a number or null")
    return teacher


def load_experiment(path: str | Path, x: str = "params") -> Experiment:
    """Read and check an experiment folder; it must hold at least one measured trial with a known x."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: experiment folder not found")
    file = folder / "trials.parquet"
    if not file.is_file():
        raise InputError(f"{file}: not found; expected the search's one-row-per-trial table")
    trials = _read_trials(file)
    if x not in trials.columns:
        raise InputError(f"{file}: column {x!r} is missing; expected it for --x {x}")
    if measured(trials, x).empty:
        raise InputError(f"{file}: no trial has a measured miou and {x} (status {' or '.join(MEASURED_STATUSES)}); "
                         "nothing to analyse")
    try:
        policies = policies_of(trials)
    except ValueError as err:
        raise InputError(f"{file}: {err}") from err
    return Experiment(folder, trials, policies, _read_teacher(folder / "teacher.json"))


def _epoch_rows(file: Path) -> list[dict]:
    """The readable per-epoch records of one result.json; broken lines are skipped."""
    rows = []
    try:
        lines = file.read_text(errors="replace").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            record = json.loads(line)
            row = {"trial_id": str(record["trial_id"]), "epoch": int(record["training_iteration"]),
                   "miou": float(record["miou"])}
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(row["miou"]):
            rows.append(row)
    return rows


def load_curves(path: str | Path) -> pd.DataFrame:
    """Val mIoU per epoch of every trial, from every result.json below the folder (last report wins)."""
    rows = [row for file in sorted(Path(path).glob("**/result.json")) for row in _epoch_rows(file)]
    curves = pd.DataFrame(rows, columns=["trial_id", "epoch", "miou"])
    curves = curves.drop_duplicates(["trial_id", "epoch"], keep="last")
    return curves.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)


def load_reference(path: str | Path) -> pd.DataFrame:
    """Reference students: CSV with columns name, params, miou (optional flops); params in units, not millions.

    miou is read as a fraction 0..1; a column with any value above 1 is read as percent and divided by 100.
    """
    file = Path(path)
    try:
        table = pd.read_csv(file)
    except (OSError, ValueError) as err:
        raise InputError(f"{file}: cannot be read as CSV ({_first_line(err)})") from err
    for column in ("name", "params", "miou"):
        if column not in table.columns:
            raise InputError(f"{file}: column {column!r} is missing; expected columns name, params, miou")
    for column in ("params", "miou", "flops"):
        if column in table.columns:
            try:
                table[column] = pd.to_numeric(table[column]).astype(float)
            except (ValueError, TypeError) as err:
                raise InputError(f"{file}: column {column!r} is not numeric ({_first_line(err)})") from err
    if (table["miou"] > 1).any():
        table["miou"] = table["miou"] / 100
    if ((table["miou"] < 0) | (table["miou"] > 1)).any():
        raise InputError(f"{file}: column 'miou' out of range; expected a fraction 0..1 or percent 0..100")
    table["name"] = table["name"].astype(str)
    return table
