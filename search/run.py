"""Run (or resume) a search: `python search/run.py --space spaces/demo.yaml [--name N] [--storage DIR]`.

A Ray Tune Tuner runs one distillation per trial (search.trial.distill_trial); Optuna
proposes policies and loss weights; ASHA stops weak students early. The experiment folder
`<storage>/<name>/` is resumable with `--resume` and ends with `trials.parquet`.
"""
from __future__ import annotations

import argparse
import json
import os
import hashlib
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # snapshot the experiment often: a killed driver loses little
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from data.errors import InputError, run_cli  # noqa: E402
from data.names import KEEP, LATENCY_PREFIX, OPTUNA_FILE, RUN_FILE, SPACE_COPY, TEACHER_FILE, TRIALS_FILE  # noqa: E402
from search.choices import PolicyChoices, resolve_choices  # noqa: E402
from search.experiment import read_space_copy  # noqa: E402
from search.library import Library, build_library  # noqa: E402
from search.lock import DriverLock  # noqa: E402
from search.progress import ProgressPrinter  # noqa: E402
from search.results import FINISHED, write_trials  # noqa: E402
from search.searcher import make_scheduler, make_searcher, scheduler_callbacks  # noqa: E402
from search.space import Space, load_space  # noqa: E402
from search.storage import Location  # noqa: E402
from search.teacher import check_classes  # noqa: E402
from search.trial import TrialSetup, distill_trial, shared_teacher, teacher_arrays  # noqa: E402
from trainable.checkpoint import load_weights  # noqa: E402
from trainable.config import describe_device, pick_device  # noqa: E402
from trainable.inventory import count_flops, count_params, output_classes  # noqa: E402
from trainable.latency import measure_latency, plug_latencies  # noqa: E402
from trainable.loaders import unlabeled_set, val_loader  # noqa: E402

INTERRUPTED = 130
STORAGE = "runs"  # where new experiments go unless --storage says


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="search/run.py", description=__doc__.split("\n\n")[0],
        epilog="Both tasks: a segmentation space is scored by miou, a classification space by top1 (or top5); "
               "the space's teacher.task (or its zoo arch) says which.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--space", type=Path, help="space file (YAML) of a new search")
    target.add_argument("--resume", metavar="DIR", help="experiment folder (or s3:// URI) of a search to continue")
    parser.add_argument("--name", help="experiment name (default: the space file's stem)")
    parser.add_argument("--storage", help=f"folder of experiments, shared by all nodes on a cluster, or "
                                           f"s3://bucket/prefix (default {STORAGE}; new searches only)")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--address", help="address of an existing Ray cluster ('auto' to find one)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.num_samples is not None and args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if args.resume is not None and (args.num_samples is not None or args.name is not None or args.storage is not None):
        parser.error("--resume continues a search as it was started: --num-samples, --name and --storage apply to "
                     "new searches")
    return args


def check_inputs(space: Space) -> None:
    """Fail early, before Ray starts, on what the trials would otherwise trip over."""
    if not space.teacher.checkpoint.is_file():
        hint = f"; train it with: python search/teacher.py --space {space.path}" if space.teacher.train else ""
        raise InputError(f"{space.path}: teacher.checkpoint: file {space.teacher.checkpoint} not found{hint}")
    if not space.data.root.is_dir():
        raise InputError(f"{space.path}: data.root: expected an existing folder, got {space.data.root} (no such folder)")
    try:
        unlabeled_set(space.data)
    except InputError as err:  # names data.unlabeled and the folder
        raise InputError(f"{space.path}: {err}") from None
    val_loader(space.data)
    check_classes(space)


def check_gpus(space: Space, available: float, where: str) -> None:
    """A trial asking for more GPUs than exist would wait forever: refuse the space instead."""
    if space.search.gpu > available:
        raise InputError(
            f"{space.path}: search.resources.gpu: expected at most the {available:g} GPUs {where} has "
            f"(set gpu: 0 to run on CPUs), got {space.search.gpu:g} per trial"
        )


def init_ray(address: str | None, space: Space) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start Ray on this machine: never a cluster some other job
    happens to run here (what ray.init() without an address would join)."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        check_gpus(space, torch.cuda.device_count(), "this machine")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    check_gpus(space, ray.cluster_resources().get("GPU", 0), "the Ray cluster")


def load_teacher(space: Space) -> torch.nn.Module:
    """The teacher with its weights, read once here (its arrays then go to Ray's object store)."""
    t = space.teacher
    return load_weights(t.build(load=False), t.checkpoint, strip_prefix=t.strip_prefix).eval().requires_grad_(False)


def teacher_summary(space: Space, experiment: Location, teacher: torch.nn.Module, state_ref: ray.ObjectRef) -> dict:
    """The teacher's params, FLOPs and val metrics, measured once per search, kept in teacher.json.

    Trials on CPUs: the driver measures it with the teacher it holds (a Ray task would start a worker process
    just to import torch); trials on GPUs: a Ray task on the device a trial gets.
    """
    if experiment.exists(TEACHER_FILE):
        return json.loads(experiment.read_text(TEACHER_FILE))
    task = space.task
    print(f"measuring the teacher ({space.teacher.arch}) on the val split of {space.data.root} ...", flush=True)
    if space.search.gpu == 0:
        metrics = _teacher_metrics(space, teacher, torch.device("cpu"))
    else:
        measure = ray.remote(num_cpus=space.search.cpu, num_gpus=space.search.gpu)(_remote_teacher_metrics)
        metrics = ray.get(measure.remote(space, state_ref))
    structure = space.teacher.structure()
    summary = {
        "arch": space.teacher.arch,
        "arch_args": space.teacher.arch_args,
        "task": task.name,
        "metric": space.search.score,
        "metric_label": task.label if space.search.score == task.score else space.search.score,
        "num_classes": output_classes(structure, space.input_size),
        "params": count_params(structure),
        "flops": count_flops(structure, space.input_size),
        **metrics,
    }
    experiment.write_text(TEACHER_FILE, json.dumps(summary, indent=2))
    print(f"teacher: {summary['params'] / 1e6:.3f}M params, "
          + ", ".join(f"val {name} {value:.4f}" for name, value in metrics.items()), flush=True)
    return summary


def _teacher_metrics(space: Space, teacher: torch.nn.Module, device: torch.device) -> dict[str, float]:
    teacher = teacher.to(device)
    classes = output_classes(teacher, space.input_size)
    loader = val_loader(space.data, space.task.eval_batch_size(space.data))
    return space.task.evaluate(teacher, loader, space.data, classes, device).values


def _remote_teacher_metrics(space: Space, state: dict[str, np.ndarray]) -> dict[str, float]:
    return _teacher_metrics(space, shared_teacher(space.teacher, state), pick_device())


def _latencies(space: Space, state: dict[str, np.ndarray], layer_ops: dict[str, list[str]]) -> dict:
    """The teacher's latency and each (layer, op)'s time alone (none without `layer_ops`), on the device a trial gets."""
    device = pick_device()
    teacher = shared_teacher(space.teacher, state).to(device)
    s = space.latency
    measured = measure_latency(teacher, space.input_size, s.batch, device, s.warmup, s.runs, s.backend)
    ops = {layer: [KEEP, *names] for layer, names in layer_ops.items()}
    table = plug_latencies(teacher, ops, space.input_size, s.batch, device, s.warmup, s.runs) if ops else {}
    return {"device": describe_device(device), "teacher_ms": measured.median_ms, "spread": measured.spread, "table": table}


def timed_ops(space: Space, choices: PolicyChoices) -> dict[str, list[str]]:
    """Every op (but keep) each layer of the search can take, when the space times every plug (`Space.times_plugs`)."""
    if not space.times_plugs:
        return {}
    return {layer: [op for op in c.ops if op != KEEP] for c in choices.choices for layer in c.layers}


def latency_file(space: Space, choices: PolicyChoices) -> str:
    """The latency table's cache name: a hash of the teacher, input size, latency settings, timed ops and device kind."""
    key = hashlib.sha256(json.dumps([space.teacher.arch, repr(sorted(space.teacher.arch_args.items())),
                                     list(space.input_size), asdict(space.latency), timed_ops(space, choices),
                                     space.search.gpu > 0], sort_keys=True).encode())
    return f"{LATENCY_PREFIX}{key.hexdigest()[:16]}.json"


def with_latency(space: Space, choices: PolicyChoices, state_ref: ray.ObjectRef, folder: Location) -> PolicyChoices:
    """Choices that know the teacher's latency and, when the space times every plug, each policy's predicted latency
    (and the latency budget); timed once on the device a trial gets, cached in `folder`."""
    layer_ops = timed_ops(space, choices)
    name = latency_file(space, choices)
    if folder.exists(name):
        timed = json.loads(folder.read_text(name))
    else:
        print("timing the teacher and every plug alone ..." if layer_ops else "timing the teacher ...", flush=True)
        measure = ray.remote(num_cpus=space.search.cpu, num_gpus=space.search.gpu)(_latencies)
        timed = ray.get(measure.remote(space, state_ref, layer_ops))
        folder.write_text(name, json.dumps(timed, indent=2))
    ratio = space.policy.max_latency_ratio
    print(f"teacher latency {timed['teacher_ms']:.2f} ms on {timed['device']} (batch {space.latency.batch})", flush=True)
    timed_choices = replace(choices, layer_latency=timed["table"], teacher_latency_ms=timed["teacher_ms"],
                            max_latency_ms=None if ratio is None else ratio * timed["teacher_ms"])
    try:
        timed_choices.repair({c.key: c.ops[0] for c in choices.choices})
    except ValueError:
        raise InputError(
            f"{space.path}: policy.budget.max_latency_ratio: expected a ratio that some policy within the parameter "
            f"budget meets (latencies predicted from {folder.base}/{name}), got {ratio:g}"
        ) from None
    return timed_choices


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_trainable(space: Space, choices: PolicyChoices, state_ref: ray.ObjectRef, teacher: dict, library: Library | None):
    """The trial function with its typed setup; the teacher's arrays travel once, through the object store."""
    metrics = {name: teacher[name] for name in space.task.metrics(teacher["num_classes"]) if name in teacher}
    setup = TrialSetup(space.teacher, space.data, space.distill, choices, metrics, space.search.score,
                       library.cache if library is not None else None, space.latency)
    trainable = tune.with_parameters(distill_trial, setup=setup, teacher_state=state_ref)
    return tune.with_resources(trainable, {"cpu": space.search.cpu, "gpu": space.search.gpu})


def optuna_storage(experiment: Location) -> optuna.storages.BaseStorage | None:
    """The searcher's study as SQLite in the experiment folder (optuna-dashboard and optuna.load_study read it).

    An experiment on an object store keeps the study in Ray's searcher state only.
    """
    if experiment.local is None:
        return None
    return optuna.storages.RDBStorage(f"sqlite:///{experiment.local / OPTUNA_FILE}")


def new_tuner(space: Space, choices: PolicyChoices, experiment: Location, num_samples: int, trainable) -> tune.Tuner:
    storage = experiment.parent()
    scheduler = make_scheduler(space)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space, choices, num_samples, storage=optuna_storage(experiment)),
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=space.search.max_concurrent,
            reuse_actors=space.search.reuse_actors,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=storage.path,
            storage_filesystem=None if storage.local is not None else storage.fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # A trial's working folder (its TensorBoard files in tb/) is copied into its folder of the experiment
            # at each report: with reused actors, a worker's later trials would otherwise keep theirs in /tmp.
            sync_config=tune.SyncConfig(sync_artifacts=True),
            failure_config=tune.FailureConfig(max_failures=space.search.max_failures),
            callbacks=[ProgressPrinter(space.search.score), *scheduler_callbacks(scheduler)],
            verbose=0,
        ),
    )


def ray_filesystem(experiment: Location) -> pafs.FileSystem | None:
    return None if experiment.local is not None else experiment.fs


def exhausted(tuner: tune.Tuner) -> bool:
    """Whether the searcher that `tuner.fit()` ran ended the search for want of new settings. Ray keeps that searcher,
    new or restored from the experiment, in the tuner's TuneConfig (it has no public accessor)."""
    return bool(getattr(tuner._local_tuner._tune_config.search_alg, "exhausted", False))


def summarize(experiment: Location, num_samples: int, wall_s: float, space: Space, ran_out: bool = False) -> int:
    """Write trials.parquet; tell an interrupted search from a finished one (also one whose searcher `ran_out` of new
    settings); print Tune's share of the wall time."""
    analysis = tune.ExperimentAnalysis(experiment.path, storage_filesystem=ray_filesystem(experiment))
    done = [t for t in analysis.trials if t.status in FINISHED]
    if ran_out and len(done) == len(analysis.trials):
        print(f"the searcher found no new settings to try after {len(done)} of {num_samples} trials: the search ends")
    elif len(done) < num_samples:
        print(
            f"\nsearch interrupted: {len(done)} of {num_samples} trials finished. "
            f"Resume with: python search/run.py --resume {experiment.text}",
            file=sys.stderr,
        )
        return INTERRUPTED
    table = write_trials(experiment, analysis, space.metrics)
    work = float(table["wall_s"].fillna(0).sum())
    slots = min(space.search.max_concurrent, max(1, int(ray.cluster_resources().get("CPU", 1) // space.search.cpu)))
    share = max(0.0, 1.0 - work / (wall_s * slots)) if wall_s > 0 else 0.0
    counts = table["status"].value_counts().to_dict()
    retries = int(table["retries"].sum())
    print(f"\n{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; {retries} retr{'y' if retries == 1 else 'ies'} after a worker died")
    print(f"results: {experiment.base}/{TRIALS_FILE}; front and plots: python -m analysis {experiment.text}")
    print(
        f"Tune's share of the wall time: {share:.1%} (trials computed {work:.0f}s of {wall_s:.0f}s x {slots} "
        f"slot{'s' if slots > 1 else ''}; the rest is worker start-up, scheduling and idle slots)"
    )
    return 0


def open_experiment(args: argparse.Namespace) -> tuple[Location, Space, dict]:
    """The experiment folder, its space and its run record (a new one for --space)."""
    if args.resume is not None:
        experiment = Location.parse(args.resume)
        if not experiment.exists(SPACE_COPY) or not experiment.exists(RUN_FILE):
            raise InputError(f"{args.resume}: not a plugkd experiment folder (no {SPACE_COPY} or {RUN_FILE})")
        record = json.loads(experiment.read_text(RUN_FILE))
        return experiment, read_space_copy(experiment, record), record
    space = load_space(args.space)
    experiment = Location.parse(args.storage or STORAGE).child(args.name or space.name)
    if experiment.exists(RUN_FILE):
        raise InputError(f"{experiment.text}: experiment exists; resume it with --resume {experiment.text} or pick another --name")
    record = {"num_samples": args.num_samples or space.search.num_samples, "space": str(space.path.resolve()),
              "space_dir": str(space.path.resolve().parent)}
    return experiment, space, record


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    experiment, space, record = open_experiment(args)
    if args.resume is not None and experiment.exists(TRIALS_FILE):
        print(f"{experiment.text}: the search has finished ({TRIALS_FILE} is written); nothing to run. "
              f"Front and plots: python -m analysis {experiment.text}")
        return 0
    choices = resolve_choices(space)
    check_inputs(space)
    experiment.makedirs()
    with DriverLock(experiment):
        init_ray(args.address, space)
        teacher = load_teacher(space)
        library = build_library(space, teacher, choices, pick_device()) if space.library is not None else None
        if library is not None:
            choices = replace(choices, layer_drop=library.drops())
            record["library"] = str(library.table_path)
            record["library_s"] = record.get("library_s", 0.0) + library.seconds
        if args.resume is None:
            experiment.write_bytes(SPACE_COPY, space.path.read_bytes())
            experiment.write_text(RUN_FILE, json.dumps(record, indent=2))
        state_ref = ray.put(teacher_arrays(teacher))
        summary = teacher_summary(space, experiment, teacher, state_ref)
        del teacher
        if space.latency.enabled:
            folder = Location.parse(library.cache.folder) if library is not None else experiment
            choices = with_latency(space, choices, state_ref, folder)
            if summary.get("latency_ms") is None:
                summary["latency_ms"] = choices.teacher_latency_ms
                experiment.write_text(TEACHER_FILE, json.dumps(summary, indent=2))
        trainable = make_trainable(space, choices, state_ref, summary, library)
        started = time.monotonic()
        fs = ray_filesystem(experiment)
        if args.resume is not None and tune.Tuner.can_restore(experiment.path, storage_filesystem=fs):
            print(f"resuming {experiment.text}", flush=True)
            tuner = tune.Tuner.restore(experiment.path, trainable=trainable, resume_unfinished=True, storage_filesystem=fs)
        else:
            tuner = new_tuner(space, choices, experiment, record["num_samples"], trainable)
        tuner.fit()
        return summarize(experiment, record["num_samples"], time.monotonic() - started, space, exhausted(tuner))


if __name__ == "__main__":
    run_cli(main)
