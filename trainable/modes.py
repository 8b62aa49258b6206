"""Train or eval mode for a block of code, then every module back in the mode it had."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def in_mode(*modules: nn.Module, training: bool) -> Iterator[None]:
    """`modules` and all their submodules in train (`training`) or eval mode for the block; then each submodule back
    in the mode it had, also where it differed from its parent's (a frozen BatchNorm inside a training network)."""
    saved = {module: module.training for root in modules for module in root.modules()}
    for module in modules:
        module.train(training)
    try:
        yield
    finally:
        for module, mode in saved.items():
            module.training = mode
