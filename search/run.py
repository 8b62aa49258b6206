"""Run (or resume) a search: `python search/run.py --space spaces/demo.yaml [--name N] [--storage DIR]`.

A Ray Tune Tuner runs one distillation per trial (trainable.tune_trainable.distill_trial); Optuna
proposes policies and loss weights; ASHA stops weak students early. The experiment folder
`<storage>/<name>/` is resumable with `--resume` and ends with `trials.parquet`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # snapshot the experiment often: a killed driver loses little
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from data.errors import InputError, run_cli  # noqa: E402
from search.choices import resolve_choices  # noqa: E402
from search.progress import ProgressPrinter  # noqa: E402
from search.results import FINISHED, write_trials  # noqa: E402
from search.searcher import make_scheduler, make_searcher  # noqa: E402
from search.space import Space, load_space  # noqa: E402
from trainable.checkpoint import load_weights  # noqa: E402
from trainable.choices import PolicyChoices  # noqa: E402
from trainable.config import pick_device  # noqa: E402
from trainable.evaluate import evaluate  # noqa: E402
from trainable.inventory import count_flops, count_params  # noqa: E402
from trainable.loaders import unlabeled_set, val_loader  # noqa: E402
from trainable.tune_trainable import TrialSetup, distill_trial, shared_teacher, teacher_arrays  # noqa: E402

SPACE_COPY = "space.yaml"
TEACHER_FILE = "teacher.json"
RUN_FILE = "run.json"
INTERRUPTED = 130


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search/run.py", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--space", type=Path, help="space file (YAML) of a new search")
    target.add_argument("--resume", type=Path, metavar="DIR", help="experiment folder of a search to continue")
    parser.add_argument("--name", help="experiment name (default: the space file's stem)")
    parser.add_argument("--storage", default="runs", help="folder of experiments; shared by all nodes on a cluster")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--address", help="address of an existing Ray cluster ('auto' to find one)")
    args = parser.parse_args(argv)
    if args.num_samples is not None and args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if args.resume is not None and (args.num_samples is not None or args.name is not None):
        parser.error("--resume continues a search as it was started: --num-samples and --name apply to new searches")
    return args


def storage_path(storage: str) -> str:
    """The absolute path of a local or shared folder (what Ray and the experiment's own files need)."""
    if "://" in storage:
        raise InputError(f"--storage {storage}: URIs are not supported yet; use a folder every node can see (e.g. NFS)")
    return str(Path(storage).resolve())


def check_inputs(space: Space) -> None:
    """Fail early, before Ray starts, on what the trials would otherwise trip over."""
    if not space.teacher.checkpoint.is_file():
        hint = f"; train it with: python search/teacher.py --space {space.path}" if space.teacher_training else ""
        raise InputError(f"{space.path}: teacher.checkpoint: file {space.teacher.checkpoint} not found{hint}")
    if not space.data.root.is_dir():
        raise InputError(f"{space.path}: data.root: expected an existing folder, got {space.data.root} (no such folder)")
    unlabeled_set(space.data)
    val_loader(space.data)


def check_gpus(space: Space, available: float, where: str) -> None:
    """A trial asking for more GPUs than exist would wait forever: refuse the space instead."""
    if space.search.gpu > available:
        raise InputError(
            f"{space.path}: search.resources.gpu: expected at most the {available:g} GPUs {where} has "
            f"(set gpu: 0 to run on CPUs), got {space.search.gpu:g} per trial"
        )


def init_ray(address: str | None, space: Space) -> None:
    if address is None:
        check_gpus(space, torch.cuda.device_count(), "this machine")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    check_gpus(space, ray.cluster_resources().get("GPU", 0), "the Ray cluster")


def load_teacher(space: Space) -> dict[str, np.ndarray]:
    """The teacher's weights, read once here, as numpy arrays for Ray's object store."""
    return teacher_arrays(load_weights(space.teacher.build(load=False), space.teacher.checkpoint))


def teacher_summary(space: Space, experiment: Path, state_ref: ray.ObjectRef) -> dict:
    """The teacher's params, FLOPs and val mIoU, measured once per search (as a Ray task) and kept in teacher.json."""
    summary_file = experiment / TEACHER_FILE
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    print(f"measuring the teacher ({space.teacher.arch}) on {space.data.root / 'leftImg8bit' / space.data.val} ...", flush=True)
    measure = ray.remote(num_cpus=space.search.cpu, num_gpus=space.search.gpu)(_teacher_miou)
    with torch.device("meta"):
        structure = space.teacher.build(load=False)
    summary = {
        "arch": space.teacher.arch,
        "arch_args": space.teacher.arch_args,
        "params": count_params(structure),
        "flops": count_flops(structure, space.data.crop),
        "miou": ray.get(measure.remote(space, state_ref)),
    }
    summary_file.write_text(json.dumps(summary, indent=2))
    print(f"teacher: {summary['params'] / 1e6:.3f}M params, val mIoU {summary['miou']:.4f}", flush=True)
    return summary


def _teacher_miou(space: Space, state: dict[str, np.ndarray]) -> float:
    device = pick_device()
    teacher = shared_teacher(space.teacher, state).to(device)
    return evaluate(teacher, val_loader(space.data), space.data.eval, space.teacher.num_classes, device).miou


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_trainable(space: Space, choices: PolicyChoices, state_ref: ray.ObjectRef, teacher_miou: float):
    """The trial function with its typed setup; the teacher's arrays travel once, through the object store."""
    setup = TrialSetup(space.teacher, space.data, space.distill, choices, teacher_miou, space.search.score)
    trainable = tune.with_parameters(distill_trial, setup=setup, teacher_state=state_ref)
    return tune.with_resources(trainable, {"cpu": space.search.cpu, "gpu": space.search.gpu})


def new_tuner(space: Space, choices: PolicyChoices, experiment: Path, storage: str, num_samples: int, trainable) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space, choices),
            scheduler=make_scheduler(space),
            num_samples=num_samples,
            max_concurrent_trials=space.search.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[ProgressPrinter()],
            verbose=0,
        ),
    )


def summarize(experiment: Path, num_samples: int, wall_s: float, space: Space) -> int:
    """Write trials.parquet; tell an interrupted search from a finished one; print Tune's share of the wall time."""
    analysis = tune.ExperimentAnalysis(str(experiment))
    done = [t for t in analysis.trials if t.status in FINISHED]
    if len(done) < num_samples:
        print(
            f"\nsearch interrupted: {len(done)} of {num_samples} trials finished. "
            f"Resume with: python search/run.py --resume {experiment}",
            file=sys.stderr,
        )
        return INTERRUPTED
    table = write_trials(experiment, analysis)
    work = float(table["wall_s"].fillna(0).sum())
    slots = min(space.search.max_concurrent, max(1, int(ray.cluster_resources().get("CPU", 1) // space.search.cpu)))
    share = max(0.0, 1.0 - work / (wall_s * slots)) if wall_s > 0 else 0.0
    counts = table["status"].value_counts().to_dict()
    print(f"\n{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"results: {experiment / 'trials.parquet'}; front and plots: python -m analysis {experiment}")
    print(
        f"Tune's share of the wall time: {share:.1%} (trials computed {work:.0f}s of {wall_s:.0f}s x {slots} "
        f"slot{'s' if slots > 1 else ''}; the rest is worker start-up, scheduling and idle slots)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume is not None:
        experiment = args.resume.resolve()
        if not (experiment / SPACE_COPY).is_file() or not (experiment / RUN_FILE).is_file():
            raise InputError(f"{args.resume}: not a plugkd experiment folder (no {SPACE_COPY} or {RUN_FILE})")
        space = load_space(experiment / SPACE_COPY)
        num_samples = json.loads((experiment / RUN_FILE).read_text())["num_samples"]
        storage = str(experiment.parent)
    else:
        space = load_space(args.space)
        storage = storage_path(args.storage)
        experiment = Path(storage) / (args.name or space.name)
        if (experiment / RUN_FILE).exists():
            raise InputError(f"{experiment}: experiment exists; resume it with --resume {experiment} or pick another --name")
        num_samples = args.num_samples or space.search.num_samples
    choices = resolve_choices(space)
    check_inputs(space)
    init_ray(args.address, space)
    experiment.mkdir(parents=True, exist_ok=True)
    if args.resume is None:
        shutil.copyfile(space.path, experiment / SPACE_COPY)
        (experiment / RUN_FILE).write_text(json.dumps({"num_samples": num_samples, "space": str(space.path)}, indent=2))
    state_ref = ray.put(load_teacher(space))
    summary = teacher_summary(space, experiment, state_ref)
    trainable = make_trainable(space, choices, state_ref, summary["miou"])
    started = time.monotonic()
    if args.resume is not None and tune.Tuner.can_restore(str(experiment)):
        print(f"resuming {experiment}", flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True)
    else:
        tuner = new_tuner(space, choices, experiment, storage, num_samples, trainable)
    tuner.fit()
    return summarize(experiment, num_samples, time.monotonic() - started, space)


if __name__ == "__main__":
    run_cli(main)
