"""Mixed precision: which autocast a device runs under, from one setting (`distill.precision`)."""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

from data.errors import InputError

Precision = Literal["auto", "bf16", "fp32"]


def amp_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """bf16 where asked (`auto`: on CUDA devices that support it), None for fp32."""
    if precision == "fp32":
        return None
    bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if bf16_gpu else None
    if device.type == "cuda" and not bf16_gpu:
        raise InputError(f"distill.precision: expected auto or fp32 on {torch.cuda.get_device_name(device)}, "
                         "which has no bf16 support, got bf16")
    return torch.bfloat16  # on CPU too: autocast runs the convs and matmuls in bf16 there


def autocast(device: torch.device, precision: Precision = "auto") -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    dtype = amp_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
