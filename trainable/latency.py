"""Latency: a model's forward time (PyTorch or onnxruntime), and a per-(layer, op) table to predict a student's.

Every figure is wall time of whole forwards with `time.perf_counter` after warm-up runs; on a GPU
each run is bracketed by `torch.cuda.synchronize`. The input is a random float32 (N, 3, H, W).
onnxruntime runs with as many intra-op threads as torch (`torch.get_num_threads()`), so the two
backends compete on equal terms. Latency on a shared machine is noisy: `Latency.spread` says how much.
"""
from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from data.errors import InputError
from data.names import KEEP
from trainable.config import Backend, LatencySettings
from trainable.export import export_onnx
from trainable.modes import in_mode
from trainable.ops import make_op

DEFAULT = LatencySettings()  # the space's defaults are the functions' too


@dataclass(frozen=True)
class Latency:
    """Timed runs of one forward: median and 90th percentile in ms; spread = (p90 - median) / median."""

    median_ms: float
    p90_ms: float
    runs: int
    spread: float
    backend: str
    device: str

    @classmethod
    def from_times(cls, times_ms: Sequence[float], backend: str, device: str) -> Latency:
        median, p90 = float(np.median(times_ms)), float(np.percentile(times_ms, 90))
        return cls(median, p90, len(times_ms), (p90 - median) / median if median > 0 else 0.0, backend, device)


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < 0 or runs < 1:
        raise InputError(f"latency needs warmup >= 0 and runs >= 1, got warmup {warmup} and runs {runs}")


def _times_ms(call: Callable[[], object], device: torch.device, warmup: int, runs: int) -> list[float]:
    """Wall times of `runs` calls after `warmup` untimed ones, synchronising CUDA around each."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


@contextmanager
def _benchmarked(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`model` on `device` in eval mode; its device and train flags are restored after."""
    home = next((t.device for t in [*model.parameters(), *model.buffers()]), device)
    try:
        with in_mode(model, training=False):
            yield model.to(device)
    finally:
        model.to(home)


def measure_latency(
    model: nn.Module, input_size: Sequence[int], batch: int = DEFAULT.batch, device: str | torch.device = "cpu",
    warmup: int = DEFAULT.warmup, runs: int = DEFAULT.runs, backend: Backend = DEFAULT.backend,
) -> Latency:
    """Forward latency of `model` at (batch, 3, H, W); `onnxruntime` exports it to a temporary file first."""
    _check_counts(warmup, runs)
    device = torch.device(device)
    height, width = input_size
    if backend == "torch":
        with _benchmarked(model, device) as ready, torch.inference_mode():
            image = torch.randn(batch, 3, height, width, device=device)
            times = _times_ms(partial(ready, image), device, warmup, runs)
        return Latency.from_times(times, backend, str(device))
    if backend == "onnxruntime":
        provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            available = ", ".join(ort.get_available_providers())
            raise InputError(f"onnxruntime has no {provider} here (available: {available})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory(prefix="plugkd-latency-") as folder:
            path = export_onnx(model, Path(folder) / "model.onnx", (height, width), batch)
            session = ort.InferenceSession(str(path), options, providers=[provider])
        image = np.random.default_rng(0).standard_normal((batch, 3, height, width), np.float32)
        feed = {session.get_inputs()[0].name: image}
        times = _times_ms(partial(session.run, None, feed), torch.device("cpu"), warmup, runs)
        return Latency.from_times(times, backend, str(device))
    raise InputError(f"unknown latency backend {backend!r}: expected torch or onnxruntime")


def _input_shapes(teacher: nn.Module, layers: Sequence[str], image: torch.Tensor) -> dict[str, torch.Size]:
    """The input shape of each named conv on one forward of `image` (the first call's, for a conv used twice)."""
    shapes: dict[str, torch.Size] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            shapes.setdefault(name, args[0].shape)

        return record

    handles = [teacher.get_submodule(name).register_forward_pre_hook(hook(name)) for name in layers]
    try:
        teacher(image)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in shapes]
    if missing:
        raise InputError(f"layer {missing[0]!r} is not called by the teacher's forward; it cannot be timed")
    return shapes


def plug_latencies(
    teacher: nn.Module, choices: Mapping[str, Sequence[str]], input_size: Sequence[int], batch: int = DEFAULT.batch,
    device: str | torch.device = "cpu", warmup: int = DEFAULT.warmup, runs: int = DEFAULT.runs,
) -> dict[str, dict[str, float]]:
    """Median ms of each named conv alone (`keep`, always timed) and of each of its plugs alone, `{layer: {op: ms}}`.

    Each conv's input shape comes from forward hooks on one teacher forward of zeros (batch, 3, H, W);
    each module is then timed on a random tensor of that shape.
    """
    _check_counts(warmup, runs)
    device = torch.device(device)
    named = dict(teacher.named_modules())
    for layer in choices:
        if not isinstance(named.get(layer), nn.Conv2d):
            raise InputError(f"layer {layer!r}: not a Conv2d of the teacher")
    height, width = input_size
    table: dict[str, dict[str, float]] = {}
    with _benchmarked(teacher, device) as ready:
        with torch.inference_mode():
            shapes = _input_shapes(ready, list(choices), torch.zeros(batch, 3, height, width, device=device))
        for layer, ops in choices.items():
            conv = named[layer]
            modules = {op: conv if op == KEEP else make_op(conv, op).eval() for op in [KEEP, *ops]}
            with torch.inference_mode():
                features = torch.randn(shapes[layer], device=device)
                table[layer] = {
                    op: float(np.median(_times_ms(partial(module, features), device, warmup, runs)))
                    for op, module in modules.items()
                }
    return table


def predicted_latency(
    table: Mapping[str, Mapping[str, float]], teacher_latency_ms: float, policy: Mapping[str, str]
) -> float:
    """The teacher's latency plus, over the policy's plugged layers, the plug's time minus the conv's (`keep`)."""
    total = teacher_latency_ms
    for layer, op in policy.items():
        if op == KEEP:
            continue
        if layer not in table or op not in table[layer] or KEEP not in table[layer]:
            raise InputError(
                f"policy layer {layer!r} (op {op!r}): not in the latency table; time it with plug_latencies"
            )
        total += table[layer][op] - table[layer][KEEP]
    return total
