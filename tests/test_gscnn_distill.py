"""Distilling the two-output Gated-SCNN teacher: binary KD of its edge map (`distill.w_edge`), its refusal for a
teacher without one, the real space spaces/gscnn.yaml, the inspect figures, and a search over a narrow GSCNN."""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from data.errors import InputError, run_cli
from data.names import COMPLETED, RESULT_FILE, TRIALS_FILE
from data.settings import DataSettings
from data.synthetic import generate
from search.choices import resolve_choices
from search.space import load_space
from tests.reference import deterministic_state
from trainable import layers as layers_cli
from trainable import losses, models
from trainable.config import DistillSettings, TeacherSettings
from trainable.distill import Distillation
from trainable.inventory import convs, select

ROOT = Path(__file__).resolve().parents[1]
NARROW = 0.0625
SIZE = (32, 64)
ARGS = {"num_classes": 19, "width": NARROW}
# Plugs in the backbone (reaching the edge map through dsn3), the shape stream and a gate.
POLICY = {"mod3.block1.convs.conv2": "dws", "res2.conv1": "dws", "gate2._gate_conv.1": "dws"}


def filled_gscnn() -> nn.Module:
    """A narrow GSCNN with the scale-preserving fill of gscnn.md §14B, applied to its own shapes.

    The default init gives near-constant outputs at this width (edge map 0.441 everywhere), and the fill alone a
    flat one (the 1-channel fuse conv); `fuse` scaled by 30 spreads the edge map over about 0.03-0.49.
    """
    model = models.build("gscnn", **ARGS)
    state = deterministic_state((key, tuple(value.shape)) for key, value in model.state_dict().items())
    state["fuse.weight"] = state["fuse.weight"] * 30
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DataSettings:
    root = tmp_path_factory.mktemp("gscnn_data")
    generate(root, train=1, val=1, size=SIZE, seed=0, extra=4)
    return DataSettings(root=root, unlabeled=("leftImg8bit/train_extra",), crop=SIZE, scale=(1.0, 1.0), batch_size=2)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return filled_gscnn()


def distillation(teacher: nn.Module, data: DataSettings, policy=POLICY, **settings) -> Distillation:
    defaults = DistillSettings(epochs=2, steps_per_epoch=1, lr=1e-2, seed=0)
    return Distillation(teacher, TeacherSettings.of("gscnn", args=ARGS), policy, data, replace(defaults, **settings),
                        device="cpu", teacher_metrics={"miou": 0.0}, log=lambda line: None)


@contextlib.contextmanager
def recording(*modules: nn.Module) -> Iterator[list[list[tuple[dict, object]]]]:
    """(keyword arguments, output) of every forward call of each module inside the block."""
    calls: list[list[tuple[dict, object]]] = [[] for _ in modules]
    handles = [m.register_forward_hook(lambda m, args, kwargs, out, c=c: c.append((dict(kwargs), out)), with_kwargs=True)
               for m, c in zip(modules, calls)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


# --- the loss ------------------------------------------------------------------------------------


def test_edge_kd_loss_is_the_binary_kl_of_the_probabilities():
    student = torch.tensor([0.1, 0.5, 0.9, 0.3]).view(1, 1, 2, 2)
    teacher = torch.tensor([0.2, 0.5, 0.6, 0.0]).view(1, 1, 2, 2)

    def binary_kl(s: torch.Tensor, t: torch.Tensor) -> float:
        s, t = s.double(), t.double()
        return (torch.xlogy(t, t) - t * s.log() + torch.xlogy(1 - t, 1 - t) - (1 - t) * (1 - s).log()).mean().item()

    assert losses.edge_kd_loss(student, teacher).item() == pytest.approx(binary_kl(student, teacher), rel=1e-6)
    saturated = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert losses.edge_kd_loss(saturated, saturated).item() == 0.0
    assert losses.edge_kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)
    near = teacher.clamp(0.01, 0.99)  # KL about 1e-8: float32 BCE minus float32 entropy would be rounding noise
    assert losses.edge_kd_loss(near + 1e-4, near).item() == pytest.approx(binary_kl(near + 1e-4, near), rel=1e-3)
    assert math.isfinite(losses.edge_kd_loss(saturated, teacher).item())


def test_edge_kd_gradient_on_the_logits_is_student_minus_teacher():
    logits = torch.tensor([-3.0, 0.0, 2.0, 5.0]).view(1, 1, 2, 2).requires_grad_(True)
    teacher = torch.tensor([0.2, 0.5, 0.6, 0.1]).view(1, 1, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a distillation step on a device with autocast
        loss = losses.edge_kd_loss(torch.sigmoid(logits), teacher)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.allclose(logits.grad, (torch.sigmoid(logits.detach()) - teacher) / 4, atol=1e-6)


def test_edge_output_is_detected_by_the_forward_signature():
    assert losses.has_edge_output(models.build("gscnn", width=NARROW))
    assert not losses.has_edge_output(models.build("deepwv3plus", width=NARROW))


# --- the distillation step -----------------------------------------------------------------------


@pytest.mark.parametrize("w_edge", [0.0, 2.0])
def test_step_runs_one_forward_each_and_distils_both_edge_outputs(teacher, data, w_edge):
    run = distillation(teacher, data, w_edge=w_edge, w_hint=0.5, w_kd=1.5)
    with recording(run.teacher, run.student) as (teacher_calls, student_calls):
        metrics = run.train_epoch()
    assert len(teacher_calls) == len(student_calls) == 1  # the edge map comes from the same forward
    for kwargs, _ in teacher_calls + student_calls:
        assert kwargs == ({"return_edge": True} if w_edge else {})
    parts = 0.5 * metrics["loss_hint"] + 1.5 * metrics["loss_kd"] + w_edge * metrics["loss_edge"]
    assert metrics["loss"] == pytest.approx(parts, rel=1e-6)
    if not w_edge:
        assert metrics["loss_edge"] == 0.0
        return
    (_, (_, teacher_edge)), (_, (_, student_edge)) = teacher_calls[0], student_calls[0]
    assert teacher_edge.shape == student_edge.shape == (2, 1, *SIZE)
    expected = losses.edge_kd_loss(student_edge, teacher_edge).item()
    assert metrics["loss_edge"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss_edge"] > 1e-4 and math.isfinite(metrics["loss_edge"])
    assert losses.edge_kd_loss(student_edge, student_edge).item() < 1e-9  # not the student (or teacher) twice


def test_edge_term_alone_trains_backbone_and_shape_stream_plugs(teacher, data):
    run = distillation(teacher, data, w_edge=1.0, w_hint=0.0, w_kd=0.0, weight_decay=0.0)  # no decay: only gradients move
    before = {name: [p.clone() for p in run.student.get_submodule(name).parameters()] for name in POLICY}
    metrics = run.train_epoch()
    assert metrics["loss"] == pytest.approx(metrics["loss_edge"], rel=1e-6) and metrics["loss_edge"] > 0
    for name, params in before.items():
        after = list(run.student.get_submodule(name).parameters())
        assert any(not torch.equal(a, b) for a, b in zip(params, after)), name


def test_fit_reports_loss_edge_per_epoch_in_the_log_and_tensorboard(teacher, data, tmp_path):
    lines: list[str] = []
    run = Distillation(teacher, TeacherSettings.of("gscnn", args=ARGS), POLICY, data,
                       DistillSettings(epochs=2, steps_per_epoch=1, lr=1e-2, w_edge=1.0), log_dir=tmp_path / "tb",
                       device="cpu", teacher_metrics={"miou": 0.0}, log=lines.append)
    history = run.fit()
    assert len(history) == 2 and all(m["loss_edge"] > 0 and math.isfinite(m["loss_edge"]) for m in history)
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(f"edge {m['loss_edge']:.4f}]" in line for m, line in zip(history, epochs))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("epoch/loss_edge")] == pytest.approx([m["loss_edge"] for m in history])


# --- refusals ------------------------------------------------------------------------------------


def test_distillation_refuses_w_edge_for_a_teacher_without_edge_output(data):
    deeplab = TeacherSettings.of("deepwv3plus", args=ARGS)
    with pytest.raises(InputError) as err:
        Distillation(deeplab.build(), deeplab, {}, data, DistillSettings(w_edge=0.5), device="cpu")
    message = str(err.value)
    assert message.startswith("distill.w_edge: expected 0 for teacher deepwv3plus") and message.endswith("got 0.5")
    assert "\n" not in message


def small_space(tmp: Path, arch: str, w_edge, checkpoint: Path, data_root: Path, **search) -> Path:
    space = {
        "teacher": {"arch": arch, **ARGS, "checkpoint": str(checkpoint)},
        "data": {"dataset": "cityscapes", "root": str(data_root), "unlabeled": ["leftImg8bit/train_extra"],
                 "val": "val", "crop": list(SIZE), "scale": [1.0, 1.0], "batch_size": 2, "eval": "whole",
                 "max_val_images": 1},
        "policy": {"groups": [{"layers": ["mod3.*.convs.conv2", "res2.conv1"], "ops": ["dws", "group2"]}]},
        "distill": {"epochs": 1, "steps_per_epoch": 1, "w_edge": w_edge, "init": "scratch",
                    "lr": {"loguniform": [1e-3, 1e-2], "default": 3e-3}},
        "search": {"num_samples": 2, "searcher": "random", "scheduler": "none", "resources": {"cpu": 1, "gpu": 0},
                   "max_concurrent": 1, "seed": 0, **search},
    }
    path = tmp / f"{arch}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize("w_edge", [0.5, {"choice": [0, 0.5]}, {"uniform": [0, 1]}])
def test_space_refuses_w_edge_for_a_teacher_without_edge_output(tmp_path, w_edge):
    path = small_space(tmp_path, "deepwv3plus", w_edge, tmp_path / "t.pt", tmp_path)
    with pytest.raises(InputError) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: distill.w_edge: expected 0 for teacher deepwv3plus, whose forward has "
                                     "no return_edge (no edge output to distil), got ")
    assert load_space(small_space(tmp_path, "deepwv3plus", 0, tmp_path / "t.pt", tmp_path)).distill.w_edge == 0
    assert load_space(small_space(tmp_path, "gscnn", w_edge, tmp_path / "t.pt", tmp_path)).teacher.arch == "gscnn"


# --- the real space and the layer names -----------------------------------------------------------


def test_real_space_validates_and_resolves_every_pattern():
    space = load_space(ROOT / "spaces" / "gscnn.yaml")
    assert space.teacher.arch == "gscnn" and space.teacher.checkpoint.name == "best_cityscapes_checkpoint.pth"
    assert (space.data.eval.mode, space.data.eval.flip, space.data.eval.scales) == ("whole", False, (1.0,))  # §13
    assert space.searched["w_edge"].values == (0, 1, 4) and space.search.gpu == 1
    choices = resolve_choices(space)  # raises if a pattern selects no conv of the meta structure
    named = convs(space.teacher.structure())
    expected = [n for n, c in named.items() if c.kernel_size == (3, 3)
                and n.startswith(("mod2", "mod3", "mod4", "mod5", "mod6", "mod7", "aspp"))]
    assert [c.key for c in choices.choices] == expected and len(expected) == 35  # 32 backbone + 3 ASPP branches


def test_patterns_reach_trunk_shape_stream_gates_aspp_edge_branch_and_decoder():
    named = convs(models.build("gscnn", width=NARROW))
    reach = {
        "mod1.conv1": ["mod1.conv1"],
        "dsn[1347]": ["dsn1", "dsn3", "dsn4", "dsn7"],
        "res[123].conv[12]": [f"res{i}.conv{j}" for i in (1, 2, 3) for j in (1, 2)],
        "d[123]": ["d1", "d2", "d3"],
        "gate*._gate_conv.*": [f"gate{i}._gate_conv.{j}" for i in (1, 2, 3) for j in (1, 3)],
        "fuse": ["fuse"], "cw": ["cw"],
        "aspp.*.0": [f"aspp.features.{i}.0" for i in range(4)] + ["aspp.img_conv.0", "aspp.edge_conv.0"],
        "bot_*": ["bot_fine", "bot_aspp"],
        "final_seg.*": ["final_seg.0", "final_seg.3", "final_seg.6"],
    }
    for pattern, names in reach.items():
        assert select(named, [pattern]) == names, pattern
    # Each gate's main 1x1 weight (`gateK.weight`) is a raw parameter used with F.conv2d, not a Conv2d: no plug.
    assert [n for n in named if n.startswith("gate1")] == ["gate1._gate_conv.1", "gate1._gate_conv.3"]


def test_inspect_json_reports_the_reference_params_and_flops(capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(layers_cli.main, ["--teacher", "gscnn", "--num-classes", "19", "--input-size", "1024", "2048", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert stop.value.code == 0
    assert report["params"] == 137_278_190  # gscnn.md §1
    assert report["flops"] == pytest.approx(12.08e12, abs=0.005e12)  # gscnn.md §15, 1x3x1024x2048
    assert len(report["layers"]) == 75


# --- a search over a narrow GSCNN ----------------------------------------------------------------


def test_search_over_a_narrow_gscnn_writes_trials(tmp_path, data):
    checkpoint = tmp_path / "gscnn.pt"
    torch.save(filled_gscnn().state_dict(), checkpoint)
    space = small_space(tmp_path, "gscnn", {"choice": [0.5, 1.0]}, checkpoint, data.root)
    done = subprocess.run([sys.executable, str(ROOT / "search" / "run.py"), "--space", str(space), "--name", "g",
                           "--storage", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "runs" / "g" / TRIALS_FILE)
    assert len(table) == 2 and set(table["status"]) == {COMPLETED}, table.to_dict("records")
    assert set(table["hp.w_edge"]) <= {0.5, 1.0}
    for trial_id in table["trial_id"]:
        result = json.loads((tmp_path / "runs" / "g" / f"trial_{trial_id}" / RESULT_FILE).read_text().splitlines()[-1])
        assert result["loss_edge"] > 0 and math.isfinite(result["loss_edge"])
