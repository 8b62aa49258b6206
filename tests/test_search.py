"""The search end to end on a tiny space: Ray Tune + Optuna + ASHA, SIGKILL and resume, results, retraining."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from data.names import (
    COMPLETED, EVAL_FILE, INFEASIBLE, MEASURED_STATUSES, POLICY_FILE, RUN_FILE, STATUSES, STOPPED_EARLY, STUDENT_FILE,
    STUDENT_ONNX, TEACHER_FILE, TRIALS_FILE,
)
from search import retrain, run
from search.lock import LOCK_FILE
from tests.cli import run_main
from tests.experiments import (
    local_snapshot, recorded, result_rows, state_of, study_states, trial_end, tree, wait_for,
)
from tests.processes import freeze_trials, thaw
from tests.searches import ROOT, TINY_EPOCHS, search_command, tiny_space, write_space

SEARCH_TIMEOUT = 300
EPOCHS = TINY_EPOCHS


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_search_inputs) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("search")
    data, teacher = tiny_search_inputs.data, tiny_search_inputs.teacher
    space = write_space(tmp, tiny_space(data, teacher), "tiny.yaml", sort_keys=True)
    return {"tmp": tmp, "data": data, "teacher": teacher, "space": space, "storage": tmp / "runs"}


def ended_trials(log: Path) -> dict[str, str]:
    """Trials the driver's progress lines say have ended, with how."""
    return dict(end for end in map(trial_end, log.read_text().splitlines()) if end)


def running_with_checkpoint(experiment: Path, ended: dict[str, str]) -> list[Path]:
    """Trials that have reported (so hold a checkpoint) and not ended."""
    return [d for d in sorted(experiment.glob("trial_*"))
            if d.name.removeprefix("trial_") not in ended and 1 <= len(result_rows(d)) < EPOCHS]


@pytest.fixture(scope="module")
def killed_and_resumed(workspace) -> dict:
    """One search through what a cluster does to its driver. While it runs, a second driver tries the experiment.
    Once three trials have ended and another has reported (so holds a checkpoint), every trial is frozen (SIGSTOP:
    nothing more ends); once the driver's next snapshot holds them, its whole process group is SIGKILLed, the running
    trial's checkpoint is truncated, and the search is resumed to its end."""
    experiment = workspace["storage"] / "kill"
    log = workspace["tmp"] / "kill.log"
    with log.open("w") as out:
        driver = subprocess.Popen(search_command("--space", workspace["space"], "--name", "kill",
                                                 "--storage", workspace["storage"]),
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lock = experiment / LOCK_FILE
    try:
        wait_for(lambda: (experiment / RUN_FILE).is_file() and lock.is_file() and lock.read_text(), driver, log)
        second = run_main(run.main, ["--resume", experiment])  # this process: another driver than the holder
        while True:
            wait_for(lambda: len(ended_trials(log)) >= 3 and running_with_checkpoint(experiment, ended_trials(log)),
                     driver, log)
            frozen = freeze_trials(driver.pid)
            time.sleep(0.5)  # the progress line of a trial that ended just before the freeze reaches the log
            ended = ended_trials(log)
            running = running_with_checkpoint(experiment, ended)
            if running:
                break
            thaw(frozen)  # that trial ended meanwhile: wait for the next one
        truncated = running[0]
        reported = {truncated.name.removeprefix("trial_"): len(result_rows(truncated))}
        wait_for(lambda: recorded(local_snapshot(experiment), ended, reported), driver, log)  # Ray's next snapshot
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    checkpoint = max(truncated.glob("checkpoint_*/state.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    stale_lock = lock.read_text()
    before = {tid: result_rows(experiment / f"trial_{tid}") for tid in ended}
    trees = {tid: tree(experiment / f"trial_{tid}") for tid in ended}
    truncated_rows = result_rows(truncated)
    resumed = subprocess.run(search_command("--resume", experiment), cwd=ROOT, capture_output=True, text=True,
                             timeout=SEARCH_TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {"experiment": experiment, "ended": ended, "before": before, "trees": trees, "resumed": resumed,
            "first_pid": driver.pid, "second": second, "stale_lock": stale_lock,
            "truncated": truncated, "truncated_rows": truncated_rows, "checkpoint": checkpoint}


def test_resume_after_sigkill_reaches_all_trials_without_rerunning_finished_ones(killed_and_resumed):
    experiment = killed_and_resumed["experiment"]
    table = pd.read_parquet(experiment / TRIALS_FILE)
    assert len(table) == 8
    assert table["trial_id"].is_unique
    assert len(killed_and_resumed["ended"]) >= 3
    for trial_id, lines in killed_and_resumed["before"].items():
        assert result_rows(experiment / f"trial_{trial_id}") == lines, f"trial {trial_id} ran again after resume"
        assert tree(experiment / f"trial_{trial_id}") == killed_and_resumed["trees"][trial_id]  # no file touched
    assert "resuming" in killed_and_resumed["resumed"].stdout


def test_second_driver_on_a_held_experiment_exits_2_naming_the_holder(killed_and_resumed):
    code, _, err = killed_and_resumed["second"]
    assert code == 2, err
    assert err.count("\n") == 1
    assert f"another driver is running this experiment (pid {killed_and_resumed['first_pid']} on " \
        f"{socket.gethostname()} since" in err


def test_dead_drivers_lock_file_does_not_block_resume(killed_and_resumed):
    assert killed_and_resumed["stale_lock"].startswith(f"pid {killed_and_resumed['first_pid']} ")  # the file stayed
    assert killed_and_resumed["resumed"].returncode == 0


def test_truncated_checkpoint_restarts_that_trial_from_the_start_with_one_warning(killed_and_resumed):
    resumed = killed_and_resumed["resumed"]
    warnings = [line for line in resumed.stdout.splitlines() if line.startswith("warning:")]
    trial_id = killed_and_resumed["truncated"].name.removeprefix("trial_")
    assert len(warnings) == 1, resumed.stdout  # the other frozen trial resumed from its intact checkpoint
    assert warnings[0].startswith(f"warning: trial {trial_id}: checkpoint unreadable, the trial starts again from epoch 1")
    assert str(killed_and_resumed["checkpoint"]) in warnings[0]
    before = killed_and_resumed["truncated_rows"]
    assert len(before) >= 1
    again = [row["epoch"] for row in result_rows(killed_and_resumed["truncated"])[len(before):]]
    assert again == list(range(1, len(again) + 1)) and again, again  # from epoch 1 (ASHA may stop it after that)


def test_optuna_study_in_sqlite_survives_the_kill_and_matches_every_trial(killed_and_resumed):
    table = pd.read_parquet(killed_and_resumed["experiment"] / TRIALS_FILE)
    states = study_states(killed_and_resumed["experiment"])
    expected = {COMPLETED: "COMPLETE", STOPPED_EARLY: "PRUNED"}
    for _, row in table.iterrows():
        assert state_of(states, row["hp.w_hint"]) == expected[row["status"]], row
    assert "RUNNING" not in states.values()  # what the killed driver had asked for is closed


def test_asha_stops_early_and_no_sample_is_spent_over_the_budget(killed_and_resumed):
    experiment = killed_and_resumed["experiment"]
    table = pd.read_parquet(experiment / TRIALS_FILE)
    assert (table["status"] == STOPPED_EARLY).sum() >= 1
    assert (table["status"] != INFEASIBLE).all()
    teacher = json.loads((experiment / TEACHER_FILE).read_text())
    assert (table["params"] <= 0.75 * teacher["params"]).all()
    repaired = table[table["proposal"] == "repaired"]
    assert len(repaired) >= 1  # TPE proposed over-budget policies; each was repaired before training
    trained = table[table["status"].isin(MEASURED_STATUSES)]
    assert (trained["miou"].between(0, 1)).all()


def test_trials_parquet_schema(killed_and_resumed):
    table = pd.read_parquet(killed_and_resumed["experiment"] / TRIALS_FILE)
    required = ["trial_id", "status", "policy", "params", "flops", "miou", "miou_last", "epochs", "wall_s", "checkpoint"]
    assert set(required) <= set(table.columns)
    assert {"hp.w_hint", "hp.lr", "hp.policy.group0", "hp.policy.group1"} <= set(table.columns)
    assert set(table["status"]) <= set(STATUSES)
    for policy in table["policy"]:
        assert isinstance(json.loads(policy), dict)
    completed = table[table["status"] == COMPLETED]
    assert (completed["epochs"] == EPOCHS).all()


def test_every_trained_trial_keeps_its_tensorboard_files_in_the_experiment(killed_and_resumed):
    experiment = killed_and_resumed["experiment"]
    table = pd.read_parquet(experiment / TRIALS_FILE)
    trained = table[table["epochs"] > 0]["trial_id"]
    assert len(trained) >= 4  # several trials per worker process (reuse_actors)
    for trial_id in trained:
        assert list((experiment / f"trial_{trial_id}" / "tb").glob("events.out.tfevents.*")), trial_id


def test_experiment_is_readable_by_ray(killed_and_resumed):
    from ray import tune

    experiment = str(killed_and_resumed["experiment"])
    analysis = tune.ExperimentAnalysis(experiment)
    assert len(analysis.trials) == 8
    assert tune.Tuner.can_restore(experiment)


def test_resume_of_a_finished_search_says_so_and_runs_nothing(killed_and_resumed):
    experiment = killed_and_resumed["experiment"]
    before = tree(experiment)
    code, out, err = run_main(run.main, ["--resume", experiment])
    assert code == 0, err
    assert "the search has finished" in out and "nothing to run" in out
    assert tree(experiment) == before  # no new trial folder, no file touched


def test_retrain_best_trial_then_load_and_evaluate_in_a_fresh_process(killed_and_resumed, workspace):
    out = workspace["tmp"] / "checkpoints"
    code, stdout, stderr = run_main(retrain.main, [killed_and_resumed["experiment"], "--out", out, "--device", "cpu"])
    assert code == 0, stdout + stderr
    assert (out / "kill" / STUDENT_ONNX).is_file()  # exported beside student.pt by default
    folder = out / "kill"
    report = json.loads((folder / EVAL_FILE).read_text())
    policy = json.loads((folder / POLICY_FILE).read_text())
    check = f"""
import json, torch
from trainable import tasks
from trainable.surgery import load_student
from data.settings import DataSettings
from data.cityscapes import CityscapesSegmentation
from data.transforms import eval_transforms
student, meta = load_student({str(folder / STUDENT_FILE)!r})
loader = torch.utils.data.DataLoader(CityscapesSegmentation({str(workspace['data'])!r}, 'val', eval_transforms()))
result = tasks.get(meta["task"]).evaluate(student, loader, DataSettings(root={str(workspace['data'])!r}), 19)
print(json.dumps({{"miou": result["miou"], "policy": meta["policy"]}}))
"""
    fresh = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    measured = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert measured["policy"] == policy
    assert measured["miou"] == pytest.approx(report["miou"], abs=1e-9)


def test_existing_experiment_is_not_overwritten(killed_and_resumed, workspace):
    code, _, err = run_main(run.main, ["--space", workspace["space"], "--name", "kill", "--storage", workspace["storage"]])
    assert code == 2
    assert err.strip().count("\n") == 0 and "experiment exists" in err


def test_trials_asking_for_more_gpus_than_there_are_are_refused(workspace):
    space = workspace["tmp"] / "gpu.yaml"
    raw = tiny_space(workspace["data"], workspace["teacher"])
    raw["search"]["resources"] = {"cpu": 1, "gpu": torch.cuda.device_count() + 1}  # one more than this machine has
    space.write_text(yaml.safe_dump(raw))
    code, _, err = run_main(run.main, ["--space", space, "--storage", workspace["storage"]])
    assert code == 2
    assert err.startswith(f"error: {space}: search.resources.gpu:") and err.count("\n") == 1
    assert f"at most the {torch.cuda.device_count()} GPUs this machine has" in err
