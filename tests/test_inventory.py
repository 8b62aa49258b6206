"""Layer inventory, parameter and FLOP counts, glob selection and the inspect command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from data.errors import run_cli
from trainable import layers as inspect_cli
from trainable.inventory import Layer, count_flops, count_params, inventory, select, unmatched_patterns
from trainable.models import build
from trainable.surgery import apply_policy


class Tiny(nn.Module):
    """Two convs (the second called twice), a linear head and a dropout that must be off during counting."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2))
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.body(self.stem(x)))
        return self.head(self.drop(x.mean((2, 3))))


class DataDependent(Tiny):
    """A forward that reads a value, which meta tensors cannot do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.body(x) * (2.0 if x.sum().item() >= 0 else 1.0)


def _reference(model: nn.Module, size: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """FlopCounterMode on a real forward, per-module counts by name (root class prefix stripped)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *size))
    prefix = type(model).__name__ + "."
    per_module = {k[len(prefix):]: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith(prefix)}
    return counter.get_total_flops(), per_module


def test_inventory_fields_and_flops_of_a_hand_made_model() -> None:
    model = Tiny()
    layers = inventory(model, (9, 11))
    assert [layer.name for layer in layers] == ["stem", "body.1"]
    stem, body = layers
    assert stem == Layer("stem", 3, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1, False, 108, 2 * 5 * 6 * 4 * 27)
    assert body.dilation == (2, 2) and body.groups == 2 and body.bias and body.params == 4 * 2 * 9 + 4
    assert body.flops == 2 * (2 * 5 * 6 * 4 * 2 * 9)  # called twice
    assert stem.to_dict() == {
        "name": "stem", "in_channels": 3, "out_channels": 4, "kernel": [3, 3], "stride": [2, 2], "dilation": [1, 1],
        "padding": [1, 1], "groups": 1, "bias": False, "params": 108, "flops": 2 * 5 * 6 * 4 * 27,
    }
    json.dumps([layer.to_dict() for layer in layers])
    assert count_params(model) == 108 + 76 + 35
    assert count_flops(model, (9, 11)) == stem.flops + body.flops + 2 * 4 * 7


def test_train_and_eval_modes_are_restored() -> None:
    model = Tiny().train()
    model.body.eval()
    inventory(model, (8, 8))
    assert model.training and model.stem.training and not model.body.training and not model.body[1].training
    assert model.drop.training


def test_a_forward_that_cannot_run_on_meta_is_counted_for_real() -> None:
    model = DataDependent()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 9, 11))
    assert count_flops(model, (9, 11)) == counter.get_total_flops() > 0
    assert [layer.flops for layer in inventory(model, (9, 11))] == [2 * 5 * 6 * 4 * 27, 2 * 5 * 6 * 4 * 2 * 9]


@pytest.mark.parametrize(
    ("arch", "width", "size"),
    [("deepwv3plus", 0.125, (41, 57)), ("tv_resnet18", 1.0, (32, 40)), ("tv_deeplabv3_resnet50", 1.0, (33, 33))],
)
def test_zoo_inventory_matches_a_real_forward(arch: str, width: float, size: tuple[int, int]) -> None:
    model = build(arch, width=width)
    total, per_module = _reference(model, size)
    layers = inventory(model, size)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [layer.name for layer in layers] == names
    assert all(layer.flops == per_module.get(layer.name, 0) for layer in layers)
    assert all(layer.params == count_params(model.get_submodule(layer.name)) for layer in layers)
    assert count_flops(model, size) == total
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_deepwv3plus_layer_kinds() -> None:
    layers = {layer.name: layer for layer in inventory(build("deepwv3plus", width=0.125), (32, 32))}
    assert layers["mod4.block1.convs.conv1"].stride == (2, 2)
    assert layers["mod5.block1.convs.conv2"].dilation == (2, 2)
    assert layers["aspp.features.3.0"].dilation == (36, 36) and layers["aspp.features.3.0"].padding == (36, 36)
    assert layers["mod2.block1.proj_conv"].kernel == (1, 1)
    assert not any(layer.bias for layer in layers.values())


def test_full_width_deepwv3plus_is_counted_quickly() -> None:
    with torch.device("meta"):
        model = build("deepwv3plus")
    assert count_params(model) == 137_103_936
    assert 11e12 < count_flops(model, (1024, 2048)) < 13e12


NAMES = ["mod5.block1.convs.conv1", "mod5.block1.convs.conv2", "mod6.block1.convs.conv2", "aspp.features.1.0", "final.0"]


def test_select_globs_cross_dots_keep_order_and_drop_duplicates() -> None:
    assert select(NAMES, ["mod5.*.conv2"]) == ["mod5.block1.convs.conv2"]
    assert select(NAMES, ["mod*conv2"]) == ["mod5.block1.convs.conv2", "mod6.block1.convs.conv2"]
    assert select(NAMES, ["final.0", "mod5.*", "*conv1"]) == NAMES[:2] + ["final.0"]
    assert select(NAMES, ["aspp.features.[12].0"]) == ["aspp.features.1.0"]
    assert select(NAMES, ["Mod5.*"]) == []
    assert select(NAMES, []) == []
    assert unmatched_patterns(NAMES, ["mod5.*", "mod9.*", "aspp?*"]) == ["mod9.*"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(inspect_cli.main, list(argv))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_inspect_json_with_a_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = {"mod5.block1.convs.conv2": "dws", "aspp.features.1.0": "lowrank4", "final.0": "keep"}
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    base = ["--teacher", "deepwv3plus", "--width", "0.125", "--num-classes", "5", "--input-size", "64", "96"]
    code, out, _ = _cli(capsys, *base, "--json", "--policy", str(tmp_path / "policy.json"))
    assert code == 0
    report = json.loads(out)
    teacher = build("deepwv3plus", num_classes=5, width=0.125)
    assert report["arch"] == "deepwv3plus" and report["params"] == count_params(teacher)
    assert report["flops"] == count_flops(teacher, (64, 96))
    assert report["layers"] == [layer.to_dict() for layer in inventory(teacher, (64, 96))]
    student = apply_policy(teacher, policy)
    assert report["student"]["params"] == count_params(student) < report["params"]
    assert report["student"]["flops"] == count_flops(student, (64, 96)) < report["flops"]
    assert report["student"]["policy"] == policy
    code, out, _ = _cli(capsys, *base, "--policy", str(tmp_path / "policy.json"))
    assert code == 0 and "lowrank4" in out and "student  params" in out and "of teacher" in out


def test_inspect_table_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "--teacher", "tv_resnet18")
    assert code == 0 and "tv_resnet18 at 224x224: 20 convs" in out and "layer4.1.conv2" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--teacher", "nonet"], "unknown arch 'nonet'"),
        (["--teacher", "tv_resnet18", "--width", "0.5"], "width"),
        (["--teacher", "tv_resnet18", "--policy", "MISSING"], "MISSING: policy file not found"),
        (["--teacher", "tv_resnet18", "--policy", "BADJSON"], "BADJSON: not a JSON policy file"),
        (["--teacher", "tv_resnet18", "--policy", "LIST"], "LIST: expected a JSON object"),
        (["--teacher", "tv_resnet18", "--policy", "UNKNOWN_LAYER"], "'layer9.conv1' (op 'dws'): not a Conv2d"),
        (["--teacher", "tv_resnet18", "--policy", "UNKNOWN_OP"], "'conv1': unknown op 'fancy'"),
        (["--teacher", "tv_resnet18", "--input-size", "0", "8"], "--input-size"),
    ],
)
def test_inspect_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], needle: str
) -> None:
    files = {"BADJSON": "{oops", "LIST": "[]", "UNKNOWN_LAYER": '{"layer9.conv1": "dws"}', "UNKNOWN_OP": '{"conv1": "fancy"}'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = [str(tmp_path / a) if a in files or a == "MISSING" else a for a in extra]
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err
