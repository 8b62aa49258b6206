"""The Ray Tune function trainable: one full distillation run per trial, reported epoch by epoch."""
from __future__ import annotations

import json
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

from trainable import models
from trainable.checkpoint import read_file
from trainable.choices import PolicyChoices
from trainable.config import DistillSettings, TeacherSettings
from data.settings import DataSettings
from trainable.distill import Distillation

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled config and the teacher's weights."""

    teacher: TeacherSettings
    data: DataSettings
    distill: DistillSettings
    choices: PolicyChoices
    teacher_miou: float
    score: str = "miou"


_TEACHERS: dict[tuple, nn.Module] = {}


def teacher_arrays(teacher: nn.Module) -> dict[str, np.ndarray]:
    """The teacher's state as numpy arrays, for Ray's object store (zero-copy reads in every worker)."""
    return {k: v.detach().cpu().numpy() for k, v in teacher.state_dict().items()}


def shared_teacher(settings: TeacherSettings, state: Mapping[str, np.ndarray]) -> nn.Module:
    """The teacher, built once per worker process from the object store's arrays and kept for later trials."""
    key = (settings.arch, settings.num_classes, settings.width, str(settings.checkpoint))
    if key not in _TEACHERS:
        _TEACHERS.clear()
        with torch.device("meta"):
            teacher = models.build(settings.arch, **settings.arch_args)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            weights = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
        teacher.load_state_dict(weights, assign=True, strict=True)
        _TEACHERS[key] = teacher.eval().requires_grad_(False)
    return _TEACHERS[key]


def trial_settings(config: Mapping[str, Any], setup: TrialSetup) -> tuple[dict[str, str], DistillSettings]:
    """The trial's policy `{layer: op}` and its distillation settings (fixed values plus sampled ones)."""
    return setup.choices.policy(config.get("policy", {})), replace(setup.distill, **config.get("distill", {}))


def distill_trial(config: dict, setup: TrialSetup, teacher_state: dict[str, np.ndarray]) -> None:
    """Ray Tune function trainable: infeasible policies are reported at once and never trained."""
    policy, settings = trial_settings(config, setup)
    params = setup.choices.params(policy)
    base = {
        "params": params,
        "param_ratio": params / setup.choices.teacher_params,
        "epochs_total": settings.epochs,
        "teacher_miou": setup.teacher_miou,
        "policy": json.dumps(policy),
        "node_id": ray.get_runtime_context().get_node_id(),
    }
    if not setup.choices.feasible(policy):
        tune.report({**base, "infeasible": True, "epoch": 0, "miou": 0.0, "score": 0.0, "flops": 0})
        return
    run = Distillation(
        shared_teacher(setup.teacher, teacher_state), setup.teacher, policy, setup.data, settings,
        log_dir=Path(tune.get_context().get_trial_dir()) / "tb", teacher_miou=setup.teacher_miou,
    )
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.load_state_dict(read_file(Path(folder) / STATE_FILE))

    def report(metrics: dict, run: Distillation) -> None:
        with tempfile.TemporaryDirectory() as folder:
            run.save(Path(folder) / STATE_FILE)
            tune.report(
                {**base, **metrics, "infeasible": False, "score": metrics[setup.score]},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    run.fit(on_epoch=report)
