"""Reading weight files (NVIDIA's, plain state_dicts, training checkpoints, plugkd students); writing files atomically.

Every file is read with `torch.load(..., weights_only=True, map_location="cpu")`: tensors saved on a GPU load on
a CPU-only machine, and nothing in the file can run code. Besides tensors, torch's own types and plain containers
(dict, OrderedDict, list, tuple, str, int, float, bool, None), the only objects such a load rebuilds are numpy
scalars (NVIDIA's `mean_iu`) and `argparse.Namespace` (the `args` that timm's and torchvision's reference
training scripts store). A file holding any other pickled object is refused: a whole model saved with
`torch.save(model)`, or a Lightning checkpoint whose `hyper_parameters` hold e.g. a `pathlib.Path`, an enum or
an OmegaConf config. Such a file can only be read by trusting its code (`weights_only=False`), which plugkd
never does; the user re-saves the weights (`model.state_dict()`) where they trust the file.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data.errors import InputError
from data.files import atomic_output

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar

# A numpy scalar unpickles through `scalar(dtype, bytes)`; numpy 1.x files (NVIDIA's cityscapes_best.pth)
# name it numpy.core.multiarray.scalar, numpy 2.x files numpy._core.multiarray.scalar: both are allowed,
# whichever numpy is installed. The dtype classes are what BUILD restores the dtype's state into.
_NUMERIC_SCALARS = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                    np.float16, np.float32, np.float64)
_SAFE_GLOBALS: list[Any] = [
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(t)) for t in _NUMERIC_SCALARS),
    argparse.Namespace,
]
_WEIGHT_KEYS = ("state_dict", "model", "model_state_dict", "net")
# Parts of torch's weights_only refusal message; a cut name (a truncated legacy file) is no pickled object.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*) ")
_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(.+)")


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save whole or not at all (data.files.atomic_output: a temporary file, fsync, rename over `path`)."""
    with atomic_output(path) as handle:
        torch.save(obj, handle)


def _refusal(path: Path, err: Exception) -> InputError:
    """The one-line InputError for a file that torch.load could not read."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    unsafe = _UNSAFE_GLOBAL.search(text)
    if unsafe is not None:
        return InputError(
            f"{path}: not a readable weights file: it holds a pickled Python object ({unsafe.group(1)}) that only "
            "its code could rebuild, and such files are never unpickled; if it is a model saved with "
            "torch.save(model), save model.state_dict() instead"
        )
    if isinstance(err, EOFError):
        reason = "it ends early"
    else:
        detail = _WEIGHTS_ONLY_REASON.search(text)
        first = detail.group(1) if detail else text.splitlines()[0] if text else type(err).__name__
        reason = first.split(". ")[0].rstrip(".")
    return InputError(f"{path}: not a readable weights file ({reason}); expected a complete file written by torch.save")


def read_file(path: str | Path) -> Any:
    """torch.load(weights_only=True, map_location="cpu") allowing numpy scalars and argparse.Namespace.

    A missing file, or one that is truncated, corrupt or holds pickled objects, is an InputError of one line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt, truncated or foreign files
        raise _refusal(path, err) from err


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip(weights: Mapping[str, torch.Tensor], prefix: str, path: str | Path) -> dict[str, torch.Tensor]:
    """`prefix` removed from the keys that have it; an InputError if none has it or two keys become one."""
    if not any(k.startswith(prefix) for k in weights):
        first = next(iter(weights), None)
        raise InputError(f"{path}: strip_prefix {prefix!r}: no key starts with it (first key: {first})")
    stripped: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        new = key[len(prefix):] if key.startswith(prefix) else key
        if new in stripped:
            raise InputError(f"{path}: strip_prefix {prefix!r}: two keys become {new!r}")
        stripped[new] = value
    return stripped


def state_dict_of(obj: Any, path: str | Path, strip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The weights inside a loaded file, with `strip_prefix` and then DataParallel's `module.` removed.

    `obj` is a state_dict, or a dict holding one under the first of 'state_dict', 'model', 'model_state_dict',
    'net' that holds one, beside anything else (epoch, metrics, optimizer state, hyper-parameters).
    """
    if not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise InputError(f"{path}: expected a state_dict or a dict holding one, got {type(obj).__name__}")
        found = next((obj[k] for k in _WEIGHT_KEYS if _is_state_dict(obj.get(k))), None)
        if found is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise InputError(
                f"{path}: no state_dict found; expected one under {', '.join(map(repr, _WEIGHT_KEYS))} "
                f"or a dict of tensors, got a dict with keys {keys}"
            )
        obj = found
    weights = dict(obj) if strip_prefix is None else _strip(obj, strip_prefix, path)
    if weights and all(k.startswith("module.") for k in weights):
        return {k[len("module."):]: v for k, v in weights.items()}
    return weights


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


def load_weights(model: nn.Module, path: str | Path, strip_prefix: str | None = None) -> nn.Module:
    """Load a weights file into `model` strictly (see `state_dict_of`, `match_state_dict`) and return the model.

    `strip_prefix` (e.g. Lightning's 'model.') is removed from the keys, as stored, that start with it. Values
    are cast to the dtype of the model's own tensors (a half-precision file loads into a float32 model).
    """
    weights = state_dict_of(read_file(path), path, strip_prefix)
    model.load_state_dict(match_state_dict(model, weights, path), strict=True)
    return model
