"""The one error type for bad user input, and the wrapper that turns it into exit status 2."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence


class InputError(Exception):
    """Bad user input; the message is one line naming the file, the field and what was expected."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a command's main; an InputError ends it with one line on stderr and exit status 2."""
    try:
        code = main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
