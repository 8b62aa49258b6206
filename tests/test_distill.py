"""The distillation run on a narrow teacher and synthetic data, images only."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from data.errors import InputError
from trainable.config import DistillSettings
from trainable.distill import Distillation, shared_prefix
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
    distillation = run(trained_teacher, data_settings, dws_everywhere(teacher), epochs=5, lr=2e-2)
    before = distillation.evaluate_student()["miou"]
    history = distillation.fit()
    mious = [before] + [m["miou"] for m in history]
    assert distillation.labeled is False
    assert history[-1]["param_ratio"] < 0.6
    assert history[-1]["loss_hint"] < history[0]["loss_hint"]
    assert history[-1]["agreement"] > history[0]["agreement"]
    # Epoch by epoch toward the teacher: never more than a val-noise dip (8 val images), far above the start.
    assert all(b > a - 0.02 for a, b in zip(mious, mious[1:])), mious
    assert mious[-1] > mious[0] + 0.15, mious
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
    state = run(trained_teacher, data_settings, policy, epochs=1).state_dict()
    assert state["student"] and all(k.startswith("mod6.block1.convs.conv2.") for k in state["student"])


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
    student.requires_grad_(False)
    prefix = shared_prefix(teacher, student, "layer3.0.conv1", torch.zeros(1, 3, 64, 64))
    assert set(prefix) == {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2"}


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
