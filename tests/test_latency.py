"""Latency meter (torch and onnxruntime backends) and the per-(layer, op) latency table."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from data.errors import InputError
from data.names import KEEP
from trainable.latency import Latency, measure_latency, plug_latencies, predicted_latency
from trainable.models import build

SIZE = (64, 128)
CHOICES = {"mod2.block1.convs.conv1": ["dws", "group2", "bottleneck2", "lowrank4"],
           "mod5.block1.convs.conv2": ["dws"], "aspp.features.1.0": ["keep", "dws", "lowrank8"]}


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return build("deepwv3plus", num_classes=19, width=0.125)


def _check(latency: Latency, runs: int, backend: str) -> None:
    assert latency.median_ms > 0 and latency.p90_ms >= latency.median_ms
    assert latency.runs == runs and latency.backend == backend and latency.device == "cpu"
    assert latency.spread == pytest.approx((latency.p90_ms - latency.median_ms) / latency.median_ms)


def test_torch_latency_is_positive_and_repeats(teacher):
    teacher.train()
    first, second = (measure_latency(teacher, SIZE, warmup=2, runs=5) for _ in range(2))
    for latency in (first, second):
        _check(latency, 5, "torch")
    assert 1 / 5 < first.median_ms / second.median_ms < 5  # a shared machine: loose on purpose
    assert all(module.training for module in teacher.modules())  # the train flags come back


def test_onnxruntime_latency_is_positive():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    _check(measure_latency(model, (32, 32), warmup=1, runs=4, backend="onnxruntime"), 4, "onnxruntime")


def test_plug_latencies_time_every_requested_layer_and_op(teacher):
    table = plug_latencies(teacher, CHOICES, SIZE, warmup=1, runs=3)
    assert {layer: set(ops) for layer, ops in table.items()} == {
        layer: {KEEP, *ops} for layer, ops in CHOICES.items()}
    assert all(ms > 0 for ops in table.values() for ms in ops.values())
    policy = {"mod2.block1.convs.conv1": "dws", "mod5.block1.convs.conv2": "keep", "aspp.features.1.0": "lowrank8"}
    expected = 10.0 + sum(table[layer][op] - table[layer][KEEP] for layer, op in policy.items())
    assert predicted_latency(table, 10.0, policy) == pytest.approx(expected)
    with pytest.raises(InputError, match="mod6.block1.convs.conv2"):
        predicted_latency(table, 10.0, {"mod6.block1.convs.conv2": "dws"})


def test_plug_latencies_refuse_a_layer_that_is_not_a_conv(teacher):
    with pytest.raises(InputError, match="'mod2.block1.bn1'"):
        plug_latencies(teacher, {"mod2.block1.bn1": ["dws"]}, SIZE)
