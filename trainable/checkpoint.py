"""Reading weight files (NVIDIA's, plain state_dicts, plugkd students) and writing files atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data.errors import InputError

# NVIDIA's cityscapes_best.pth stores `mean_iu` as a numpy float64 scalar; these are the globals that
# unpickling it needs, and nothing more.
_NUMPY_SCALAR_GLOBALS = [np.dtype, type(np.dtype(np.float64)), np.float64]
try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar
_NUMPY_SCALAR_GLOBALS.append(_np_scalar)


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the target folder, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: str | Path) -> Any:
    """torch.load with weights_only=True, allowing numpy scalars; a missing or unreadable file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable weights file ({first_line})") from err


def state_dict_of(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The weights inside a loaded file: NVIDIA's dict, a plugkd student file, or a plain state_dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a state_dict (or a dict with 'state_dict'), got {type(obj).__name__}")
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def match_state_dict(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Check `weights` against the model's entries; BN `num_batches_tracked` counters may be absent (then 0)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    wrong_shape = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(
                f"{len(wrong_shape)} shape mismatches (first: {k} is {tuple(weights[k].shape)} in the file, "
                f"{tuple(expected[k].shape)} in the model)"
            )
        raise InputError(f"{source}: checkpoint does not match the model: {'; '.join(parts)}")
    full = dict(weights)
    for key, value in expected.items():
        if key not in full:
            full[key] = torch.zeros_like(value, device="cpu")
    return full


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file into `model` strictly (see `match_state_dict`) and return the model."""
    weights = state_dict_of(read_file(path), path)
    model.load_state_dict(match_state_dict(model, weights, path), strict=True)
    return model
