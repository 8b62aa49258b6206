"""The Ray Tune function trainable: one distillation run per trial, reported epoch by epoch.

A trial whose loss turns non-finite, or that raises, ends with a last report carrying `error_reason`
(`nonfinite_loss`, or the exception's first line) and returns normally: the search goes on, Optuna is
told FAILED, and Ray keeps its retries (`FailureConfig.max_failures`) for workers that die.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import ray
import torch
from ray import tune
from torch import nn

from data.errors import InputError
from data.kinds import kind
from data.settings import DataSettings
from search.choices import PolicyChoices
from trainable.checkpoint import read_file
from trainable.config import DistillSettings, LatencySettings, TeacherSettings
from trainable.distill import Distillation, NonFiniteLoss
from trainable.latency import measure_latency
from trainable.library import PlugCache, policy_plugs

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled config and the teacher's weights."""

    teacher: TeacherSettings
    data: DataSettings
    distill: DistillSettings
    choices: PolicyChoices
    teacher_metrics: dict[str, float]
    score: str
    library: PlugCache | None = None  # trained plugs to start from (distill.init: library)
    latency: LatencySettings = LatencySettings()  # each student's latency is measured when enabled


_TEACHERS: dict[tuple, nn.Module] = {}


def teacher_arrays(teacher: nn.Module) -> dict[str, np.ndarray]:
    """The teacher's state as numpy arrays, for Ray's object store (zero-copy reads in every worker)."""
    return {k: v.detach().cpu().numpy() for k, v in teacher.state_dict().items()}


def shared_teacher(settings: TeacherSettings, state: Mapping[str, np.ndarray]) -> nn.Module:
    """The teacher, built once per worker process from the object store's arrays and kept for later trials.

    Each array takes the dtype the module builds, whatever dtype travelled.
    """
    key = (settings.arch, repr(sorted(settings.arch_args.items())), str(settings.checkpoint))
    if key not in _TEACHERS:
        _TEACHERS.clear()
        teacher = settings.structure()
        dtypes = {k: v.dtype for k, v in teacher.state_dict().items()}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            weights = {k: torch.from_numpy(np.asarray(v)).to(dtypes[k]) for k, v in state.items()}
        teacher.load_state_dict(weights, assign=True, strict=True)
        _TEACHERS[key] = teacher.eval().requires_grad_(False)
    return _TEACHERS[key]


def trial_settings(config: Mapping[str, Any], setup: TrialSetup) -> tuple[dict[str, str], DistillSettings]:
    """The trial's policy `{layer: op}` (repaired when the searcher repaired it) and its distillation settings."""
    picks = config.get("repaired") or config.get("policy", {})
    return setup.choices.policy(picks), replace(setup.distill, **config.get("distill", {}))


def error_reason(err: BaseException) -> str:
    """`nonfinite_loss`, or the exception's type and the first line of its message."""
    if isinstance(err, NonFiniteLoss):
        return "nonfinite_loss"
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__


def resume_state(checkpoint: tune.Checkpoint | None) -> tuple[dict | None, str | None]:
    """The trial's last checkpoint state, or None and a warning when it is truncated, unreadable or gone.

    Ray keeps one checkpoint per trial (CheckpointConfig(num_to_keep=1)): a trial whose checkpoint cannot be
    read starts again from its first epoch; the warning travels in its next report and the driver prints it.
    """
    if checkpoint is None:
        return None, None
    try:
        with checkpoint.as_directory() as folder:
            return read_file(Path(folder) / STATE_FILE), None
    except (InputError, OSError) as err:
        return None, f"checkpoint unreadable, the trial starts again from epoch 1: {error_reason(err)}"


def distill_trial(config: dict, setup: TrialSetup, teacher_state: dict[str, np.ndarray]) -> None:
    """Ray Tune function trainable: infeasible policies are reported at once and never trained."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # the CPUs Ray granted, not all the machine's
    policy, settings = trial_settings(config, setup)
    params = setup.choices.params(policy)
    base = {
        "params": params,
        "param_ratio": params / setup.choices.teacher_params,
        "latency_pred_ms": setup.choices.latency_ms(policy),
        # Every cost objective's key from the first report on: Ray refuses a report lacking one (a trial that
        # fails before its first epoch would otherwise end the whole multi-objective search).
        "flops": None,
        "latency_ms": None,
        "epochs_total": settings.epochs,
        **{f"teacher_{k}": v for k, v in setup.teacher_metrics.items()},
        "policy": json.dumps(policy),
        "proposal": config.get("proposal", "optuna"),
        "predicted_drop": setup.choices.predicted_drop(policy),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "error_reason": None,
    }
    if not setup.choices.feasible(policy):
        tune.report({**base, "infeasible": True, "epoch": 0, setup.score: 0.0, "score": 0.0, "flops": 0})
        return
    last: dict = {}
    notes: dict = {}  # a warning for the next report only
    try:
        run = Distillation(
            shared_teacher(setup.teacher, teacher_state), setup.teacher, policy, setup.data, settings,
            log_dir=Path(tune.get_context().get_trial_dir()) / "tb", teacher_metrics=setup.teacher_metrics,
        )
        if setup.latency.enabled:
            s = setup.latency
            measured = measure_latency(run.student, kind(setup.data.dataset).input_size(setup.data), s.batch, run.device,
                                       s.warmup, s.runs, s.backend)
            base.update(latency_ms=measured.median_ms, latency_ratio=measured.median_ms / setup.choices.teacher_latency_ms)
        if setup.library is not None and settings.init == "library":
            run.init_plugs(policy_plugs(setup.library, run.teacher, policy))
        state, warning = resume_state(tune.get_checkpoint())
        if state is not None:
            run.load_state_dict(state)
            last.update(run.history[-1] if run.history else {})
        if warning is not None:
            notes["warning"] = warning

        def report(metrics: dict, run: Distillation) -> None:
            last.update(metrics)
            with tempfile.TemporaryDirectory() as folder:
                run.save(Path(folder) / STATE_FILE)
                tune.report(
                    {**base, **notes, **metrics, "infeasible": False, "score": metrics[setup.score]},
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )
            notes.clear()

        run.fit(on_epoch=report)
    except Exception as err:  # the trial ends in error; the search goes on
        tune.report({
            **base, **notes, **last, "infeasible": False, "error_reason": error_reason(err),
            "epoch": last.get("epoch", 0), setup.score: last.get(setup.score, 0.0), "score": last.get(setup.score, 0.0),
        })
