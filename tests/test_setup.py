"""The installed environment: torchvision imports beside torch and its compiled ops run."""
import importlib

import pytest
import torch
import torchvision


def test_torchvision_ops_nms_runs():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torchvision.__version__.split("+")[0] == "0.28.0"


@pytest.mark.parametrize("module", [
    "ray.tune", "optuna", "pandas", "pyarrow.fs", "tensorboard", "yaml", "matplotlib", "PIL", "cityscapesscripts",
    "safetensors.torch", "scipy.optimize", "onnx", "onnxscript", "onnxruntime", "cv2", "tqdm", "moto.server", "boto3",
])
def test_dependency_imports(module):
    """Every dependency pyproject.toml names imports in the installed environment."""
    assert importlib.import_module(module) is not None
