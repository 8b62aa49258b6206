"""Cheap ops and policy surgery: shapes, counts, SVD initialisation, bad policies, save and load."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from data.errors import InputError
from trainable.inventory import convs, count_flops, count_params, inventory
from trainable.models import build
from trainable.ops import Plug, make_op, max_rank, op_params, parse_op
from trainable.surgery import apply_policy, load_student, plugged_layers, save_student

ROOT = Path(__file__).resolve().parents[1]
OPS = ["dws", "group2", "bottleneck2", "lowrank3"]
SIZES = [(7, 9), (10, 5)]


def _hand_made() -> dict[str, nn.Conv2d]:
    return {
        "3x3": nn.Conv2d(8, 12, 3, padding=1),
        "strided": nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
        "dilated": nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),
        "1x1": nn.Conv2d(8, 16, 1),
        "1x1_strided": nn.Conv2d(8, 16, 1, stride=2, bias=False),
        "grouped": nn.Conv2d(8, 12, 3, padding=1, groups=2),
        "grouped_strided": nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=False),
        "valid_5x3": nn.Conv2d(8, 12, (5, 3), padding=(1, 0)),
        "reflect": nn.Conv2d(8, 12, 3, stride=2, padding=1, padding_mode="reflect"),
        "same": nn.Conv2d(8, 12, 4, padding="same", dilation=2, bias=False),
    }


def _zoo_kinds() -> dict[str, nn.Conv2d]:
    """One conv of each kind (kernel, stride, dilation, padding, groups, bias) found in the zoo's small teachers."""
    kinds: dict[str, nn.Conv2d] = {}
    for arch, width in [("deepwv3plus", 0.125), ("tv_resnet18", 1.0)]:
        for name, conv in convs(build(arch, width=width)).items():
            key = (conv.kernel_size, conv.stride, conv.dilation, conv.padding, conv.groups, conv.bias is not None)
            if key not in {k for k, _ in kinds.values()}:
                kinds[f"{arch}:{name}"] = (key, conv)
    return {name: conv for name, (_, conv) in kinds.items()}


CONVS = _hand_made() | _zoo_kinds()


def _formula_params(conv: nn.Conv2d, op: str) -> int:
    """Parameters of `op` replacing `conv`, by the formulas of the op definitions (trainable/ops.py's docstring)."""
    cin, cout, g = conv.in_channels, conv.out_channels, conv.groups
    k = conv.kernel_size[0] * conv.kernel_size[1]
    bias = cout if conv.bias is not None else 0
    kind, arg = parse_op(op)
    if kind == "dws":  # depthwise kxk, then 1x1 in -> out in g groups
        return cin * k + cin * cout // g + bias
    if kind == "group":  # kxk in -> out in g * arg groups, then 1x1 out -> out in g groups
        return cin * cout * k // (g * arg) + cout * cout // g + bias
    if kind == "bottleneck":  # 1x1 in -> m, kxk m -> m, 1x1 m -> out, all in g groups
        mid = cin // arg
        return (cin * mid + mid * mid * k + mid * cout) // g + bias
    return cin * arg * k + arg * cout + bias  # lowrank: kxk in -> arg * g (g groups), 1x1 arg * g -> out (g groups)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", sorted(CONVS))
def test_every_op_keeps_the_output_shape(kind: str, op: str) -> None:
    conv = CONVS[kind]
    if op == "group2" and (conv.in_channels % (2 * conv.groups) or conv.out_channels % (2 * conv.groups)):
        with pytest.raises(InputError, match="divisible"):
            make_op(conv, op)
        return
    plug = make_op(conv, op)
    assert isinstance(plug, Plug) and plug.op == op
    assert (plug[-1].bias is not None) == (conv.bias is not None)
    assert all(c.bias is None for c in list(plug)[:-1])
    with torch.no_grad():
        for size in SIZES:
            x = torch.randn(1, conv.in_channels, *size)
            assert plug(x).shape == conv(x).shape, (kind, op, size)
    assert count_params(plug) == op_params(conv, op) == _formula_params(conv, op)


def test_zoo_kinds_cover_strided_dilated_and_pointwise() -> None:
    zoo = [c for name, c in CONVS.items() if ":" in name]
    assert any(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in zoo)
    assert any(c.dilation[0] > 1 for c in zoo)
    assert any(c.kernel_size == (1, 1) for c in zoo)


def test_op_params_and_flops_match_formulas() -> None:
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2)
    h, w = 5, 4  # output of a 9x7 input
    assert op_params(conv, "dws") == 8 * 9 + 8 * 12 // 2 + 12
    assert op_params(conv, "group2") == 8 * 12 * 9 // 4 + 12 * 12 // 2 + 12
    assert op_params(conv, "bottleneck2") == 8 * 4 // 2 + 4 * 4 * 9 // 2 + 4 * 12 // 2 + 12
    assert op_params(conv, "lowrank3") == 8 * 6 * 9 // 2 + 6 * 12 // 2 + 12
    assert op_params(conv, "keep") == 8 * 12 * 9 // 2 + 12
    plug = make_op(conv, "dws")
    flops = 2 * h * w * (8 * 9 + 8 * 12 // 2)  # 2 per multiply-add; the bias adds are not counted
    layers = inventory(plug, (9, 7), in_channels=8)
    assert [layer.name for layer in layers] == ["spatial", "pointwise"]
    assert sum(layer.flops for layer in layers) == flops
    assert count_flops(plug, (9, 7), in_channels=8) == flops
    with FlopCounterMode(display=False) as counter, torch.no_grad():  # a real forward, not count_flops' meta one
        plug(torch.zeros(1, 8, 9, 7))
    assert counter.get_total_flops() == flops


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 10, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(8, 12, 3, padding=1, groups=2),
        nn.Conv2d(16, 4, 1, bias=False),
        nn.Conv2d(4, 16, 1),
        nn.Conv2d(2, 32, 3, padding=1, groups=2),
    ],
)
def test_lowrank_at_full_rank_reproduces_the_conv(conv: nn.Conv2d) -> None:
    plug = make_op(conv, f"lowrank{max_rank(conv)}")
    x = torch.randn(2, conv.in_channels, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(plug(x), conv(x), atol=1e-4, rtol=1e-4)


def test_lowrank_of_a_rank_deficient_kernel() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[3:] = conv.weight[:3] * 2
        conv.weight[5] = 0
    x = torch.randn(1, 4, 8, 8)
    for rank in (3, 6):
        plug = make_op(conv, f"lowrank{rank}")
        with torch.no_grad():
            torch.testing.assert_close(plug(x), conv(x), atol=1e-4, rtol=1e-4)
            assert torch.isfinite(plug.spatial.weight).all() and torch.isfinite(plug.pointwise.weight).all()


def test_lowrank_truncation_is_the_best_approximation() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    rank = 4
    plug = make_op(conv, f"lowrank{rank}")
    kernel = conv.weight.detach().flatten(1).double()
    product = plug.pointwise.weight.detach().flatten(1).double() @ plug.spatial.weight.detach().flatten(1).double()
    singular = torch.linalg.svdvals(kernel)
    assert torch.linalg.norm(kernel - product).item() == pytest.approx(singular[rank:].norm().item(), rel=1e-4)
    x = torch.randn(2, 16, 12, 12)
    fresh = make_op(nn.Conv2d(16, 24, 3, padding=1), f"lowrank{rank}")
    with torch.no_grad():
        fresh.pointwise.bias.copy_(conv.bias)
        err_svd = (plug(x) - conv(x)).norm()
        err_random = (fresh(x) - conv(x)).norm()
    assert err_svd < 0.9 * err_random


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ("conv", "unknown op"),
        ("group3", "divisible by 3"),
        ("lowrank0", "must be >= 1"),
        ("lowrank99", "exceeds the full rank 12"),
        ("bottleneck9", "larger than in_channels 8"),
        ("keep", "replaces nothing"),
    ],
)
def test_make_op_rejects_ops_that_do_not_fit(op: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as err:
        make_op(nn.Conv2d(8, 12, 3, padding=1), op)
    assert repr(op) in str(err.value)


def test_grouped_teacher_constraints_are_named() -> None:
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=4)
    with pytest.raises(InputError, match="divisible by 8 .4 teacher groups times 2"):
        make_op(conv, "group2")
    with pytest.raises(InputError, match="not divisible by the teacher's 4 groups"):
        make_op(conv, "bottleneck4")


def test_parse_op() -> None:
    assert parse_op("keep") == ("keep", None)
    assert parse_op("dws") == ("dws", None)
    assert parse_op("group4") == ("group", 4)
    assert parse_op("bottleneck2") == ("bottleneck", 2)
    assert parse_op("lowrank64") == ("lowrank", 64)
    for bad in ["", "group", "dws2", "Group4", "lowrank-1", "group4 ", 3]:
        with pytest.raises(InputError):
            parse_op(bad)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return build("deepwv3plus", num_classes=5, width=0.125).eval()


POLICY = {
    "mod4.block1.convs.conv1": "group2",
    "mod5.block1.convs.conv2": "dws",
    "mod6.block1.convs.conv2": "bottleneck4",
    "aspp.features.1.0": "lowrank8",
    "final.0": "keep",
}


def test_apply_policy_leaves_the_teacher_unchanged(teacher: nn.Module) -> None:
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modules = dict(teacher.named_modules())
    student = apply_policy(teacher, POLICY)
    assert teacher.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(modules[name] is module for name, module in teacher.named_modules())
    assert len(modules) == len(dict(teacher.named_modules()))
    student_modules = dict(student.named_modules())
    for layer in plugged_layers(POLICY):
        assert isinstance(student_modules[layer], Plug) and student_modules[layer].op == POLICY[layer]
        assert isinstance(modules[layer], nn.Conv2d)
    assert type(student_modules["final.0"]) is nn.Conv2d and student_modules["final.0"] is not modules["final.0"]
    assert torch.equal(student_modules["final.0"].weight, modules["final.0"].weight)
    assert plugged_layers(POLICY) == list(POLICY)[:4]


def test_student_counts_equal_direct_counts(teacher: nn.Module) -> None:
    student = apply_policy(teacher, POLICY)
    teacher_convs = convs(teacher)
    saved = sum(count_params(teacher_convs[n]) - op_params(teacher_convs[n], op) for n, op in POLICY.items())
    expected = count_params(teacher) - saved
    assert count_params(student) == expected
    size = (33, 47)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = student(torch.zeros(1, 3, *size))
    assert out.shape == (1, 5, *size)
    assert count_flops(student, size) == counter.get_total_flops()
    assert sum(layer.flops for layer in inventory(student, size)) == counter.get_total_flops()
    assert count_flops(student, size) < count_flops(teacher, size)


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ({"mod9.conv": "dws"}, "not a Conv2d of the teacher"),
        ({"mod5.block1": "dws"}, "not a Conv2d of the teacher"),
        ({"mod5.block1.convs.conv2": "sparse"}, "unknown op"),
        ({"mod5.block1.convs.conv2": "group3"}, "divisible by 3"),
        ({"mod5.block1.convs.conv2": "lowrank0"}, "must be >= 1"),
        ({"mod5.block1.convs.conv2": "lowrank100000"}, "exceeds the full rank"),
        ({"mod5.block1.convs.conv2": "bottleneck1000"}, "larger than in_channels"),
    ],
)
def test_bad_policies_name_layer_and_op(teacher: nn.Module, policy: dict[str, str], reason: str) -> None:
    (layer, op), = policy.items()
    with pytest.raises(InputError, match=reason) as err:
        apply_policy(teacher, {"final.0": "dws", **policy})
    assert repr(layer) in str(err.value) and repr(op) in str(err.value)
    assert "\n" not in str(err.value)


def test_save_then_load_in_a_fresh_process(teacher: nn.Module, tmp_path: Path) -> None:
    student = apply_policy(teacher, POLICY)
    with torch.no_grad():  # make the state differ from any fresh build
        for p in student.parameters():
            p.add_(0.01)
    path = tmp_path / "sub" / "student.pt"
    save_student(path, student, "deepwv3plus", {"num_classes": 5, "width": 0.125}, POLICY)
    assert [p.name for p in path.parent.iterdir()] == ["student.pt"]
    x = torch.randn(1, 3, 29, 35)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(student.eval()(x), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from trainable.surgery import load_student
        torch.set_num_threads({torch.get_num_threads()})  # the same float sums as the parent's forward
        model, meta = load_student({str(path)!r})
        assert not model.training and meta["policy"] == {POLICY!r}, meta
        assert meta["arch"] == "deepwv3plus" and meta["arch_args"] == {{"num_classes": 5, "width": 0.125}}
        with torch.no_grad():
            out = model(torch.load({str(tmp_path / 'x.pt')!r}))
        torch.testing.assert_close(out, torch.load({str(tmp_path / 'expected.pt')!r}), atol=1e-5, rtol=1e-5)
        """
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_load_student_rejects_bad_files(teacher: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as err:
        load_student(tmp_path / "missing.pt")
    assert "missing.pt" in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pt"):
        load_student(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": teacher.state_dict()}, other)
    with pytest.raises(InputError, match="other.pt: not a student file"):
        load_student(other)
    mismatched = tmp_path / "mismatched.pt"
    save_student(mismatched, teacher, "deepwv3plus", {"num_classes": 5, "width": 0.125}, POLICY)
    with pytest.raises(InputError, match="mismatched.pt: student does not rebuild"):
        load_student(mismatched)
