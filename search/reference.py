"""The space-file reference, written from the schema: `python -m search.reference docs/space.md`."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from data.errors import InputError, run_cli
from data.files import write_text_atomic
from data.schema import DISTRIBUTIONS, Entry, entries, nested, words
from search.space import Space

COMMAND = "python -m search.reference docs/space.md"
INTRO = f"""# Space files

Generated from the settings dataclasses (the schema) by `{COMMAND}`: edit those, not this file.

A space file is YAML with the sections below; a section without a default must be given, every other field
may be left out and takes its default. Paths are relative to the folder the command runs in. A wrong, unknown
or missing field ends the command with exit status 2 and one line:
`<file>: <section.field>: expected <what>, got <value>`.

A field marked *searchable* (some `distill` fields; no other) may be a distribution instead of a value: each
trial samples its own, `{{{' | '.join(DISTRIBUTIONS)}: ..., default: ...}}`, e.g.
`lr: {{loguniform: [1.0e-4, 1.0e-2], default: 1.0e-3}}` or `temperature: {{choice: [1, 2, 4]}}`.
`loguniform` and `uniform` take `[low, high]` (numbers), `int` `[low, high]` (integers), `choice` a list of
values. The `default` is the value used outside the search: by the first trials the library proposes, and by
`search/retrain.py` when no trial says (a choice's default is its first option when not given; a range without
one needs `--set NAME=VALUE` there).
"""


def _default(e: Entry) -> str:
    text = e.setting.default_text
    if text is not None:
        return text() if callable(text) else text
    value = e.default
    if value is dataclasses.MISSING or e.setting.required:
        return "required"
    if dataclasses.is_dataclass(value):
        return "its fields' defaults"
    return "`none`" if e.setting.tagged and value is None else f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return f"[{', '.join(_yaml(v) for v in value)}]"
    if isinstance(value, str) and not value:
        return '""'
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(where: str, cls: type, doc: str) -> list[str]:
    """One section's table, then a table for each mapping inside it."""
    rows = [row for e in entries(cls) for row in (entries(e.type) if e.setting.inline else [e])]
    searchable = any(e.setting.searchable for e in rows)
    lines = [f"## `{where}`", "", doc, "", "| field | accepts | default |" + (" searchable |" if searchable else "")
             + " meaning |", "|---|---|---|" + ("---|" if searchable else "") + "---|"]
    inner = []
    for e in rows:
        at = f"{where}.{'.'.join(e.path)}"
        search = (" yes |" if e.setting.searchable else " |") if searchable else ""
        lines.append(f"| `{at}` | {_cell(words(e))} | {_cell(_default(e))} |{search} {_cell(e.setting.doc)} |")
        inner += [(at + suffix, c, e.setting.doc) for suffix, c in nested(e)]
    lines.append("")
    for at, c, text in inner:
        lines += _table(at, c, text)
    return lines


def render() -> str:
    """docs/space.md: every section and field of a space file, what it accepts, its default and its meaning."""
    lines = INTRO.splitlines() + [""]
    for e in entries(Space):
        [(_, section)] = nested(e)
        lines += _table(e.name, section,
                        e.setting.doc + (f" (default: {_default(e)})" if e.default is not dataclasses.MISSING else ""))
    return "\n".join(lines).rstrip("\n") + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.reference", description=__doc__)
    parser.add_argument("out", type=Path, help="the file to write (docs/space.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        write_text_atomic(args.out, render())
    except OSError as err:
        raise InputError(f"{args.out}: cannot write ({err.strerror}); expected a writable file path") from None
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
