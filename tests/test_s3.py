"""An experiment on S3, against a real S3 API (a moto server on 127.0.0.1): search, SIGKILL, resume, analysis, retrain.

The URI carries the endpoint (`?endpoint_override=127.0.0.1:PORT&scheme=http`) as pyarrow reads it; the fake
credentials come from the environment, as a user's would.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from data.names import (
    COMPLETED, CURVES_PLOT, EVAL_FILE, FRONT_CSV, FRONT_PLOT, LAYERS_PLOT, OPTUNA_FILE, REPORT_FILE, RESULT_FILE, RUN_FILE,
    SPACE_COPY, STUDENT_FILE, TEACHER_FILE, TRIALS_FILE,
)
from tests.experiments import consistent, recorded, trial_end
from tests.processes import freeze_trials
from tests.searches import ROOT, search_command, tiny_inputs, tiny_space, write_space

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

TIMEOUT = 300
BUCKET = "plugkd"
NUM_SAMPLES = 4
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # no instance-metadata probe: nothing outside 127.0.0.1


@pytest.fixture(scope="module")
def s3() -> dict:
    """A moto S3 server on a free port of 127.0.0.1, with one bucket."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**os.environ, **CREDENTIALS}
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield {"client": client, "query": f"endpoint_override={host}:{port}&scheme=http", "env": env}
    server.stop()


def objects(client, prefix: str) -> dict[str, bytes]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def bucket_snapshot(client) -> dict[str, tuple[str, int]]:
    """The newest snapshot the driver wrote into the bucket (empty while its files disagree)."""
    newest = [max(found.items())[1] if found else None
              for found in (objects(client, f"runs/n/{kind}-") for kind in ("experiment_state", "search_gen_state"))]
    return consistent(*newest)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, s3) -> dict:
    """A search stored in the bucket, SIGKILLed (its whole process group) after two trials ended, then resumed."""
    tmp = tmp_path_factory.mktemp("s3")
    raw = tiny_space(tmp / "data", tiny_inputs(tmp, extra=8), num_samples=NUM_SAMPLES, scheduler="none")
    del raw["distill"]["lr"]
    raw["distill"]["epochs"] = 2
    space = write_space(tmp, raw, "s3.yaml", sort_keys=True)
    storage = f"s3://{BUCKET}/runs?{s3['query']}"
    uri = f"s3://{BUCKET}/runs/n?{s3['query']}"
    driver = subprocess.Popen(search_command("--space", space, "--storage", storage, "--name", "n"), cwd=ROOT,
                              env=s3["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ended: set[str] = set()
    log = []
    deadline = time.monotonic() + TIMEOUT
    try:
        for line in driver.stdout:
            log.append(line)
            if end := trial_end(line):
                ended.add(end[0])
            if len(ended) >= 2 or time.monotonic() > deadline:
                break
        freeze_trials(driver.pid)  # the running trials can end no more: the search is unfinished when it is killed
        while not recorded(bucket_snapshot(s3["client"]), ended) and time.monotonic() < deadline:
            time.sleep(0.2)  # until Ray's next experiment snapshot in the bucket holds the ended trials
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert len(ended) >= 2, "".join(log)
    before = objects(s3["client"], "runs/n/")
    resumed = subprocess.run(search_command("--resume", uri), cwd=ROOT, env=s3["env"], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {"tmp": tmp, "uri": uri, "ended": ended, "before": before, "resumed": resumed, "first": "".join(log)}


def test_search_killed_and_resumed_on_s3_writes_trials_parquet_into_the_bucket(searched, s3):
    assert f"resuming '{searched['uri']}'" in searched["resumed"].stdout  # quoted: the query's & is a shell word
    stored = objects(s3["client"], "runs/n/")
    table = pd.read_parquet(io.BytesIO(stored[f"runs/n/{TRIALS_FILE}"]))
    assert len(table) == NUM_SAMPLES and table["trial_id"].is_unique
    assert (table["status"] == COMPLETED).all() and table["miou"].between(0, 1).all()
    assert all(path.startswith(f"{BUCKET}/runs/n/trial_") for path in table["checkpoint"])  # checkpoints in the bucket
    assert {f"runs/n/{name}" for name in (SPACE_COPY, RUN_FILE, TEACHER_FILE)} <= set(stored)
    assert not any(key.endswith(OPTUNA_FILE) for key in stored)  # the study lives in Ray's searcher state on S3
    assert not (ROOT / BUCKET).exists()  # nothing went to a local folder named like the bucket


def test_trials_finished_before_the_kill_are_not_run_again(searched, s3):
    stored = objects(s3["client"], "runs/n/")
    for trial_id in searched["ended"]:
        key = f"runs/n/trial_{trial_id}/{RESULT_FILE}"
        assert stored[key] == searched["before"][key], f"trial {trial_id} ran again after resume"


def test_analysis_of_an_s3_experiment_writes_its_outputs_into_the_bucket(searched, s3):
    done = subprocess.run([sys.executable, "-m", "analysis", searched["uri"]], cwd=ROOT, env=s3["env"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"into {searched['uri']}" in done.stdout
    stored = objects(s3["client"], "runs/n/")
    for name in (FRONT_CSV, FRONT_PLOT, CURVES_PLOT, LAYERS_PLOT, REPORT_FILE):
        assert stored[f"runs/n/{name}"], name
    front = pd.read_csv(io.BytesIO(stored[f"runs/n/{FRONT_CSV}"]))
    assert 1 <= len(front) <= NUM_SAMPLES


def test_retrain_reads_the_best_trials_checkpoint_from_the_bucket(searched, s3):
    out = searched["tmp"] / "checkpoints"
    done = subprocess.run([sys.executable, str(ROOT / "search" / "retrain.py"), searched["uri"], "--out", str(out),
                           "--no-onnx"], cwd=ROOT, env=s3["env"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    key = f"runs/n/{TRIALS_FILE}"
    table = pd.read_parquet(io.BytesIO(objects(s3["client"], key)[key]))
    best = table.sort_values("miou", ascending=False).iloc[0]
    assert f"retraining trial {best['trial_id']} of s3://{BUCKET}/runs/n " in done.stdout
    assert f"from its checkpoint {best['checkpoint']} for 1 epochs" in done.stdout
    report = json.loads((out / "n" / EVAL_FILE).read_text())
    assert report["epochs"] == 1 and 0 <= report["miou"] <= 1
    assert (out / "n" / STUDENT_FILE).is_file()


def test_analysis_of_a_prefix_holding_no_experiment_is_one_line_naming_the_uri(s3):
    done = subprocess.run([sys.executable, "-m", "analysis", f"s3://{BUCKET}/nothing?{s3['query']}"], cwd=ROOT,
                          env=s3["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: s3://{BUCKET}/nothing: ") and done.stderr.count("\n") == 1
