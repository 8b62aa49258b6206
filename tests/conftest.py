"""Shared fixtures: a small synthetic Cityscapes folder and a narrow DeepWV3Plus teacher trained on it; the tiny
searches' inputs. Plain helpers that tests share are the modules beside this one (`tests.cli`, `tests.searches`, ...);
no test module imports another."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Idle OpenMP threads yield the core: a test's subprocess searches (a driver and Ray workers) share the 2 cores
# with this process, and spinning threads slowed them by a fifth.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A search started by a test runs its own Ray instance: without an address, ray.init() joins any cluster this machine
# already runs (/tmp/ray/ray_current_cluster), a benchmark's for example.
os.environ.setdefault("RAY_ADDRESS", "local")

import pytest  # noqa: E402
import torch  # noqa: E402

from data.synthetic import generate  # noqa: E402
from trainable.checkpoint import save_atomic  # noqa: E402
from trainable.config import TeacherSettings  # noqa: E402
from data.settings import DataSettings  # noqa: E402
from trainable import tasks  # noqa: E402
from trainable.supervised import train_supervised  # noqa: E402

from tests.searches import tiny_inputs  # noqa: E402

TEACHER_WIDTH = 0.125
IMAGE_SIZE = (64, 128)


@dataclass(frozen=True)
class TrainedTeacher:
    settings: TeacherSettings
    miou: float


@dataclass(frozen=True)
class TinyInputs:
    """What a tiny search reads (tests.searches.tiny_inputs): synthetic Cityscapes and a random narrow teacher."""
    data: Path
    teacher: Path


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # Two xdist workers share the 2 cores: one thread each; alone, the test process takes both.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, train=48, val=8, size=IMAGE_SIZE, seed=0, extra=64)
    return root


@pytest.fixture(scope="session")
def data_settings(synthetic_root) -> DataSettings:
    return DataSettings(root=synthetic_root, unlabeled=("leftImg8bit/train_extra",), crop=IMAGE_SIZE,
                        scale=(0.75, 1.25), batch_size=8)


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, data_settings) -> TrainedTeacher:
    """A narrow DeepWV3Plus trained (supervised) on the synthetic train split for about half a minute."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    settings = TeacherSettings.of("deepwv3plus", args={"num_classes": 19, "width": TEACHER_WIDTH}, checkpoint=path)
    torch.manual_seed(0)
    model = settings.build(load=False).train().requires_grad_(True)
    scores = train_supervised(model, tasks.get(tasks.Segmentation.name), data_settings, epochs=40, lr=1e-2,
                              batch_size=8, num_classes=19, device=torch.device("cpu"), log=lambda line: None)
    miou = scores["miou"]
    save_atomic(model.state_dict(), path)
    return TrainedTeacher(settings, miou)


@pytest.fixture(scope="session")
def tiny_search_inputs(tmp_path_factory) -> TinyInputs:
    """The inputs of the tiny searches (tests.searches.tiny_space), made once: 4 train, 4 val and 16 unlabeled 32x64
    scenes, a random DeepWV3Plus of width 1/16. Read only: each search writes below its own folder."""
    folder = tmp_path_factory.mktemp("tiny_search")
    teacher = tiny_inputs(folder)
    return TinyInputs(folder / "data", teacher)
