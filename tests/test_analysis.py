"""analysis: Pareto front, hypervolume, knee, the report files and the command's errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import hypervolume, knee_index, load_curves, load_reference, pareto_front, pareto_mask
from analysis.__main__ import main
from analysis.policy import describe, summarize
from data.errors import run_cli
from fixtures_analysis import make_experiment

ROOT = Path(__file__).resolve().parents[1]
STATUSES = ["completed", "stopped_early", "infeasible", "error"]


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
    pool = table[table["status"].isin(["completed", "stopped_early"]) & table["miou"].notna()]
    keep = brute_front(list(zip(pool["params"], pool["miou"])))
    assert set(pareto_front(table)["trial_id"]) == set(pool["trial_id"][keep])


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


def test_reference_csv_accepts_fraction_or_percent(tmp_path):
    (tmp_path / "f.csv").write_text("name,params,miou\nhand,92000000,0.821\n")
    (tmp_path / "p.csv").write_text("name,params,miou\nhand,92000000,82.1\n")
    assert load_reference(tmp_path / "f.csv")["miou"].iloc[0] == pytest.approx(0.821)
    assert load_reference(tmp_path / "p.csv")["miou"].iloc[0] == pytest.approx(0.821)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    return make_experiment(root, "good", 300, seed=0), make_experiment(root, "worse", 200, seed=1, miou_shift=-0.03)


def test_cli_writes_every_file(experiments, tmp_path, capsys):
    folder = experiments[0]
    reference = tmp_path / "ref.csv"
    reference.write_text("name,params,miou\nhand 92M,92000000,0.821\nhand 79M,79000000,0.813\n")
    assert main([str(folder), "--reference", str(reference)]) == 0
    for name in ("pareto.png", "pareto.csv", "curves.png", "layers.png", "report.md"):
        assert (folder / name).stat().st_size > 0, name
    trials = pd.read_parquet(folder / "trials.parquet")
    pool = trials[trials["status"].isin(["completed", "stopped_early"]) & trials["miou"].notna()]
    want = set(pool["trial_id"][brute_front(list(zip(pool["params"], pool["miou"])))])
    written = pd.read_csv(folder / "pareto.csv")
    assert set(written["trial_id"]) == want
    assert list(written.columns[:5]) == ["trial_id", "status", "params", "flops", "miou"]
    assert written["policy_summary"].str.match(r"^\d+ plugged: ").all()
    report = (folder / "report.md").read_text()
    for needle in ("| trial | params (M)", "hypervolume", "## Knee", "## Best trial", "](pareto.png)",
                   "](curves.png)", "](layers.png)"):
        assert needle in report
    out = capsys.readouterr().out
    assert all(t in out for t in want)


def test_cli_flops_axis(experiments, capsys):
    assert main([str(experiments[1]), "--x", "flops"]) == 0
    assert "GFLOPs" in (experiments[1] / "report.md").read_text()


def test_curves_skip_broken_lines(experiments):
    curves = load_curves(experiments[0])
    first = curves[curves["trial_id"] == "t0_0000"]
    assert 99 not in first["epoch"].tolist()
    assert first["epoch"].tolist() == sorted(first["epoch"].tolist())
    assert curves["trial_id"].nunique() > 200


def test_compare_states_the_larger_hypervolume(experiments, capsys):
    good, worse = experiments
    assert main([str(worse), "--compare", str(good)]) == 0
    statement = "good has the larger hypervolume"
    assert statement in capsys.readouterr().out
    assert statement in (worse / "report.md").read_text()
    assert (worse / "compare.png").stat().st_size > 0


def _exit_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_empty_table_and_no_measured_trial_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    columns = {"trial_id": pd.Series([], dtype=str), "status": pd.Series([], dtype=str),
               "params": pd.Series([], dtype=float), "miou": pd.Series([], dtype=float)}
    pd.DataFrame(columns).to_parquet(empty / "trials.parquet")
    assert "empty" in _exit_line([str(empty)], capsys)
    unmeasured = tmp_path / "unmeasured"
    unmeasured.mkdir()
    pd.DataFrame({"trial_id": ["a", "b"], "status": ["infeasible", "error"], "params": [1.0, 2.0],
                  "miou": [None, None]}).to_parquet(unmeasured / "trials.parquet")
    assert "no trial has a measured miou" in _exit_line([str(unmeasured)], capsys)
    assert "trials.parquet: not found" in _exit_line([str(tmp_path)], capsys)


def test_missing_folder_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: experiment folder not found"]


def test_import_loads_neither_torch_nor_ray():
    code = "import analysis, sys; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_bad_policy_json_is_an_input_error(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    pd.DataFrame({"trial_id": ["a"], "status": ["completed"], "params": [1.0], "miou": [0.5],
                  "policy": ["{oops"]}).to_parquet(folder / "trials.parquet")
    assert "policy" in _exit_line([str(folder)], capsys)


def test_teacher_json_absent_uses_largest_trial(tmp_path, capsys):
    folder = make_experiment(tmp_path, "noteacher", 40, seed=3, teacher=False, results=False)
    assert main([str(folder)]) == 0
    assert "largest trial" in (folder / "report.md").read_text()
    assert json.loads(pd.read_csv(folder / "pareto.csv")["policy"].iloc[0])
