"""ONNX export: the command (once in a subprocess, else its main in this process) and the library functions,
checked against onnxruntime."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from data.errors import InputError
from tests.cli import run_main
from trainable.export import ATOL, RTOL, ExportError, export_onnx, main, named_outputs, verify_onnx
from trainable.latency import measure_latency
from trainable.models import build
from trainable.surgery import apply_policy, load_student, save_student

ROOT = Path(__file__).resolve().parents[1]
SEG_ARGS = {"num_classes": 19, "width": 0.125}
SEG_POLICY = {"mod2.block1.convs.conv1": "dws", "mod4.block2.convs.conv2": "lowrank4",
              "aspp.features.1.0": "dws", "final.0": "lowrank8"}
CLS_ARGS = {"num_classes": 10}
CLS_POLICY = {"layer1.0.conv1": "dws", "layer3.1.conv2": "lowrank8"}


def _randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine weights, so that eval-mode outputs are of order one, not ~0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model


def _student(path: Path, arch: str, arch_args: dict, policy: dict[str, str]) -> Path:
    torch.manual_seed(0)
    student = _randomize_norms(apply_policy(build(arch, **arch_args), policy), seed=1).eval()
    save_student(path, student, arch, arch_args, policy)
    return path


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m trainable.export ARGS`."""
    return subprocess.run([sys.executable, "-m", "trainable.export", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def seg_student(tmp_path_factory) -> Path:
    return _student(tmp_path_factory.mktemp("seg") / "student.pt", "deepwv3plus", SEG_ARGS, SEG_POLICY)


@pytest.fixture(scope="module")
def cls_student(tmp_path_factory) -> Path:
    return _student(tmp_path_factory.mktemp("cls") / "student.pt", "tv_resnet18", CLS_ARGS, CLS_POLICY)


@pytest.fixture(scope="module")
def seg_onnx(seg_student, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("seg_onnx") / "student.onnx"
    return _cli("--student", seg_student, "--out", out, "--input-size", 64, 128, "--dynamic"), out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cli_dynamic_segmentation_student_matches_pytorch(seg_student, seg_onnx):
    result, out = seg_onnx
    assert result.returncode == 0, result.stderr
    assert "largest absolute difference" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.onnx"]  # no temporary file left
    session = _session(out)
    assert session.get_inputs()[0].name == "image"
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    model, _ = load_student(seg_student)
    for shape in [(1, 3, 64, 128), (2, 3, 48, 80)]:  # the exported size and one the command did not check
        image = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            expected = model(image).numpy()
        (got,) = session.run(None, {"image": image.numpy()})
        assert got.shape == (shape[0], 19, *shape[2:])
        assert np.abs(expected).max() > 0.05  # atol is small next to these outputs
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_classification_student_exports_and_verifies(cls_student, tmp_path):
    model, _ = load_student(cls_student)
    path = export_onnx(model, tmp_path / "cls.onnx", (32, 32))
    largest = verify_onnx(model, path, (32, 32))
    assert 0 <= largest < ATOL
    session = _session(path)
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("output", [1, 10])]


class _Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        y = self.conv(x)
        return {"out": y, "aux": (y.mean((2, 3)), 2 * y)}


def test_dict_and_tuple_outputs_are_named_and_verified(tmp_path):
    model = _Heads().eval()
    assert [name for name, _ in named_outputs((torch.ones(1), [torch.ones(1)]))] == ["output.0", "output.1.0"]
    path = export_onnx(model, tmp_path / "heads.onnx", (16, 24), batch=2, dynamic=True)
    assert [o.name for o in _session(path).get_outputs()] == ["out", "aux.0", "aux.1"]
    assert verify_onnx(model, path, (16, 24), batch=2) < ATOL


def test_verification_catches_a_perturbed_weight(seg_student, seg_onnx, tmp_path):
    _, out = seg_onnx
    model, _ = load_student(seg_student)
    assert verify_onnx(model, out, (64, 128)) < ATOL
    proto = onnx.load(str(out))
    (weight,) = [w for w in proto.graph.initializer if w.name == "final.6.weight"]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    onnx.save(proto, str(tmp_path / "perturbed.onnx"))
    expected = r"output 'output' at input \[1, 3, 64, 128\]: largest absolute difference"
    with pytest.raises(ExportError, match=expected) as err:
        verify_onnx(model, tmp_path / "perturbed.onnx", (64, 128))
    assert float(re.search(r"difference (\S+) ", str(err.value)).group(1)) > ATOL


def test_cli_exit_1_names_output_and_difference(cls_student, tmp_path):
    out = tmp_path / "cls.onnx"
    code, stdout, stderr = run_main(main, ["--student", cls_student, "--out", out, "--input-size", 32, 32,
                                           "--atol", 0, "--rtol", 0])
    assert code == 1, stdout + stderr
    line = stderr.strip().splitlines()[-1]
    match = re.search(r"output 'output' at input \[1, 3, 32, 32\]: largest absolute difference (\S+) ", line)
    assert match and float(match.group(1)) > 0, line
    assert list(tmp_path.iterdir()) == []  # --out not written, no temporary file left


def test_cli_exit_2_for_a_missing_student(tmp_path):
    code, _, err = run_main(main, ["--student", tmp_path / "nope.pt", "--out", tmp_path / "x.onnx",
                                   "--input-size", 32, 32])
    assert code == 2
    assert err.strip().splitlines() == [f"error: {tmp_path / 'nope.pt'}: student file not found"]


def test_cli_exit_2_without_an_input_size(seg_student, tmp_path):
    code, _, err = run_main(main, ["--student", seg_student, "--out", tmp_path / "x.onnx"])
    assert code == 2
    assert "pass --input-size H W" in err and len(err.strip().splitlines()) == 1


def test_cli_exit_2_for_a_model_marked_onnx_unsupported(seg_student, tmp_path, monkeypatch):
    monkeypatch.setattr(nn.Conv2d, "onnx_unsupported", "Canny edges run in OpenCV", raising=False)
    code, _, err = run_main(main, ["--student", seg_student, "--out", tmp_path / "x.onnx", "--input-size", 64, 128])
    assert code == 2
    assert err.strip().endswith("(Conv2d): Canny edges run in OpenCV")
    assert list(tmp_path.iterdir()) == []


class _Canny(nn.Module):
    onnx_unsupported = "Canny edges run in OpenCV"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_library_refuses_onnx_unsupported(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), _Canny())
    with pytest.raises(InputError, match=r"1 \(_Canny\): Canny edges run in OpenCV"):
        export_onnx(model, tmp_path / "x.onnx", (8, 8))
    with pytest.raises(InputError, match="Canny"):
        measure_latency(model, (8, 8), backend="onnxruntime")
    assert list(tmp_path.iterdir()) == []
