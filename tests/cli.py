"""A command's main run in the test's own process, as its `python ...` entry point runs it (exit status included)."""
from __future__ import annotations

import contextlib
import io
from typing import Callable, Sequence

import pytest

from data.errors import run_cli


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[object]) -> tuple[int, str, str]:
    """`run_cli(main, argv)`: its exit status, stdout and stderr. Saves a subprocess's start (torch, ray imports)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as ended, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        run_cli(main, [str(arg) for arg in argv])
    return ended.value.code, out.getvalue(), err.getvalue()


def exit_2_line(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[object]) -> str:
    """The command must end with exit status 2 and one line on stderr, which is returned."""
    code, _, err = run_main(main, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, lines)
    return lines[0]


def run_ok(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[object]) -> str:
    """The command must end with exit status 0; its stdout is returned."""
    code, out, err = run_main(main, argv)
    assert code == 0, err
    return out
