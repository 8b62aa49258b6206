"""Latency in the search: a latency budget keeps over-budget policies from training (repaired before they
start), and nsga2 over params, latency and the metric writes a front that analysis draws against latency."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from data.errors import InputError
from data.names import FRONT_CSV, FRONT_PLOT, INFEASIBLE, MEASURED_STATUSES, OPTUNA_FILE, REPORT_FILE, TRIALS_FILE
from search.choices import PolicyChoices, resolve_choices
from search.run import latency_file, with_latency
from search.searcher import DefineByRun
from search.space import load_space
from search.storage import Location
from tests.searches import ROOT, tiny_space, write_space

TIMEOUT = 300
TEACHER_MS, MAX_PARAM_RATIO, MAX_LATENCY_RATIO = 10.0, 0.95, 1.23
# A made-up latency table (ms of each conv and plug alone), cached where run.py looks for it: dws is
# faster than the conv on mod7, slower on ASPP (as depthwise kernels can be), mixed on mod5. Of the 48
# policies, 47 are within the parameter budget and 24 of those over the latency one.
TABLE = {
    "mod7.block1.convs.conv2": {"keep": 1.0, "dws": 0.5},
    **{f"aspp.features.{i}.0": {"keep": 1.0, "dws": 2.5} for i in (1, 2, 3)},
    **{f"mod5.block{b}.convs.conv{j}": {"keep": 1.0, "dws": 1.2, "group2": 0.9} for b in (1, 2, 3) for j in (1, 2)},
}
# Within the parameter budget (0.71 of the teacher) and over the latency one (14.0 ms > 12.3 ms).
FAST_ONLY_IN_PARAMS = {"mod7.block1.convs.conv2": "dws", "aspp.features.1.0": "dws", "aspp.features.2.0": "dws",
                       "aspp.features.3.0": "dws", "group1": "keep"}


def latency_space(data: Path, teacher: Path) -> dict:
    """The tiny search space with each layer of group 0 its own choice, both budgets, nsga2 over three objectives."""
    raw = tiny_space(data, teacher, num_samples=6, searcher="nsga2", objectives=["params", "latency_ms", "miou"])
    raw["policy"]["budget"] = {"max_param_ratio": MAX_PARAM_RATIO, "max_latency_ratio": MAX_LATENCY_RATIO}
    raw["policy"]["groups"][0]["per_layer"] = True
    raw["distill"]["epochs"] = 2
    raw["latency"] = {"warmup": 1, "runs": 3}
    return raw


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_search_inputs) -> dict:
    tmp = tmp_path_factory.mktemp("latency_search")
    path = write_space(tmp, latency_space(tiny_search_inputs.data, tiny_search_inputs.teacher), "latency.yaml",
                       sort_keys=True)
    space = load_space(path)
    choices = resolve_choices(space)
    timed = replace(choices, layer_latency=TABLE, teacher_latency_ms=TEACHER_MS,
                    max_latency_ms=MAX_LATENCY_RATIO * TEACHER_MS)
    return {"tmp": tmp, "path": path, "space": space, "choices": timed, "storage": tmp / "runs"}


def _within(choices: PolicyChoices, policy: dict[str, str]) -> tuple[bool, bool]:
    """(within the parameter budget, within the latency budget)."""
    return choices.params(policy) <= choices.max_params, choices.latency_ms(policy) <= choices.max_latency_ms


def test_latency_budget_rejects_a_policy_and_the_searcher_repairs_it_before_training(workspace):
    choices = workspace["choices"]
    policy = choices.policy(FAST_ONLY_IN_PARAMS)
    assert _within(choices, policy) == (True, False)
    assert choices.latency_ms(policy) == pytest.approx(TEACHER_MS - 0.5 + 3 * 1.5)
    assert not choices.feasible(policy)
    trial = optuna.trial.FixedTrial({f"policy/{key}": op for key, op in FAST_ONLY_IN_PARAMS.items()})
    config = DefineByRun(choices, {})(trial)
    assert config["proposal"] == "repaired" and trial.user_attrs["repaired"]
    repaired = config["repaired"]
    assert choices.feasible_picks(repaired), repaired
    assert repaired["mod7.block1.convs.conv2"] == "dws"  # the nearest fix turns ASPP plugs back, not the fast one
    for picks in choices.proposals(3):  # the solver's proposals respect the latency budget too
        assert choices.feasible_picks(picks), picks


def test_a_latency_budget_no_policy_meets_is_refused_in_one_line(workspace, tmp_path):
    raw = yaml.safe_load(workspace["path"].read_text())
    raw["policy"]["budget"]["max_latency_ratio"] = 0.85  # the fastest policy is predicted at 8.9 ms
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(raw))
    space, folder = load_space(path), Location.parse(tmp_path)
    choices = resolve_choices(space)
    table = {"device": "made up", "teacher_ms": TEACHER_MS, "spread": 0.0, "table": TABLE}
    folder.write_text(latency_file(space, choices), json.dumps(table))
    with pytest.raises(InputError, match=r"tight.yaml: policy.budget.max_latency_ratio: expected a ratio that some "
                                         r"policy .* meets .*, got 0.85$"):
        with_latency(space, choices, None, folder)
    raw["policy"]["budget"]["max_latency_ratio"] = 0.9
    path.write_text(yaml.safe_dump(raw))
    assert with_latency(load_space(path), choices, None, folder).max_latency_ms == pytest.approx(0.9 * TEACHER_MS)


@pytest.fixture(scope="module")
def searched(workspace) -> dict:
    """The nsga2 search with the latency table cached in its experiment folder, then analysis against latency."""
    experiment = workspace["storage"] / "lat"
    experiment.mkdir(parents=True)
    table = {"device": "made up", "teacher_ms": TEACHER_MS, "spread": 0.0, "table": TABLE}
    (experiment / latency_file(workspace["space"], workspace["choices"])).write_text(json.dumps(table))
    runs = []
    for args in (["search/run.py", "--space", str(workspace["path"]), "--name", "lat", "--storage",
                  str(workspace["storage"])], ["-m", "analysis", str(experiment), "--x", "latency_ms"]):
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append(done)
    return {"experiment": experiment, "search": runs[0], "analysis": runs[1]}


def test_no_trial_trains_over_the_latency_budget(searched, workspace):
    choices, experiment = workspace["choices"], searched["experiment"]
    assert f"teacher latency {TEACHER_MS:.2f} ms on made up" in searched["search"].stdout  # the cached table was used
    table = pd.read_parquet(experiment / TRIALS_FILE)
    assert len(table) == 6
    assert (table["status"] != INFEASIBLE).all(), table[["status", "proposal", "policy"]]
    for row in table.itertuples():
        policy = json.loads(row.policy)
        assert _within(choices, policy) == (True, True), (row.proposal, policy)
        assert row.latency_pred_ms == pytest.approx(choices.latency_ms(policy))
        assert row.latency_pred_ms <= MAX_LATENCY_RATIO * TEACHER_MS
    # What Optuna proposed (the study keeps it; trials.parquet has what was trained): some proposals were within
    # the parameter budget but over the latency one, and each over-budget proposal was repaired.
    study = optuna.load_study(study_name="plugkd", storage=f"sqlite:///{experiment / OPTUNA_FILE}")
    proposed = [choices.policy({name[len("policy/"):]: op for name, op in trial.params.items()
                                if name.startswith("policy/")}) for trial in study.trials]
    assert len(proposed) == 6
    assert any(_within(choices, policy) == (True, False) for policy in proposed)
    assert sum(not choices.feasible(policy) for policy in proposed) == (table["proposal"] == "repaired").sum()


def test_nsga2_over_params_latency_and_miou_writes_a_front_that_analysis_plots(searched):
    experiment = searched["experiment"]
    table = pd.read_parquet(experiment / TRIALS_FILE)
    trained = table[table["status"].isin(MEASURED_STATUSES)]
    assert len(trained) == 6 and (trained["latency_ms"] > 0).all()
    assert (experiment / FRONT_PLOT).stat().st_size > 0
    front = pd.read_csv(experiment / FRONT_CSV)
    assert len(front) >= 1 and (front["latency_ms"] > 0).all()
    report = (experiment / REPORT_FILE).read_text()
    assert "latency_ms down" in report and "latency (ms)" in report
    assert "Predicted latency (`latency_pred_ms`" in report
    assert "latency (ms)" in searched["analysis"].stdout
