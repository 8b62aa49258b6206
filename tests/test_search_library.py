"""The plug library in the search: trials start from trained plugs, the CLI build is cached, the solver's
proposals go first and within the budget, and analysis draws the library and rates its predictor."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from data.names import INFEASIBLE, PLUGS_FILE, REPORT_FILE, RUN_FILE, SENSITIVITY_PLOT, TEACHER_FILE, TRIALS_FILE
from search import library, retrain
from tests.cli import exit_2_line, run_ok
from tests.searches import ROOT, tiny_space, write_space
from trainable.config import DistillSettings
from trainable.distill import Distillation
from trainable.inventory import convs
from trainable.library import LibrarySettings, PlugCache, train_plugs
from trainable.loaders import train_loader, unlabeled_set

CPU = torch.device("cpu")
TIMEOUT = 300
# dws on ten 3x3 convs of mod4-mod7 and ASPP: enough plugs that random ones cost the student clearly.
DWS_LAYERS = ("mod4.block2.convs.conv1", "mod4.block3.convs.conv1", "mod4.block4.convs.conv1",
              "mod5.block1.convs.conv2", "mod5.block2.convs.conv2", "mod5.block3.convs.conv2",
              "mod6.block1.convs.conv2", "mod7.block1.convs.conv2", "aspp.features.1.0", "aspp.features.2.0")


def test_a_trial_from_the_library_starts_from_its_plugs_not_the_ops_own_start(trained_teacher, data_settings,
                                                                             tmp_path):
    teacher = trained_teacher.settings.build()
    library = LibrarySettings(epochs=3, lr=3e-2, batch_size=8, cache=tmp_path / "library")
    cache = PlugCache.of(teacher, [str(data_settings.root / d) for d in data_settings.unlabeled], library)
    unlabeled, epochs = unlabeled_set(data_settings), iter(range(100))
    train_plugs(teacher, {layer: ["dws"] for layer in DWS_LAYERS},
                lambda: train_loader(unlabeled, data_settings, next(epochs)), library, CPU, cache, progress=False)
    named = convs(teacher)
    plugs = {layer: cache.read(layer, "dws", named[layer]) for layer in DWS_LAYERS}
    assert all(state is not None for state in plugs.values())
    policy = {layer: "dws" for layer in DWS_LAYERS}
    settings = DistillSettings(epochs=2, steps_per_epoch=2, lr=5e-3, seed=0)
    mious = {}
    for init in ("scratch", "library"):
        run = Distillation(trained_teacher.settings.build(), trained_teacher.settings, policy, data_settings,
                           replace(settings, init=init), device=CPU, teacher_metrics={"miou": trained_teacher.miou},
                           log=lambda line: None)
        if init == "library":
            run.init_plugs(plugs)
            loaded = run.student.get_submodule(DWS_LAYERS[0]).state_dict()
            assert all(torch.equal(loaded[k], v) for k, v in plugs[DWS_LAYERS[0]].items())
        mious[init] = run.run_epoch()["miou"]
    # Both start close to the teacher (the ops' own start is the SVD of the teacher's weights; the library trains it
    # further on the teacher's activations), from different weights: measured 0.535 and 0.565, the teacher ~0.61.
    assert mious["library"] != mious["scratch"] and min(mious.values()) > 0.4, mious


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_search_inputs) -> dict:
    """A random narrow teacher, 32x64 synthetic scenes and a tiny space with a library section."""
    tmp = tmp_path_factory.mktemp("search_library")
    raw = tiny_space(tiny_search_inputs.data, tiny_search_inputs.teacher, num_samples=5, proposals=3)
    raw["distill"]["epochs"] = 2
    raw["library"] = {"epochs": 1, "lr": 1e-2, "batch_size": 4, "cache": str(tmp / "library")}
    space = write_space(tmp, raw, "library.yaml", sort_keys=True)
    return {"tmp": tmp, "space": space, "storage": tmp / "runs", "cache": tmp / "library"}


def _python(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def built_twice(workspace) -> dict:
    """`search/library.py --space S` (its main, in this process) run twice, with the cache's files and mtimes after
    each run."""
    runs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert library.main(["--space", str(workspace["space"]), "--device", "cpu"]) == 0
        files = {path: path.stat().st_mtime_ns for path in workspace["cache"].rglob("*") if path.is_file()}
        runs.append({"stdout": out.getvalue(), "files": files})
    return {"first": runs[0], "second": runs[1]}


# The tiny space's plugs: dws on mod7's conv2 and three ASPP convs; dws and group2 on mod5's six convs.
PLUG_COUNT = 4 + 6 * 2


def test_second_library_build_trains_nothing_and_prints_the_table(built_twice):
    first, second = built_twice["first"], built_twice["second"]
    plugs = [path for path in first["files"] if path.suffix == ".safetensors"]
    assert len(plugs) == PLUG_COUNT
    assert second["files"] == first["files"]  # the second build rewrote no plug and no table
    out = second["stdout"]
    assert f"plug library: {PLUG_COUNT} plugs" in out
    table = next(path for path in first["files"] if path.name == PLUGS_FILE)
    assert f"table: {table}" in out
    header = next(line for line in out.splitlines() if "solo_drop" in line)
    assert header.split() == ["layer", "op", "params", "local_error", "solo_drop"]
    assert out.count("mod5.block1.convs.conv1") == 2  # its dws and group2 rows


@pytest.fixture(scope="module")
def searched(workspace, built_twice) -> dict:
    """The search on the space (reusing the built library), then `python -m analysis` on it."""
    search = _python("search/run.py", "--space", str(workspace["space"]), "--name", "lib",
                     "--storage", str(workspace["storage"]))
    experiment = workspace["storage"] / "lib"
    analysis = _python("-m", "analysis", str(experiment))
    return {"experiment": experiment, "search": search, "analysis": analysis,
            "files": built_twice["second"]["files"]}


def test_search_reuses_the_library_and_starts_from_its_proposals(searched, workspace):
    experiment = searched["experiment"]
    now = {path: path.stat().st_mtime_ns for path in workspace["cache"].rglob("*") if path.is_file()}
    assert {p: t for p, t in now.items() if p in searched["files"]} == searched["files"]  # nothing retrained
    table = pd.read_parquet(experiment / TRIALS_FILE)
    assert len(table) == 5
    from_library = (table["proposal"] == "library").to_numpy()
    count = int(from_library.sum())
    assert 1 <= count <= 3 and from_library[:count].all() and not from_library[count:].any(), table["proposal"]
    assert table["policy"][:count].is_unique
    assert table["predicted_drop"].notna().all()
    teacher = json.loads((experiment / TEACHER_FILE).read_text())
    assert (table["params"] <= 0.75 * teacher["params"]).all()
    assert (table["status"] != INFEASIBLE).all()
    record = json.loads((experiment / RUN_FILE).read_text())
    assert Path(record["library"]) == next(path for path in searched["files"] if path.name == PLUGS_FILE)


def test_analysis_draws_the_library_and_rates_its_predictor(searched):
    experiment = searched["experiment"]
    assert (experiment / SENSITIVITY_PLOT).stat().st_size > 0
    assert SENSITIVITY_PLOT in searched["analysis"].stdout
    report = (experiment / REPORT_FILE).read_text()
    predictor = next(line for line in report.splitlines() if "`predicted_drop`" in line)
    assert "rank correlation" in predictor, predictor
    assert "## Plug library" in report


def test_retrain_of_a_policy_starts_from_the_spaces_library(workspace, built_twice, tmp_path):
    """`search/retrain.py --space --policy` under init: library reads the library the build left (training nothing)
    and starts elsewhere than under init: scratch; a space without a library cannot start from one."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"mod7.block1.convs.conv2": "dws", "mod5.block1.convs.conv1": "group2"}))
    common = ["--space", workspace["space"], "--policy", policy, "--epochs", 1, "--no-onnx", "--out", tmp_path]
    before = {path: path.stat().st_mtime_ns for path in workspace["cache"].rglob("*.safetensors")}
    library_out = run_ok(retrain.main, [*common, "--name", "library"])
    assert "from the plug library" in library_out and "plug library: trained" not in library_out
    assert {path: path.stat().st_mtime_ns for path in workspace["cache"].rglob("*.safetensors")} == before
    scratch_out = run_ok(retrain.main, [*common, "--name", "scratch", "--set", "init=scratch"])
    assert "from the ops' start" in scratch_out

    def first_epoch(out: str) -> str:
        return next(line for line in out.splitlines() if line.startswith("epoch 1/1"))

    assert first_epoch(library_out) != first_epoch(scratch_out)
    raw = yaml.safe_load(workspace["space"].read_text())
    del raw["library"]
    bare = write_space(tmp_path, raw, "bare.yaml")
    line = exit_2_line(retrain.main, ["--space", bare, "--policy", policy, "--set", "init=library", "--no-onnx",
                                      "--out", tmp_path])
    assert "distill.init: expected scratch for a space without a library section" in line, line
