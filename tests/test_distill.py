"""The distillation run on a narrow teacher and synthetic data, images only."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from data.errors import InputError
from trainable.config import DistillSettings
from trainable import parts
from trainable.distill import Distillation
from trainable.inventory import convs
from trainable.precision import amp_dtype

CPU = torch.device("cpu")


def dws_everywhere(teacher: torch.nn.Module) -> dict[str, str]:
    """`dws` on every 3x3 conv of the backbone (mod2-mod7)."""
    return {name: "dws" for name, conv in convs(teacher).items()
            if name.startswith(("mod2", "mod3", "mod4", "mod5", "mod6", "mod7")) and conv.kernel_size == (3, 3)}


def run(trained_teacher, data_settings, policy, **overrides) -> Distillation:
    settings = replace(DistillSettings(epochs=2, lr=5e-3, seed=0), **overrides)
    return Distillation(trained_teacher.settings.build(), trained_teacher.settings, policy, data_settings, settings,
                        device=CPU, teacher_metrics={"miou": trained_teacher.miou}, log=lambda line: None)


def test_teacher_learned_the_synthetic_scenes(trained_teacher):
    assert trained_teacher.miou > 0.5


def test_empty_policy_has_zero_losses_and_the_teacher_miou(trained_teacher, data_settings):
    distillation = run(trained_teacher, data_settings, {}, epochs=1, steps_per_epoch=2)
    metrics = distillation.fit()[-1]
    assert metrics["loss_hint"] == 0.0
    assert metrics["loss_kd"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["agreement"] == 1.0
    assert metrics["miou"] == pytest.approx(trained_teacher.miou, abs=1e-9)
    assert metrics["param_ratio"] == 1.0


def test_dws_student_distills_on_images_alone_toward_the_teacher(trained_teacher, data_settings):
    teacher = trained_teacher.settings.build()
    distillation = run(trained_teacher, data_settings, dws_everywhere(teacher), epochs=5, lr=3e-3)
    before = distillation.evaluate_student()["miou"]
    history = distillation.fit()
    mious = [before] + [m["miou"] for m in history]
    assert distillation.labeled is False
    assert history[-1]["param_ratio"] < 0.6
    assert history[-1]["loss_hint"] < history[0]["loss_hint"]
    assert history[-1]["agreement"] > history[0]["agreement"]
    # Epoch by epoch toward the teacher: never more than a val-noise dip (8 val images), far above the start.
    assert all(b > a - 0.02 for a, b in zip(mious, mious[1:])), mious
    assert mious[-1] > mious[0] + 0.1, mious
    assert mious[-1] <= trained_teacher.miou + 0.02


def test_resume_after_epoch_one_equals_uninterrupted_run(trained_teacher, data_settings, tmp_path):
    policy = {"mod5.block2.convs.conv1": "dws", "mod6.block1.convs.conv2": "group4", "aspp.features.1.0": "lowrank4"}
    whole = run(trained_teacher, data_settings, policy, steps_per_epoch=3).fit()
    first = run(trained_teacher, data_settings, policy, steps_per_epoch=3)
    first.run_epoch()
    first.save(tmp_path / "state.pt")
    from trainable.checkpoint import read_file

    resumed = run(trained_teacher, data_settings, policy, steps_per_epoch=3)
    resumed.load_state_dict(read_file(tmp_path / "state.pt"))
    history = resumed.fit()
    keys = ("miou", "loss", "loss_hint", "loss_kd", "agreement")
    for expected, got in zip(whole, history):
        for key in keys:
            assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_checkpoint_holds_only_what_differs_from_the_teacher(trained_teacher, data_settings):
    policy = {"mod6.block1.convs.conv2": "dws"}
    state = run(trained_teacher, data_settings, policy, epochs=1, train="plugged", bn="frozen").state_dict()
    assert state["student"] and all(k.startswith("mod6.block1.convs.conv2.") for k in state["student"])
    state = run(trained_teacher, data_settings, policy, epochs=1, train="plugged", bn="batch").state_dict()
    assert "mod6.block1.convs.conv2.spatial.weight" in state["student"] and "mod7.block1.bn1.0.running_mean" in state["student"]
    assert "mod5.block1.bn1.0.running_mean" not in state["student"]
    downstream = run(trained_teacher, data_settings, policy, epochs=1).state_dict()["student"]
    assert "mod7.block1.convs.conv1.weight" in downstream and "aspp.features.1.0.weight" in downstream
    assert not any(k.startswith(("mod5.", "mod6.block1.convs.conv1.")) for k in downstream)


def test_shared_prefix_is_computed_once_and_changes_nothing(trained_teacher, data_settings):
    policy = {"mod6.block1.convs.conv2": "dws", "mod7.block1.convs.conv2": "dws"}
    distillation = run(trained_teacher, data_settings, policy, epochs=1, steps_per_epoch=1)
    assert set(distillation.prefix) == {"mod1", "pool2", "mod2", "pool3", "mod3", "mod4", "mod5", "mod6.block1.bn1",
                                        "mod6.block1.proj_conv", "mod6.block1.convs.conv1", "mod6.block1.convs.bn2"}
    images = torch.randn(2, 3, 64, 128)
    active = distillation.plugged
    with distillation._training_mode(active):
        shared = distillation.step(images, None, active, update=False)
    distillation.prefix = []
    with distillation._training_mode(active):
        separate = distillation.step(images, None, active, update=False)
    for key in ("loss", "loss_hint", "loss_kd"):
        assert shared[key].item() == pytest.approx(separate[key].item(), rel=1e-5)


def test_no_shared_prefix_when_all_weights_train(trained_teacher, data_settings):
    distillation = run(trained_teacher, data_settings, {"mod6.block1.convs.conv2": "dws"}, train="all", epochs=1)
    assert distillation.prefix == []


def test_progressive_schedule_plugs_earliest_layers_first(trained_teacher, data_settings):
    policy = {"mod7.block1.convs.conv2": "dws", "mod3.block1.convs.conv1": "dws", "mod5.block1.convs.conv2": "dws"}
    distillation = run(trained_teacher, data_settings, policy, schedule="progressive", epochs=3, steps_per_epoch=1)
    assert distillation.active_layers(0) == ["mod3.block1.convs.conv1"]
    assert distillation.active_layers(1) == ["mod3.block1.convs.conv1", "mod5.block1.convs.conv2"]
    assert distillation.active_layers(2) == distillation.plugged
    history = distillation.fit()
    assert [m["active_layers"] for m in history] == [1, 2, 3]


def test_shared_prefix_helper_on_a_torchvision_resnet():
    from trainable import models
    from trainable.surgery import apply_policy

    teacher = models.build("tv_resnet18", num_classes=10).eval().requires_grad_(False)
    student = apply_policy(teacher, {"layer3.0.conv1": "dws"})
    calls = parts.record_calls(student, torch.zeros(1, 3, 64, 64))
    parts.configure(student, "downstream", ["layer3.0.conv1"], calls)
    prefix = parts.shared_prefix(student, calls, parts.start_of(calls, ["layer3.0.conv1"]))
    assert set(prefix) == {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2"}


class _Unordered(torch.nn.Module):
    """Registration order differs from forward order: `head` is registered first and runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(8, 3)
        self.late = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mid = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.unused = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.late(torch.relu(self.norm(self.mid(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def test_downstream_is_what_the_forward_runs_from_the_first_plug_on():
    from trainable.surgery import apply_policy

    student = apply_policy(_Unordered().eval(), {"mid": "dws"})
    calls = parts.record_calls(student, torch.zeros(1, 3, 8, 8))
    parts.configure(student, "downstream", ["mid"], calls)
    trained = {name for name, p in student.named_parameters() if p.requires_grad}
    assert trained == {"mid.spatial.weight", "mid.pointwise.weight", "mid.pointwise.bias", "norm.weight", "norm.bias",
                       "late.weight", "late.bias", "head.weight", "head.bias"}
    assert parts.affected_batchnorms(student, "downstream", ["mid"], calls) == ["norm"]
    assert parts.shared_prefix(student, calls, parts.start_of(calls, ["mid"])) == ["stem"]
    parts.configure(student, "plugged", ["mid"], calls)
    assert {name for name, p in student.named_parameters() if p.requires_grad} == {
        "mid.spatial.weight", "mid.pointwise.weight", "mid.pointwise.bias"}
    parts.configure(student, "all", ["mid"], calls)
    assert all(p.requires_grad for p in student.parameters())


def test_downstream_replays_the_frozen_prefix_from_the_teacher(trained_teacher, data_settings):
    policy = {"mod6.block1.convs.conv2": "dws", "mod7.block1.convs.conv2": "dws"}
    distillation = run(trained_teacher, data_settings, policy, epochs=1, steps_per_epoch=1)
    trained = {name.rpartition(".")[0] for name, p in distillation.student.named_parameters() if p.requires_grad}
    assert "mod6.block1.convs.conv2.spatial" in trained and "mod7.block1.convs.conv1" in trained
    assert "mod6.block1.convs.conv1" not in trained and not any(name.startswith("mod5.") for name in trained)
    assert {"mod1", "mod5", "mod6.block1.convs.conv1"} <= set(distillation.prefix)
    ran = []
    hooks = [distillation.student.get_submodule(name).register_forward_hook(lambda *args: ran.append(1))
             for name in ("mod1", "mod5")]
    images = torch.randn(2, 3, 64, 128)
    active = distillation.plugged
    with distillation._training_mode(active):
        shared = distillation.step(images, None, active, update=False)
    assert ran == []  # replaced by the teacher's outputs, never computed again
    for hook in hooks:
        hook.remove()
    distillation.prefix = []
    with distillation._training_mode(active):
        separate = distillation.step(images, None, active, update=False)
    for key in ("loss", "loss_hint", "loss_kd"):
        assert shared[key].item() == pytest.approx(separate[key].item(), rel=1e-5)


@pytest.mark.parametrize("bn", ["batch", "frozen", "recalibrate"])
def test_batchnorm_modes(trained_teacher, data_settings, bn):
    policy = {"mod6.block1.convs.conv2": "dws"}
    distillation = run(trained_teacher, data_settings, policy, epochs=1, steps_per_epoch=2, bn=bn, lr=0.0)
    teacher = dict(distillation.teacher.named_buffers())
    before = {k: v.clone() for k, v in distillation.student.named_buffers() if k.endswith("running_mean")}
    distillation.train_epoch()
    after = dict(distillation.student.named_buffers())
    affected = {f"{name}.running_mean" for name in distillation.batchnorms}
    assert "mod7.block1.bn1.0.running_mean" in affected and "mod5.block1.bn1.0.running_mean" not in affected
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == (affected if bn == "batch" else set())
    if bn == "recalibrate":
        assert distillation.recalibrate() == 64  # every unlabeled image (fewer than RECALIBRATION_IMAGES)
        after = dict(distillation.student.named_buffers())
        assert {k for k, v in before.items() if not torch.equal(v, after[k])} == affected
    assert all(torch.equal(teacher[k], after[k]) for k in before if k not in affected)


def test_tensorboard_scalars_and_image_grid_are_written(trained_teacher, data_settings, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = DistillSettings(epochs=1, steps_per_epoch=1, seed=0)
    Distillation(trained_teacher.settings.build(), trained_teacher.settings, {"mod6.block1.convs.conv2": "dws"},
                 data_settings, settings, log_dir=tmp_path / "tb", device=CPU,
                 teacher_metrics={"miou": trained_teacher.miou}, log=lambda line: None).fit()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert {"epoch/miou", "epoch/loss_hint", "epoch/loss_kd", "train/loss"} <= set(events.Tags()["scalars"])
    grid = events.Images("val/input_teacher_student")[0]
    assert grid.width > 3 * 128 and grid.height >= 64


def test_precision_setting_picks_the_autocast(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "fp32") is None
    assert amp_dtype(cpu, "bf16") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp_dtype(cuda, "auto") == torch.bfloat16 and amp_dtype(cuda, "fp32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla P100-PCIE-16GB")
    assert amp_dtype(cuda, "auto") is None
    with pytest.raises(InputError, match="distill.precision: .*Tesla P100-PCIE-16GB, which has no bf16 support"):
        amp_dtype(cuda, "bf16")


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_step_runs_in_the_precision_it_is_given(trained_teacher, data_settings, precision, dtype):
    layer = "mod6.block1.convs.conv2"
    distillation = run(trained_teacher, data_settings, {layer: "dws"}, precision=precision, epochs=1, steps_per_epoch=1)
    seen = []
    distillation.student.get_submodule(layer).register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    metrics = distillation.train_epoch()
    assert seen == [dtype] and torch.isfinite(torch.tensor(metrics["loss"]))
