"""A command's main run in the test's own process, as its `python ...` entry point runs it (exit status included)."""
from __future__ import annotations

from typing import Callable, Sequence

import pytest

from data.errors import run_cli


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[object], capsys) -> tuple[int, str, str]:
    """`run_cli(main, argv)`: its exit status, stdout and stderr. Saves a subprocess's start (torch, ray imports)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        run_cli(main, [str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return ended.value.code, out, err
