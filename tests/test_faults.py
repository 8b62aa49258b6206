"""Faults a search survives, each with its outcome named (status, reason, what was kept).

Inside a trial: a loss that diverges, an exception (in trials on a two-node cluster), a worker SIGKILLed mid-trial. Around the search: Optuna trials
a killed driver asked for (the killed driver itself, a truncated checkpoint, a second driver on a held experiment and
`--resume` of a finished search are tests/test_search.py's one search). Under every writer of the project: a disk
that fills during the write.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

import optuna
import pandas as pd
import pytest
import torch

from data.names import (
    COMPLETED, CURVES_PLOT, ERROR, EVAL_FILE, FRONT_CSV, FRONT_PLOT, LAYERS_PLOT, OPTUNA_FILE, REPORT_FILE, RUN_FILE,
    STUDENT_FILE, TEACHER_FILE, TRIALS_FILE,
)
from tests.experiments import TIMEOUT, result_rows, state_of, study_states, tree, wait_for
from tests.searches import ROOT, TINY_EPOCHS, search_command, tiny_inputs, tiny_space, write_space
from trainable import models

EPOCHS = TINY_EPOCHS
SAFE_LR = 3e-3
HUGE_LR = 1e12  # plain SGD at this rate sends the plugged weights to ~1e10 in one step: loss nan at epoch 1, step 2


def fault_space(tmp: Path, data_root: Path, distill: dict | None = None, **search) -> dict:
    """The tiny space with 4 trials, no scheduler, a fixed lr and 2 failures allowed: 3 epochs of 2 steps, 2 trials
    at a time."""
    raw = tiny_space(data_root, tmp / "teacher.pt",
                     **{"num_samples": 4, "scheduler": "none", "max_failures": 2, **search})
    del raw["search"]["retrain_epochs"]
    raw["distill"] = {**raw["distill"], "lr": SAFE_LR, **(distill or {})}
    return raw


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Synthetic Cityscapes (8 unlabeled images: each epoch of 2 batches of 4 reads all of them) and a teacher."""
    tmp = tmp_path_factory.mktemp("faults")
    tiny_inputs(tmp, extra=8)
    return tmp


# --- inside a trial ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def in_trial(workspace) -> dict:
    """A search where some trials diverge (lr HUGE_LR) and the worker of a sane trial is SIGKILLed after epoch 1."""
    raw = fault_space(workspace, workspace / "data", {"optimizer": "sgd", "lr": {"choice": [SAFE_LR, HUGE_LR]}},
                      num_samples=5)
    experiment = workspace / "runs" / "in_trial"
    log = workspace / "in_trial.log"
    with log.open("w") as out:
        space = write_space(workspace, raw, "in_trial.yaml", sort_keys=True)
        driver = subprocess.Popen(search_command("--space", space, "--name", "in_trial",
                                                 "--storage", workspace / "runs"),
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def sane_trial_after_epoch_1() -> tuple[str, dict] | None:
        for trial_dir in experiment.glob("trial_*"):
            rows = result_rows(trial_dir)
            if len(rows) == 1 and rows[0]["epoch"] == 1 and rows[0]["error_reason"] is None:
                return trial_dir.name, rows[0]
        return None

    try:
        killed_dir, first = wait_for(sane_trial_after_epoch_1, driver, log)
        os.kill(first["pid"], signal.SIGKILL)  # the Ray worker running the trial, mid-epoch 2
        driver.wait(timeout=TIMEOUT)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, log.read_text()
    return {"experiment": experiment, "table": pd.read_parquet(experiment / TRIALS_FILE),
            "killed": killed_dir, "killed_pid": first["pid"], "log": log.read_text()}


def test_diverging_loss_ends_that_trial_as_error_nonfinite_loss_and_the_others_complete(in_trial):
    table = in_trial["table"]
    assert len(table) == 5
    diverged, sane = table[table["hp.lr"] == HUGE_LR], table[table["hp.lr"] == SAFE_LR]
    assert len(diverged) >= 1 and len(sane) >= 1  # the seeded sampler draws both rates
    assert (diverged["status"] == ERROR).all() and (diverged["reason"] == "nonfinite_loss").all()
    assert (diverged["epochs"] == 0).all() and diverged["miou"].isna().all()  # nothing measured is kept
    assert (sane["status"] == COMPLETED).all() and (sane["epochs"] == EPOCHS).all() and sane["reason"].isna().all()
    assert sane["miou"].between(0, 1).all()


def test_optuna_sqlite_study_says_failed_for_errors_and_complete_for_completed(in_trial):
    states = study_states(in_trial["experiment"])
    table = in_trial["table"]
    assert len(states) == len(table)
    for _, row in table.iterrows():
        assert state_of(states, row["hp.w_hint"]) == ("FAIL" if row["status"] == ERROR else "COMPLETE"), row


def test_killed_worker_is_retried_from_its_last_checkpoint_and_the_table_counts_it(in_trial):
    table = in_trial["table"].set_index("trial_id")
    trial_id = in_trial["killed"].removeprefix("trial_")
    assert table.loc[trial_id, "retries"] >= 1
    assert table.loc[trial_id, "status"] == COMPLETED and table.loc[trial_id, "epochs"] == EPOCHS
    rows = result_rows(in_trial["experiment"] / in_trial["killed"])
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))  # epochs continue after the retry
    assert rows[0]["pid"] == in_trial["killed_pid"] and all(row["pid"] != in_trial["killed_pid"] for row in rows[1:])
    retries = int(table["retries"].sum())
    assert f"; {retries} retr{'y' if retries == 1 else 'ies'} after a worker died" in in_trial["log"]


def test_asha_counts_epochs_so_a_resumed_trial_is_judged_by_its_epoch(workspace, in_trial):
    from search.searcher import make_scheduler
    from search.space import load_space

    raw = fault_space(workspace, workspace / "data", scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}})
    assert make_scheduler(load_space(write_space(workspace, raw, "asha.yaml", sort_keys=True)))._time_attr == "epoch"
    rows = result_rows(in_trial["experiment"] / in_trial["killed"])
    assert rows[1]["epoch"] == 2  # the first report of the retried worker: epoch 2 after epoch 1, the time ASHA reads


def test_exceptions_in_trials_on_a_two_node_cluster_are_their_error_reasons_and_the_search_goes_on(workspace):
    """A truncated image among the unlabeled ones (a half-copied file): every trial reads it in its first epoch. The
    search runs on a two-node cluster of one CPU per node, two trials at a time: Tune asks for both trials' actors at
    once (its pending limit is max_concurrent), so each node runs one, and each error travels back from its node.
    Actors are not reused: a reused actor of the first trial to fail would run the second one on the same node."""
    from ray.cluster_utils import Cluster

    data = workspace / "broken_data"
    shutil.copytree(workspace / "data", data)
    bad = sorted((data / "leftImg8bit" / "train_extra").rglob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:200])
    raw = fault_space(workspace, data, {"epochs": 1}, num_samples=2, reuse_actors=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        space = write_space(workspace, raw, "broken.yaml", sort_keys=True)
        done = subprocess.run(search_command("--space", space, "--name", "broken", "--storage", workspace / "runs",
                                             "--address", cluster.address),
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        cluster.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    experiment = workspace / "runs" / "broken"
    table = pd.read_parquet(experiment / TRIALS_FILE)
    assert len(table) == 2 and (table["status"] == ERROR).all()
    for reason in table["reason"]:
        assert reason.startswith(f"InputError: {bad}: cannot read image (") and "\n" not in reason
    assert set(study_states(experiment).values()) == {"FAIL"}
    assert "2 trials: 2 error" in done.stdout
    nodes = {row["node_id"] for trial in experiment.glob("trial_*") for row in result_rows(trial)}
    assert len(nodes) == 2


# --- around the search (a killed driver, a truncated checkpoint, a second driver: tests/test_search.py) ---------

def _one_setting(trial: optuna.Trial) -> None:
    trial.suggest_float("distill/w_hint", 0.1, 10, log=True)


def test_optuna_trials_a_killed_driver_asked_for_after_its_last_snapshot_are_told_failed_on_resume(tmp_path):
    """As Tuner.restore does: the searcher pickled at the start (tuner.pkl), then its last saved state."""
    import pickle

    from search.searcher import TellingOptunaSearch

    url = f"sqlite:///{tmp_path / OPTUNA_FILE}"
    searcher = TellingOptunaSearch(space=_one_setting, metric="score", mode="max", study_name="plugkd",
                                   storage=optuna.storages.RDBStorage(url), sampler=optuna.samplers.RandomSampler(0))
    at_start = pickle.dumps(searcher)
    searcher.suggest("held")
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    searcher.suggest("stray")  # asked, then the driver is killed before the next snapshot
    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    states = [t.state.name for t in optuna.load_study(study_name="plugkd", storage=url).trials]
    assert states == ["RUNNING", "FAIL"]  # the held trial resumes with its Ray trial; the stray is closed
    restored.on_trial_complete("held", {"score": 0.5, "epoch": 3, "epochs_total": 3, "error_reason": None})
    assert [t.state.name for t in optuna.load_study(study_name="plugkd", storage=url).trials] == ["COMPLETE", "FAIL"]
    # Ray resumes a trial the searcher's last snapshot lacks (the driver died between the two files): it is ignored.
    restored.on_trial_result("unknown", {"score": 0.4, "training_iteration": 1})
    restored.on_trial_complete("unknown", {"score": 0.4, "epoch": 3, "epochs_total": 3, "error_reason": None})
    assert [t.state.name for t in optuna.load_study(study_name="plugkd", storage=url).trials] == ["COMPLETE", "FAIL"]


# --- a full disk under every writer --------------------------------------------------------------------

class FullDisk:
    """A file handle on a disk with `room` bytes left: the write that goes past it fails with ENOSPC, as the
    kernel's does, after writing what fitted."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.handle.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _experiment_file(name: str) -> Callable[[Path, int], Path]:
    def write(folder: Path, version: int) -> Path:
        from search.storage import Location

        location = Location.parse(folder)
        if name.endswith(".parquet"):
            location.write_parquet(name, pd.DataFrame({"trial_id": [f"t{i}" for i in range(version * 50)]}))
        else:
            location.write_text(name, json.dumps({"version": version, "pad": "x" * 4000}))
        return folder / name
    return write


def _trial_checkpoint(folder: Path, version: int) -> Path:
    from trainable.checkpoint import save_atomic  # Distillation.save, which a trial's report calls

    save_atomic({"epoch": version, "student": {"w": torch.full((64, 64), float(version))}}, folder / "state.pt")
    return folder / "state.pt"


def _student(folder: Path, version: int) -> Path:
    from trainable.surgery import apply_policy, save_student

    torch.manual_seed(version)
    policy = {"mod7.block1.convs.conv2": "dws"}
    student = apply_policy(models.build("deepwv3plus", width=0.0625), policy)
    save_student(folder / STUDENT_FILE, student, "deepwv3plus", {"width": 0.0625}, policy)
    return folder / STUDENT_FILE


def _plug(folder: Path, version: int) -> Path:
    from torch import nn

    from trainable.library import LibrarySettings, PlugCache
    from trainable.ops import make_op

    torch.manual_seed(version)
    cache = PlugCache(folder, "teacher", ("images",), LibrarySettings(cache=folder))
    return cache.save("conv", "dws", make_op(nn.Conv2d(16, 16, 3, padding=1), "dws"))


def _retrain_json(folder: Path, version: int) -> Path:
    from search.storage import write_bytes_atomic  # search/retrain.py's policy.json and eval.json

    write_bytes_atomic(folder / EVAL_FILE, json.dumps({"version": version, "pad": "x" * 4000}).encode())
    return folder / EVAL_FILE


def _prediction_png(folder: Path, version: int) -> Path:
    import numpy as np

    from trainable.label_ids import write_png

    write_png(np.random.default_rng(version).integers(0, 34, (64, 64), dtype=np.uint8), folder / "x_labelIds.png")
    return folder / "x_labelIds.png"


def _predictions_csv(folder: Path, version: int) -> Path:
    from trainable.predictions_csv import write_csv

    write_csv([(f"img{i}.png", "cat", 0.5) for i in range(version * 20)], folder / "predictions.csv")
    return folder / "predictions.csv"


def _analysis_output(name: str) -> Callable[[Path, int], Path]:
    def write(folder: Path, version: int) -> Path:
        from analysis.__main__ import main
        from tests.fixtures_analysis import make_experiment

        experiment = folder / "exp"
        if not experiment.exists():
            make_experiment(folder, n_trials=40)
        assert main([str(experiment)]) == 0
        return experiment / name
    return write


WRITERS: dict[str, Callable[[Path, int], Path]] = {
    TRIALS_FILE: _experiment_file(TRIALS_FILE),
    TEACHER_FILE: _experiment_file(TEACHER_FILE),
    RUN_FILE: _experiment_file(RUN_FILE),
    "trial state.pt": _trial_checkpoint,
    STUDENT_FILE: _student,
    "plug library safetensors": _plug,
    f"retrain {EVAL_FILE}": _retrain_json,
    "predict labelIds png": _prediction_png,
    "predict predictions.csv": _predictions_csv,
    **{f"analysis {name}": _analysis_output(name)
       for name in (FRONT_CSV, FRONT_PLOT, CURVES_PLOT, LAYERS_PLOT, REPORT_FILE)},
}


def causes(err: BaseException | None) -> list[int | None]:
    """The errno of every OSError in the exception's chain."""
    found = []
    while err is not None:
        if isinstance(err, OSError):
            found.append(err.errno)
        err = err.__cause__ or err.__context__
    return found


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_disk_that_fills_during_a_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, writer):
    """The disk fills while `writer` writes its file a second time (its temporary file, found by name)."""
    write = WRITERS[writer]
    target = write(tmp_path, 1)
    previous = tree(tmp_path)
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        written = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        return FullDisk(handle, 100) if written.startswith(f".{target.name}.") else handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(Exception) as raised:
        write(tmp_path, 2)
    assert errno.ENOSPC in causes(raised.value)  # torch.save reports it as a RuntimeError raised while handling it
    after = tree(tmp_path)
    assert set(after) == set(previous)  # no temporary file left beside the files
    name = str(target.relative_to(tmp_path))
    assert after[name] == previous[name]  # the previous file, whole and untouched
