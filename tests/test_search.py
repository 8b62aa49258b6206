"""The search end to end on a tiny space: Ray Tune + Optuna + ASHA, SIGKILL and resume, results, retraining."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from data.synthetic import generate
from trainable import models

ROOT = Path(__file__).resolve().parents[1]
SEARCH_TIMEOUT = 300
TRIAL_ENDS = ("completed", "stopped_early", "infeasible")


def tiny_space(tmp: Path, data_root: Path, teacher: Path, **search) -> dict:
    return {
        "teacher": {"arch": "deepwv3plus", "num_classes": 19, "width": 0.0625, "checkpoint": str(teacher)},
        "data": {"dataset": "cityscapes", "root": str(data_root), "unlabeled": ["leftImg8bit/train_extra"],
                 "val": "val", "crop": [32, 64], "scale": [1.0, 1.0], "batch_size": 4, "eval": "whole"},
        "policy": {
            "budget": {"max_param_ratio": 0.75},
            "groups": [
                {"layers": ["mod7.*.convs.conv2", "aspp.features.[123].0"], "ops": ["keep", "dws"]},
                {"layers": ["mod5.*.convs.conv[12]"], "ops": ["keep", "dws", "group2"]},
            ],
        },
        "distill": {"epochs": 3, "steps_per_epoch": 2, "w_hint": {"loguniform": [0.1, 10], "default": 1},
                    "lr": {"loguniform": [1e-3, 1e-2], "default": 3e-3}},
        "search": {"num_samples": 8, "searcher": "tpe", "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
                   "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2, "seed": 0, "retrain_epochs": 1, **search},
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("search")
    generate(tmp / "data", train=4, val=4, size=(32, 64), seed=1, extra=16)
    teacher = tmp / "teacher.pt"
    torch.manual_seed(0)
    torch.save(models.build("deepwv3plus", width=0.0625).state_dict(), teacher)
    space = tmp / "tiny.yaml"
    space.write_text(yaml.safe_dump(tiny_space(tmp, tmp / "data", teacher)))
    return {"tmp": tmp, "space": space, "storage": tmp / "runs"}


def command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "search" / "run.py"), *args]


def result_lines(trial_dir: Path) -> list[str]:
    path = trial_dir / "result.json"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def killed_and_resumed(workspace) -> dict:
    """A search whose driver is SIGKILLed after three trials have ended, then resumed to the end."""
    experiment = workspace["storage"] / "kill"
    driver = subprocess.Popen(
        command("--space", str(workspace["space"]), "--name", "kill", "--storage", str(workspace["storage"])),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    ended: dict[str, str] = {}
    deadline = time.monotonic() + SEARCH_TIMEOUT
    log = []
    for line in driver.stdout:
        log.append(line)
        fields = line.split()
        if len(fields) >= 6 and fields[5] in TRIAL_ENDS:
            ended[fields[0]] = fields[5]
        if len(ended) >= 3 or time.monotonic() > deadline:
            break
    time.sleep(3)  # let the experiment snapshot that follows a trial's end reach the disk
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert len(ended) >= 3, "".join(log)
    before = {tid: result_lines(experiment / f"trial_{tid}") for tid in ended}
    resumed = subprocess.run(command("--resume", str(experiment)), cwd=ROOT, capture_output=True, text=True,
                             timeout=SEARCH_TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {"experiment": experiment, "ended": ended, "before": before, "resumed": resumed}


def test_resume_after_sigkill_reaches_all_trials_without_rerunning_finished_ones(killed_and_resumed):
    experiment = killed_and_resumed["experiment"]
    table = pd.read_parquet(experiment / "trials.parquet")
    assert len(table) == 8
    assert table["trial_id"].is_unique
    for trial_id, lines in killed_and_resumed["before"].items():
        assert result_lines(experiment / f"trial_{trial_id}") == lines, f"trial {trial_id} ran again after resume"
    assert "resuming" in killed_and_resumed["resumed"].stdout


def test_asha_stops_early_and_no_sample_is_spent_over_the_budget(killed_and_resumed):
    experiment = killed_and_resumed["experiment"]
    table = pd.read_parquet(experiment / "trials.parquet")
    assert (table["status"] == "stopped_early").sum() >= 1
    assert (table["status"] != "infeasible").all()
    teacher = json.loads((experiment / "teacher.json").read_text())
    assert (table["params"] <= 0.75 * teacher["params"]).all()
    repaired = table[table["proposal"] == "repaired"]
    assert len(repaired) >= 1  # TPE proposed over-budget policies; each was repaired before training
    trained = table[table["status"].isin(["completed", "stopped_early"])]
    assert (trained["miou"].between(0, 1)).all()


def test_trials_parquet_schema(killed_and_resumed):
    table = pd.read_parquet(killed_and_resumed["experiment"] / "trials.parquet")
    required = ["trial_id", "status", "policy", "params", "flops", "miou", "miou_last", "epochs", "wall_s", "checkpoint"]
    assert set(required) <= set(table.columns)
    assert {"hp.w_hint", "hp.lr", "hp.policy.group0", "hp.policy.group1"} <= set(table.columns)
    assert set(table["status"]) <= {"completed", "stopped_early", "infeasible", "error"}
    for policy in table["policy"]:
        assert isinstance(json.loads(policy), dict)
    completed = table[table["status"] == "completed"]
    assert (completed["epochs"] == 3).all()


def test_experiment_is_readable_by_ray(killed_and_resumed):
    from ray import tune

    experiment = str(killed_and_resumed["experiment"])
    analysis = tune.ExperimentAnalysis(experiment)
    assert len(analysis.trials) == 8
    assert tune.Tuner.can_restore(experiment)


def test_retrain_best_trial_then_load_and_evaluate_in_a_fresh_process(killed_and_resumed, workspace):
    out = workspace["tmp"] / "checkpoints"
    done = subprocess.run(
        [sys.executable, str(ROOT / "search" / "retrain.py"), str(killed_and_resumed["experiment"]), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=SEARCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    folder = out / "kill"
    report = json.loads((folder / "eval.json").read_text())
    policy = json.loads((folder / "policy.json").read_text())
    check = f"""
import json, torch
from trainable import tasks
from trainable.surgery import load_student
from data.settings import DataSettings
from data.cityscapes import CityscapesSegmentation
from data.transforms import eval_transforms
student, meta = load_student({str(folder / 'student.pt')!r})
loader = torch.utils.data.DataLoader(CityscapesSegmentation({str(workspace['tmp'] / 'data')!r}, 'val', eval_transforms()))
result = tasks.get(meta["task"]).evaluate(student, loader, DataSettings(root={str(workspace['tmp'] / 'data')!r}), 19)
print(json.dumps({{"miou": result["miou"], "policy": meta["policy"]}}))
"""
    fresh = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    measured = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert measured["policy"] == policy
    assert measured["miou"] == pytest.approx(report["miou"], abs=1e-9)


def test_existing_experiment_is_not_overwritten(killed_and_resumed, workspace):
    done = subprocess.run(command("--space", str(workspace["space"]), "--name", "kill", "--storage", str(workspace["storage"])),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "experiment exists" in done.stderr


@pytest.mark.xfail(strict=False, reason="open bug: since the searcher keeps its study in SQLite, tiny trials can end "
                   "before the next is proposed, and a reused actor then runs every trial on one node")
def test_search_on_a_two_node_cluster_uses_both_nodes(workspace):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        done = subprocess.run(
            command("--space", str(workspace["space"]), "--name", "cluster", "--storage", str(workspace["storage"]),
                    "--num-samples", "4", "--address", cluster.address),
            cwd=ROOT, capture_output=True, text=True, timeout=SEARCH_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        cluster.shutdown()
    experiment = workspace["storage"] / "cluster"
    nodes = set()
    for result in experiment.glob("trial_*/result.json"):
        nodes |= {json.loads(line)["node_id"] for line in result.read_text().splitlines()}
    assert len(nodes) == 2
    assert len(pd.read_parquet(experiment / "trials.parquet")) == 4


def test_trials_asking_for_more_gpus_than_there_are_are_refused(workspace):
    space = workspace["tmp"] / "gpu.yaml"
    raw = tiny_space(workspace["tmp"], workspace["tmp"] / "data", workspace["tmp"] / "teacher.pt")
    raw["search"]["resources"] = {"cpu": 1, "gpu": torch.cuda.device_count() + 1}  # one more than this machine has
    space.write_text(yaml.safe_dump(raw))
    done = subprocess.run(command("--space", str(space), "--storage", str(workspace["storage"])),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {space}: search.resources.gpu:") and done.stderr.count("\n") == 1
    assert "at most the 0 GPUs this machine has" in done.stderr
