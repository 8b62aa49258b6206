"""Read an experiment folder: teacher.json, run.json, trials.parquet, per-epoch result.json files, a reference CSV.

The score metric and its label come from teacher.json (`metric`, `metric_label`); an experiment written
before teacher.json named its metric is a segmentation search scored by mIoU.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.front import measured
from analysis.policy import policies_of
from data.errors import InputError
from data.names import COSTS, MEASURED_STATUSES, PLUGS_FILE, RESULT_FILE, RUN_FILE, STATUSES, TEACHER_FILE, TRIALS_FILE

LEGACY_METRIC = "miou"
LEGACY_METRIC_LABEL = "mIoU"
COST_COLUMNS = (*COSTS, "latency_pred_ms")
NUMERIC = (*COST_COLUMNS, "epochs", "wall_s", "retries", "predicted_drop")


@dataclass(frozen=True)
class Experiment:
    """One search's trials (numeric columns as float), parsed policies, teacher figures and score metric."""

    path: Path
    trials: pd.DataFrame
    policies: pd.Series
    teacher: dict | None
    metric: str
    metric_label: str
    library: Path | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def teacher_score(self) -> float | None:
        """The teacher's value of the score metric (a fraction), when teacher.json records it."""
        value = (self.teacher or {}).get(self.metric)
        return None if value is None else float(value)

    def has(self, column: str) -> bool:
        """Whether trials.parquet has the column with at least one value."""
        return column in self.trials.columns and bool(self.trials[column].notna().any())

    def reference_x(self, x: str) -> float:
        """Hypervolume reference: the teacher's x, else the largest x over all trials."""
        value = (self.teacher or {}).get(x)
        if value is not None:
            return float(value)
        return float(self.trials[x].max())


def first_line(err: Exception) -> str:
    """An exception's message cut to its first line (its type when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def numeric_columns(table: pd.DataFrame, columns: tuple[str, ...], file: Path) -> None:
    """Convert the present ones of columns to float in place (nulls become NaN)."""
    for column in columns:
        if column not in table.columns:
            continue
        try:
            table[column] = pd.to_numeric(table[column]).astype(float)
        except (ValueError, TypeError) as err:
            raise InputError(f"{file}: column {column!r} is not numeric ({first_line(err)})") from err


def _check_fraction(values: pd.Series, column: str, file: Path) -> None:
    out_of_range = values[(values < 0) | (values > 1)]
    if not out_of_range.empty:
        raise InputError(f"{file}: column {column!r} holds {out_of_range.iloc[0]}; expected a fraction 0..1")


def _read_trials(file: Path, metric: str) -> pd.DataFrame:
    try:
        trials = pd.read_parquet(file)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{file}: cannot be read as a parquet table ({first_line(err)})") from err
    if trials.empty:
        raise InputError(f"{file}: the table is empty; expected one row per trial")
    required = ("trial_id", "status", "params", metric)
    missing = [c for c in required if c not in trials.columns]
    if missing:
        raise InputError(f"{file}: column {missing[0]!r} is missing; expected columns {', '.join(required)} "
                         "(plus policy, flops, hp.*)")
    trials = trials.reset_index(drop=True)
    trials["trial_id"] = trials["trial_id"].astype(str)
    duplicated = trials["trial_id"][trials["trial_id"].duplicated()]
    if not duplicated.empty:
        raise InputError(f"{file}: column 'trial_id' repeats {duplicated.iloc[0]!r}; expected unique ids")
    unknown = trials["status"][~trials["status"].isin(STATUSES)]
    if not unknown.empty:
        raise InputError(f"{file}: column 'status' holds {unknown.iloc[0]!r}; expected one of {', '.join(STATUSES)}")
    numeric_columns(trials, (*NUMERIC, metric, f"{metric}_last"), file)
    _check_fraction(trials[metric], metric, file)
    return trials


def _read_json_object(file: Path, expected: str) -> dict | None:
    """The JSON object in file, or None when there is no such file."""
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{file}: not readable JSON ({first_line(err)})") from err
    if not isinstance(value, dict):
        raise InputError(f"{file}: expected an object with {expected}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric_of(teacher: dict | None, file: Path) -> tuple[str, str]:
    """The score metric's name and label named by teacher.json (the legacy pair when it names none)."""
    if teacher is None or "metric" not in teacher:
        return LEGACY_METRIC, LEGACY_METRIC_LABEL
    metric = teacher["metric"]
    if not isinstance(metric, str) or not metric:
        raise InputError(f"{file}: field 'metric' is {metric!r}; expected the score metric's name (a non-empty string)")
    label = teacher.get("metric_label", metric)
    if not isinstance(label, str) or not label:
        raise InputError(f"{file}: field 'metric_label' is {label!r}; expected a label for {metric!r}")
    return metric, label


def _check_teacher(teacher: dict, metric: str, file: Path) -> None:
    for key in (*COSTS, metric):
        value = teacher.get(key)
        if value is not None and not _is_number(value):
            raise InputError(f"{file}: field {key!r} is {value!r}; expected a number or null")
    score = teacher.get(metric)
    if score is not None and not 0 <= score <= 1:
        raise InputError(f"{file}: field {metric!r} is {score!r}; expected a fraction 0..1")


def _library_path(folder: Path) -> Path | None:
    """The plug library run.json names (relative to the experiment folder unless absolute)."""
    file = folder / RUN_FILE
    run = _read_json_object(file, "the search's settings")
    if run is None or run.get("library") is None:
        return None
    value = run["library"]
    if not isinstance(value, str) or not value:
        raise InputError(f"{file}: field 'library' is {value!r}; expected the path of a {PLUGS_FILE}")
    path = Path(value)
    return (folder / path).resolve()


def load_experiment(path: str | Path, x: str = "params") -> Experiment:
    """Read and check an experiment folder; it must hold at least one measured trial with a known x."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: experiment folder not found")
    file = folder / TRIALS_FILE
    if not file.is_file():
        raise InputError(f"{file}: not found; expected the search's one-row-per-trial table")
    teacher_file = folder / TEACHER_FILE
    teacher = _read_json_object(teacher_file, "arch, task, metric, params, flops")
    metric, label = _metric_of(teacher, teacher_file)
    if teacher is not None:
        _check_teacher(teacher, metric, teacher_file)
    trials = _read_trials(file, metric)
    if x not in trials.columns:
        raise InputError(f"{file}: column {x!r} is missing; expected it for --x {x}")
    if trials[x].isna().all():
        raise InputError(f"{file}: column {x!r} holds no value; expected measured {x} for --x {x}")
    if measured(trials, x, metric).empty:
        raise InputError(f"{file}: no trial has a measured {metric} and {x} "
                         f"(status {' or '.join(MEASURED_STATUSES)}); nothing to analyse")
    try:
        policies = policies_of(trials)
    except ValueError as err:
        raise InputError(f"{file}: {err}") from err
    return Experiment(folder, trials, policies, teacher, metric, label, _library_path(folder))


def _epoch_rows(file: Path, metric: str) -> list[dict]:
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
                   metric: float(record[metric])}
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(row[metric]):
            rows.append(row)
    return rows


def load_curves(path: str | Path, metric: str) -> pd.DataFrame:
    """The metric per epoch of every trial, from every result.json below the folder (last report wins)."""
    rows = [row for file in sorted(Path(path).glob(f"**/{RESULT_FILE}")) for row in _epoch_rows(file, metric)]
    curves = pd.DataFrame(rows, columns=["trial_id", "epoch", metric])
    curves = curves.drop_duplicates(["trial_id", "epoch"], keep="last")
    return curves.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)


def load_reference(path: str | Path, metric: str) -> pd.DataFrame:
    """Reference students: CSV with name, params and the metric (a column named after it, or score).

    Optional flops and latency_ms; params in units, not millions. The metric is read as a fraction 0..1;
    a column with any value above 1 is read as percent and divided by 100. The result names it metric.
    """
    file = Path(path)
    try:
        table = pd.read_csv(file)
    except (OSError, ValueError) as err:
        raise InputError(f"{file}: cannot be read as CSV ({first_line(err)})") from err
    expected = f"expected columns name, params, {metric} (or score)"
    for column in ("name", "params"):
        if column not in table.columns:
            raise InputError(f"{file}: column {column!r} is missing; {expected}")
    if metric not in table.columns:
        if "score" not in table.columns:
            raise InputError(f"{file}: column {metric!r} (or 'score') is missing; {expected}")
        table = table.rename(columns={"score": metric})
    numeric_columns(table, (*COSTS, metric), file)
    if (table[metric] > 1).any():
        table[metric] = table[metric] / 100
    if ((table[metric] < 0) | (table[metric] > 1)).any():
        raise InputError(f"{file}: column {metric!r} out of range; expected a fraction 0..1 or percent 0..100")
    table["name"] = table["name"].astype(str)
    return table
