"""Export a student (or any image model) to ONNX and verify the file in onnxruntime.

python -m trainable.export --student FILE --out X.onnx [--input-size H W] [--batch N] [--dynamic]
    [--atol A] [--rtol R]

The input is one float32 tensor named `image`, (N, 3, H, W); the input size defaults to the student
file's `input_size`. The model's outputs (a tensor, a tuple or a dict of tensors, nested in any way)
become ONNX outputs named after their place: `output` for a lone tensor, `output.0`, `output.1` for
a tuple, the keys for a dict (`out`, `aux`; `out.0` below a key). `--dynamic` makes the batch, the
height and the width dynamic axes (`batch`, `height`, `width`).

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export, then onnxscript's torchlib) at opset
18, the torchlib's native opset (no version conversion step; onnxruntime has run opset 18 since
1.14). It is PyTorch's default and maintained exporter; the TorchScript one has been deprecated
since 2.9. On a narrow deepwv3plus student both agree with onnxruntime to ~1e-7, static or
dynamic, and TorchScript exports about 3x faster, but torch.export refuses data-dependent Python
control flow instead of silently baking in the branch the example input took, keeps dict outputs
by key, and names the dynamic axes as asked.

Verification: a fixed random input (normal, seed 0) runs through PyTorch on the CPU and through
onnxruntime's CPUExecutionProvider; every output must satisfy, element by element,
|onnx - torch| <= atol + rtol * |torch| with atol = 1e-4 and rtol = 1e-3 (`ATOL`, `RTOL`). fp32
reassociation alone (other conv algorithms, fused BatchNorm) stays far below: with random weights
the full-width deepwv3plus (137M parameters) differs by 1e-7 on outputs up to 0.18, the narrow test
student by 4e-8 on outputs up to 0.11, a tv_resnet18 student by 6e-7 on outputs up to 0.5 (a margin
of about 1000x); a wrong op, weight, padding or resize mode moves outputs by the order of the signal. A file with dynamic axes is also checked at a second shape,
(N + 1, 3, H + 32, W + 32).

Exit status: 0 exported and verified; 1 the export failed or onnxruntime disagrees (the message
names the output and the largest absolute difference, and `--out` is left as it was); 2 bad input
(missing or non-student file, no input size, a model with a module marked `onnx_unsupported`).
A module class marks itself unexportable with a class attribute `onnx_unsupported = "<why>"`.
The file is written atomically (a temporary file in the target folder, then a rename).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from data.errors import InputError, run_cli
from trainable.surgery import load_student

OPSET = 18
ATOL = 1e-4
RTOL = 1e-3
INPUT_NAME = "image"
_MAX_BYTES = 2**31  # protobuf's limit on one .onnx file


class ExportError(Exception):
    """The model could not be exported, or onnxruntime disagrees with PyTorch; the message is one line."""


def named_outputs(outputs: Any, prefix: str | None = None) -> list[tuple[str, Tensor]]:
    """A model's outputs (tensor, tuple/list or dict of them, nested) as `(name, tensor)` in pytree order."""
    if isinstance(outputs, Tensor):
        return [(prefix or "output", outputs)]
    if isinstance(outputs, (tuple, list)):
        return [item for i, value in enumerate(outputs) for item in named_outputs(value, f"{prefix or 'output'}.{i}")]
    if isinstance(outputs, dict):
        return [item for key, value in outputs.items()
                for item in named_outputs(value, str(key) if prefix is None else f"{prefix}.{key}")]
    raise InputError(
        f"model output {prefix or 'output'!r} is a {type(outputs).__name__}; expected tensors, tuples or dicts of them"
    )


def check_exportable(model: nn.Module, source: str = "model") -> None:
    """InputError naming the first module whose class sets `onnx_unsupported` (the reason)."""
    for name, module in model.named_modules():
        reason = getattr(type(module), "onnx_unsupported", None)
        if isinstance(reason, str):
            where = name or "the top module"
            raise InputError(f"{source}: cannot export to ONNX: {where} ({type(module).__name__}): {reason}")


def _check_shape(input_size: Sequence[int], batch: int) -> tuple[int, int]:
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise InputError(f"input size must be two positive ints [H, W], got {list(size)}")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive int, got {batch!r}")
    return size[0], size[1]


def _check_tolerance(atol: float, rtol: float) -> None:
    if not (atol >= 0 and rtol >= 0):
        raise InputError(f"tolerances must be >= 0, got atol {atol:g} and rtol {rtol:g}")


def _cpu_eval(model: nn.Module) -> nn.Module:
    """`model` itself when on the CPU in eval mode, else a CPU copy in eval mode (the caller's model is untouched)."""
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    if on_cpu and not any(m.training for m in model.modules()):
        return model
    return copy.deepcopy(model).cpu().eval()


def _example(batch: int, height: int, width: int) -> Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def _temporary(path: Path) -> Path:
    """A fresh hidden name beside `path` (created later with the usual permissions, unlike mkstemp's 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def export_onnx(
    model: nn.Module, path: str | Path, input_size: Sequence[int], batch: int = 1, dynamic: bool = False
) -> Path:
    """Write `model` (eval mode, on the CPU) to `path` as ONNX, atomically; ExportError if the exporter fails."""
    height, width = _check_shape(input_size, batch)
    check_exportable(model)
    model = _cpu_eval(model)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if size >= _MAX_BYTES:
        raise ExportError(f"model weights take {size / 2**30:.1f} GiB; one .onnx file holds under 2 GiB")
    example = _example(batch, height, width)
    try:
        with torch.inference_mode():
            names = [name for name, _ in named_outputs(model(example))]
    except RuntimeError as err:
        raise InputError(f"the model's forward fails on an input {list(example.shape)}: {_first_line(err)}") from None
    axes = ({0: "batch", 2: "height", 3: "width"},) if dynamic else None
    path = Path(path)
    tmp = _temporary(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=names, dynamic_shapes=axes, verbose=False,
            )
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    except torch.onnx.errors.OnnxExporterError as err:
        raise ExportError(f"torch.onnx.export failed: {_first_line(err)}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind error types for unreadable or invalid files
        raise ExportError(f"{path}: onnxruntime cannot load it: {_first_line(err)}") from err


def _is_dynamic(session: ort.InferenceSession) -> bool:
    return any(not isinstance(dim, int) for dim in session.get_inputs()[0].shape)


def _verify(
    model: nn.Module, session: ort.InferenceSession, source: Path, height: int, width: int, batch: int,
    atol: float, rtol: float,
) -> float:
    model = _cpu_eval(model)
    input_name = session.get_inputs()[0].name
    shapes = [(batch, height, width)] + ([(batch + 1, height + 32, width + 32)] if _is_dynamic(session) else [])
    largest = 0.0
    for shape in shapes:
        image = _example(*shape)
        try:
            with torch.inference_mode():
                expected = named_outputs(model(image))
        except RuntimeError as err:
            raise ExportError(
                f"{source}: the model's forward fails at input {list(image.shape)}: {_first_line(err)}"
            ) from err
        try:
            got = session.run(None, {input_name: image.numpy()})
        except Exception as err:  # onnxruntime's pybind errors, e.g. a shape baked into the graph
            raise ExportError(f"{source}: onnxruntime fails at input {list(image.shape)}: {_first_line(err)}") from err
        if len(got) != len(expected):
            raise ExportError(f"{source}: onnxruntime returns {len(got)} outputs, PyTorch {len(expected)}")
        for (name, reference), value in zip(expected, got):
            reference = reference.float().numpy()
            if value.shape != reference.shape:
                raise ExportError(
                    f"{source}: output {name!r} at input {list(image.shape)} has shape {list(value.shape)} in "
                    f"onnxruntime, {list(reference.shape)} in PyTorch"
                )
            difference = float(np.max(np.abs(value - reference), initial=0.0))
            bad = ~np.isclose(value, reference, rtol=rtol, atol=atol)
            if bad.any():
                raise ExportError(
                    f"{source}: output {name!r} at input {list(image.shape)}: largest absolute difference "
                    f"{difference:.3g} between onnxruntime and PyTorch; {int(bad.sum())} of {bad.size} elements "
                    f"exceed atol {atol:g} + rtol {rtol:g} * |torch|"
                )
            largest = max(largest, difference)
    return largest


def verify_onnx(
    model: nn.Module, path: str | Path, input_size: Sequence[int], batch: int = 1, atol: float = ATOL,
    rtol: float = RTOL,
) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch on a fixed random input.

    ExportError naming the output, the input shape and the largest difference when an element
    exceeds atol + rtol * |torch|; a file with dynamic axes is checked at a second shape too.
    """
    height, width = _check_shape(input_size, batch)
    _check_tolerance(atol, rtol)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    return _verify(model, _session(path), path, height, width, batch, atol, rtol)


def export_verified(
    model: nn.Module, path: str | Path, input_size: Sequence[int], batch: int = 1, dynamic: bool = False,
    atol: float = ATOL, rtol: float = RTOL,
) -> float:
    """Export to a temporary file, verify it, then rename it over `path`; returns the largest difference.

    On an ExportError `path` is left as it was.
    """
    height, width = _check_shape(input_size, batch)
    _check_tolerance(atol, rtol)
    model, path = _cpu_eval(model), Path(path)
    tmp = _temporary(path)
    try:
        export_onnx(model, tmp, input_size, batch, dynamic)
        largest = _verify(model, _session(tmp), path, height, width, batch, atol, rtol)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return largest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.export", description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="a student file written by save_student")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the student file's input_size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dynamic", action="store_true", help="batch, height and width as dynamic axes")
    parser.add_argument("--atol", type=float, default=ATOL, help=f"absolute tolerance of the check (default {ATOL:g})")
    parser.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance of the check (default {RTOL:g})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model, meta = load_student(args.student, map_location="cpu")
    input_size = args.input_size or meta.get("input_size")
    if input_size is None:
        raise InputError(f"{args.student}: the student file has no input_size; pass --input-size H W")
    check_exportable(model, args.student)
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; expected an .onnx file path")
    try:
        largest = export_verified(model, out, input_size, args.batch, args.dynamic, args.atol, args.rtol)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    axes = "dynamic batch, height, width" if args.dynamic else f"input {[args.batch, 3, *input_size]}"
    print(f"{out}: ONNX opset {OPSET}, {axes}; onnxruntime matches PyTorch, largest absolute difference {largest:.2g}")
    return 0


if __name__ == "__main__":
    run_cli(main)
