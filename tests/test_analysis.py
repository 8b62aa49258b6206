"""analysis: Pareto front, hypervolume, knee, predictors, plug library, the report files and the command's errors."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from analysis import (drop_table, hypervolume, knee_index, layer_sensitivity, load_curves, load_reference,
                      pareto_front, pareto_mask, spearman)
from analysis.__main__ import main
from analysis.policy import describe, summarize
from data.errors import run_cli
from data.names import (
    COMPARE_PLOT, COMPLETED, CURVES_PLOT, ERROR, FRONT_CSV, FRONT_PLOT, INFEASIBLE, LAYERS_PLOT, MEASURED_STATUSES,
    PLUGS_FILE, REPORT_FILE, RUN_FILE, SENSITIVITY_PLOT, STATUSES, TEACHER_FILE, TRIALS_FILE,
)
from tests.fixtures_analysis import CLASSIFICATION, LAYERS, SEGMENTATION, make_experiment

ROOT = Path(__file__).resolve().parents[1]


def brute_front(points: list[tuple[float, float]]) -> list[bool]:
    """Non-dominated by definition: no other point at least as good in both and better in one."""
    return [not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in points) for x, y in points]


small = st.integers(0, 6)
points_strategy = st.lists(st.tuples(small, small), max_size=40)


@settings(deadline=None)
@given(points_strategy)
def test_pareto_mask_matches_brute_force_with_ties(points):
    x = [p[0] for p in points]
    y = [p[1] for p in points]
    assert pareto_mask(x, y).tolist() == brute_front(points)


@settings(deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e9, allow_nan=False), st.floats(0, 1, allow_nan=False)), max_size=60))
def test_pareto_mask_matches_brute_force_on_floats(points):
    assert pareto_mask([p[0] for p in points], [p[1] for p in points]).tolist() == brute_front(points)


@settings(deadline=None)
@given(st.lists(st.tuples(small, st.one_of(st.none(), small), st.sampled_from(STATUSES)), min_size=1, max_size=40))
def test_pareto_front_of_a_table_keeps_exactly_the_measured_non_dominated(rows):
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(len(rows))],
                          "params": [float(r[0]) for r in rows],
                          "miou": [np.nan if r[1] is None else r[1] / 6 for r in rows],
                          "status": [r[2] for r in rows]})
    pool = table[table["status"].isin(MEASURED_STATUSES) & table["miou"].notna()]
    keep = brute_front(list(zip(pool["params"], pool["miou"])))
    assert set(pareto_front(table, "params", "miou")["trial_id"]) == set(pool["trial_id"][keep])


def test_equal_points_are_all_kept():
    assert pareto_mask([1, 1, 2, 1], [0.5, 0.5, 0.9, 0.4]).tolist() == [True, True, True, False]


@pytest.mark.parametrize("x, y, ref, expected", [
    ([], [], 10, 0.0),
    ([2], [0.5], 10, 4.0),
    ([2, 5], [0.5, 0.8], 10, 1.5 + 4.0),
    ([2, 5, 6], [0.5, 0.8, 0.7], 10, 5.5),       # a dominated point adds nothing
    ([2, 2, 5], [0.5, 0.5, 0.8], 10, 5.5),       # nor does a duplicate
    ([12], [0.9], 10, 0.0),                      # beyond the reference point
    ([0, 4], [0.25, 1.0], 8, 4 * 0.25 + 4 * 1.0),
])
def test_hypervolume_hand_computed(x, y, ref, expected):
    assert hypervolume(x, y, ref) == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(points_strategy)
def test_hypervolume_of_front_equals_hypervolume_of_all(points):
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    mask = pareto_mask(x, y)
    assert hypervolume(x[mask], y[mask], 7) == pytest.approx(hypervolume(x, y, 7))


def test_knee_is_the_point_farthest_above_the_chord():
    assert knee_index([10, 0, 1], [1.0, 0.0, 0.9]) == 2
    assert knee_index([3], [0.5]) == 0


def test_policy_summary_and_words():
    policy = {"a": "dws", "b": "dws", "c": "group4", "d": "keep"}
    assert summarize(policy) == "3 plugged: 2 dws, 1 group4"
    assert summarize({"a": "keep"}) == "nothing plugged"
    assert "`dws` replaces 2 layers (`a`, `b`)" in describe(policy)



@settings(deadline=None)
@given(st.lists(st.tuples(small, small), min_size=2, max_size=30))
def test_spearman_matches_scipy_with_ties(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    want = spearmanr(a, b).statistic if len(set(a)) > 1 and len(set(b)) > 1 else np.nan
    assert spearman(a, b) == pytest.approx(want, nan_ok=True)


def test_spearman_is_undefined_below_two_points():
    assert np.isnan(spearman([1.0], [2.0])) and np.isnan(spearman([], []))


def test_layer_sensitivity_ranks_layers_by_mean_solo_drop():
    plugs = pd.DataFrame({"layer": ["b", "b", "a", "a", "c"], "op": ["dws", "group4", "dws", "group4", "dws"],
                          "solo_drop": [0.01, 0.03, 0.05, 0.07, np.nan]})
    table = layer_sensitivity(plugs)
    assert table["layer"].tolist() == ["a", "b"]
    assert table[["worst_op", "mildest_op"]].iloc[1].tolist() == ["group4", "dws"]
    assert table["mean_drop"].tolist() == pytest.approx([0.06, 0.02])
    heat = drop_table(plugs)
    assert heat.index.tolist() == ["b", "a", "c"] and heat.columns.tolist() == ["dws", "group4"]
    assert np.isnan(heat.loc["c", "group4"])


def test_reference_csv_metric_column_or_score(tmp_path):
    (tmp_path / "f.csv").write_text("name,params,miou\nhand,92000000,0.821\n")
    (tmp_path / "p.csv").write_text("name,params,miou\nhand,92000000,82.1\n")
    (tmp_path / "s.csv").write_text("name,params,score\nhand,500000,91.2\n")
    assert load_reference(tmp_path / "f.csv", "miou")["miou"].iloc[0] == pytest.approx(0.821)
    assert load_reference(tmp_path / "p.csv", "miou")["miou"].iloc[0] == pytest.approx(0.821)
    assert load_reference(tmp_path / "s.csv", "top1")["top1"].iloc[0] == pytest.approx(0.912)
    with pytest.raises(Exception, match=r"column 'top1' \(or 'score'\) is missing"):
        load_reference(tmp_path / "f.csv", "top1")


@dataclass(frozen=True)
class Run:
    """An experiment folder after one `python -m analysis` run, and what the run printed."""

    folder: Path
    out: str

    @property
    def trials(self) -> pd.DataFrame:
        return pd.read_parquet(self.folder / TRIALS_FILE)

    @property
    def report(self) -> str:
        return (self.folder / REPORT_FILE).read_text()


def _run(*argv: object) -> str:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main([str(a) for a in argv]) == 0
    return buffer.getvalue()


def _brute_ids(trials: pd.DataFrame, x: str, metric: str) -> set[str]:
    pool = trials[trials["status"].isin(MEASURED_STATUSES) & trials[metric].notna() & trials[x].notna()]
    return set(pool["trial_id"][brute_front(list(zip(pool[x], pool[metric])))])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def seg(root) -> Run:
    """Segmentation (miou), every new column, the library named by a relative path, a miou reference CSV."""
    folder = make_experiment(root, "seg", 200, seed=0, library="relative")
    reference = root / "seg_ref.csv"
    reference.write_text("name,params,miou\nhand 92M,92000000,0.821\nhand 79M,79000000,0.813\n")
    return Run(folder, _run(folder, "--reference", reference))


@pytest.fixture(scope="module")
def cls(root) -> Run:
    """Classification (top1) against latency, the library by absolute path, a reference CSV with a score column."""
    folder = make_experiment(root, "cls", 150, seed=2, task=CLASSIFICATION, library="absolute")
    reference = root / "cls_ref.csv"
    reference.write_text("name,params,latency_ms,score\nhand,500000,1.9,0.90\n")
    return Run(folder, _run(folder, "--x", "latency_ms", "--reference", reference))


@pytest.fixture(scope="module")
def old(root, seg) -> Run:
    """An experiment written before teacher.json named its metric, compared with seg on FLOPs."""
    folder = make_experiment(root, "old", 150, seed=1, legacy=True, shift=-0.03, results=False)
    return Run(folder, _run(folder, "--x", "flops", "--compare", seg.folder))


def test_segmentation_writes_every_file(seg):
    for name in (FRONT_PLOT, FRONT_CSV, CURVES_PLOT, LAYERS_PLOT, REPORT_FILE, SENSITIVITY_PLOT):
        assert (seg.folder / name).stat().st_size > 0, name
    want = _brute_ids(seg.trials, "params", "miou")
    written = pd.read_csv(seg.folder / FRONT_CSV)
    assert set(written["trial_id"]) == want
    assert list(written.columns) == ["trial_id", "status", "params", "flops", "latency_ms", "miou",
                                     "policy_summary", "policy"]
    assert written["policy_summary"].str.match(r"^\d+ plugged: ").all()
    for needle in ("| trial | params (M) | GFLOPs | latency (ms) | mIoU (%) | status | proposal | policy |",
                   "hypervolume", "% mIoU", "## Knee", "## Best trial", f"]({FRONT_PLOT})",
                   f"]({CURVES_PLOT})", f"]({LAYERS_PLOT})", f"]({SENSITIVITY_PLOT})", f"({SEGMENTATION.name})",
                   "180.00 ms"):
        assert needle in seg.report, needle
    assert all(t in seg.out for t in want)
    files = (FRONT_CSV, FRONT_PLOT, CURVES_PLOT, LAYERS_PLOT, REPORT_FILE, SENSITIVITY_PLOT)
    assert f"wrote {', '.join(files)}" in seg.out


def test_report_counts_errors_by_reason_and_retries(seg):
    trials = seg.trials
    errors = trials[trials["status"] == ERROR]
    assert f"{len(errors)} trials ended in error (" in seg.report
    for reason, count in errors["reason"].fillna("no reason recorded").value_counts().items():
        assert f"| {reason} | {count} |" in seg.report
    retried = trials["retries"] > 0
    statement = f"Retries: {trials['retries'].sum()} in total, over {retried.sum()} of {len(trials)} trials."
    assert statement in seg.report and statement in seg.out


def test_report_rates_the_latency_predictor(seg):
    trials = seg.trials
    both = trials[trials["latency_pred_ms"].notna() & trials["latency_ms"].notna()]
    rho = spearmanr(both["latency_pred_ms"], both["latency_ms"]).statistic
    error = np.median(np.abs(both["latency_pred_ms"] - both["latency_ms"]) / both["latency_ms"])
    statement = f"over {len(both)} trials: Spearman rank correlation {rho:.3f}, median relative error {error * 100:.1f} %"
    assert statement in seg.report and statement in seg.out


def test_report_rates_the_library_drop_predictor(seg):
    trials = seg.trials
    pool = trials[trials["status"].isin(MEASURED_STATUSES)]
    drop = SEGMENTATION.teacher["miou"] - pool["miou"]
    rho = spearmanr(pool["predicted_drop"], drop).statistic
    assert rho > 0.3
    assert f"over {len(pool)} measured trials: Spearman rank correlation {rho:.3f}" in seg.report
    assert "measured drop (teacher mIoU minus trial mIoU)" in seg.report


def test_report_names_the_most_and_least_sensitive_layers(seg):
    text = seg.report
    most, least = text.index("Most sensitive: `"), text.index("Least sensitive: `")
    assert text.startswith(f"Most sensitive: `{LAYERS[-1]}`", most)
    assert text.startswith(f"Least sensitive: `{LAYERS[0]}`", least)
    assert f"{len(LAYERS) * 3} plugs over {len(LAYERS)} layers" in text
    assert str((seg.folder.parent / "cache" / "seg" / PLUGS_FILE).resolve()) in text


def test_curves_skip_broken_lines(seg):
    curves = load_curves(seg.folder, "miou")
    first = curves[curves["trial_id"] == "t0_0000"]
    assert 99 not in first["epoch"].tolist()
    assert first["epoch"].tolist() == sorted(first["epoch"].tolist())
    assert curves["trial_id"].nunique() > 150


def test_classification_is_keyed_by_top1_against_latency(cls):
    written = pd.read_csv(cls.folder / FRONT_CSV)
    assert set(written["trial_id"]) == _brute_ids(cls.trials, "latency_ms", "top1")
    assert "top1" in written.columns and "miou" not in written.columns
    report = cls.report
    assert "| trial | params (M) | GFLOPs | latency (ms) | top-1 (%) |" in report
    assert "latency_ms down, top-1 up" in report and "largest trial" in report
    assert "miou" not in report.lower()
    assert f"({CLASSIFICATION.name})" in report and f"]({SENSITIVITY_PLOT})" in report
    curves = load_curves(cls.folder, "top1")
    assert not curves.empty and curves["top1"].between(0, 1).all()


def test_old_experiment_reads_as_miou_and_compares(old):
    assert "miou" in pd.read_csv(old.folder / FRONT_CSV).columns
    report = old.report
    assert "| trial | params (M) | GFLOPs | mIoU (%) |" in report and "latency" not in report
    for absent in ("## Predictions", "Retries", "## Plug library", "proposals"):
        assert absent not in report
    statement = "seg has the larger hypervolume"
    assert statement in old.out and statement in report
    assert (old.folder / COMPARE_PLOT).stat().st_size > 0


def _exit_line(argv: list[object], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        run_cli(main, [str(a) for a in argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_compare_refuses_another_metric(seg, cls, capsys):
    assert "scored by 'top1'" in _exit_line([seg.folder, "--compare", cls.folder], capsys)


def _folder(root: Path, name: str, table: dict, teacher: dict | None = None) -> Path:
    folder = root / name
    folder.mkdir()
    pd.DataFrame(table).to_parquet(folder / TRIALS_FILE)
    if teacher is not None:
        (folder / TEACHER_FILE).write_text(json.dumps(teacher))
    return folder


def test_latency_axis_needs_latency_values(old, tmp_path, capsys):
    assert "column 'latency_ms' is missing" in _exit_line([old.folder, "--x", "latency_ms"], capsys)
    folder = _folder(tmp_path, "untimed", {"trial_id": ["a"], "status": [COMPLETED], "params": [1.0],
                                           "miou": [0.5], "latency_ms": [None]})
    assert "column 'latency_ms' holds no value" in _exit_line([folder, "--x", "latency_ms"], capsys)


def test_teacher_json_names_the_metric(tmp_path, capsys):
    table = {"trial_id": ["a"], "status": [COMPLETED], "params": [1.0], "miou": [0.5]}
    wrong = _folder(tmp_path, "wrong", table, {"metric": 3})
    assert "field 'metric' is 3" in _exit_line([wrong], capsys)
    other = _folder(tmp_path, "other", table, {"metric": "top1", "metric_label": "top-1"})
    assert "column 'top1' is missing" in _exit_line([other], capsys)


def test_bad_plug_library_is_an_input_error(tmp_path, capsys):
    folder = _folder(tmp_path, "lib", {"trial_id": ["a"], "status": [COMPLETED], "params": [1.0], "miou": [0.5]})
    pd.DataFrame({"layer": ["x"], "op": ["dws"], "solo_score": [0.4]}).to_parquet(tmp_path / PLUGS_FILE)
    (folder / RUN_FILE).write_text(json.dumps({"library": f"../{PLUGS_FILE}"}))
    assert "column 'solo_drop' is missing" in _exit_line([folder], capsys)
    assert not (folder / REPORT_FILE).exists()


def test_empty_table_and_no_measured_trial_exit_2(tmp_path, capsys):
    columns = {"trial_id": pd.Series([], dtype=str), "status": pd.Series([], dtype=str),
               "params": pd.Series([], dtype=float), "miou": pd.Series([], dtype=float)}
    assert "empty" in _exit_line([_folder(tmp_path, "empty", columns)], capsys)
    unmeasured = _folder(tmp_path, "unmeasured", {"trial_id": ["a", "b"], "status": [INFEASIBLE, ERROR],
                                                  "params": [1.0, 2.0], "top1": [None, None]},
                         {"metric": "top1", "metric_label": "top-1"})
    assert "no trial has a measured top1" in _exit_line([unmeasured], capsys)
    assert f"{TRIALS_FILE}: not found" in _exit_line([tmp_path], capsys)


def test_missing_folder_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: experiment folder not found"]


def test_import_loads_neither_torch_nor_ray():
    code = "import analysis, sys; assert not {'torch', 'ray', 'scipy'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_bad_policy_json_is_an_input_error(tmp_path, capsys):
    folder = _folder(tmp_path, "bad", {"trial_id": ["a"], "status": [COMPLETED], "params": [1.0], "miou": [0.5],
                                       "policy": ["{oops"]})
    assert "policy" in _exit_line([folder], capsys)


def test_absent_teacher_and_library_file_degrade_gracefully(tmp_path):
    folder = make_experiment(tmp_path, "bare", 40, seed=3, teacher=False, results=False, library="missing")
    out = _run(folder)
    report = (folder / REPORT_FILE).read_text()
    assert "largest trial" in report and "which is not there" in report
    assert f"not found; no {SENSITIVITY_PLOT}" in out and not (folder / SENSITIVITY_PLOT).exists()
    assert json.loads(pd.read_csv(folder / FRONT_CSV)["policy"].iloc[0])
