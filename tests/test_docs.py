"""The reference in docs/ against the code: every command's flags and their defaults (docs/commands.md), the columns
`trials.parquet` gets and the experiment folder's file names (docs/experiment.md), and every relative link of
README.md and docs/*.md."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from data import names
from trainable import tasks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# A command's section heading in docs/commands.md, and the module whose `_parser()` builds its flags.
COMMANDS = {
    "search/run.py": "search.run",
    "search/retrain.py": "search.retrain",
    "search/teacher.py": "search.teacher",
    "search/library.py": "search.library",
    "search/demo.py": "search.demo",
    "python -m analysis": "analysis.__main__",
    "python -m trainable.layers": "trainable.layers",
    "python -m trainable.predict": "trainable.predict",
    "python -m trainable.evaluate": "trainable.evaluate",
    "python -m trainable.export": "trainable.export",
    "python -m search.reference": "search.reference",
    "python -m data.synthetic": "data.synthetic",
}
PACKAGES = ("analysis", "data", "search", "trainable")  # where commands live (benchmarks: benchmarks/README.md)


def _sections(path: Path) -> dict[str, str]:
    """The text under each `## ` heading, by the heading's text without backticks."""
    parts = re.split(r"^## (.+)$", path.read_text(), flags=re.M)
    return {heading.replace("`", "").strip(): body for heading, body in zip(parts[1::2], parts[2::2])}


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows whose first cell opens with a code span: that span's first word -> the other cells."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*`([^`\s]+)[^|]*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of the parser (help aside), and each positional by its name in capitals."""
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for name in action.option_strings or [(action.metavar or action.dest).upper()]:
            flags[name] = action
    return flags


def _command_modules() -> set[str]:
    """Modules of the project's packages that build an argparse parser."""
    found = set()
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            if "ArgumentParser(" in file.read_text():
                found.add(".".join(file.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_command_has_a_section():
    assert set(COMMANDS.values()) == _command_modules()
    headings = set(_sections(DOCS / "commands.md")) - {"Exit status"}
    assert headings == set(COMMANDS)


def _documents_default(cell: str, default: object) -> bool:
    """Whether a default cell names `default` (numbers compared as numbers: `1e-4` names 0.0001)."""
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return any(float(token) == default for token in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", cell))
    return str(default) in cell


@pytest.mark.parametrize("heading", COMMANDS)
def test_commands_md_has_every_flag_and_its_default(heading):
    parser = importlib.import_module(COMMANDS[heading])._parser()
    flags = _flags(parser)
    rows = _rows(_sections(DOCS / "commands.md")[heading])
    assert set(rows) == set(flags), f"{heading}: docs/commands.md's flags table differs from the parser's flags"
    for flag, action in flags.items():
        default = action.default
        if default is None or default is False or default in ([], {}):
            continue  # no default to state
        if isinstance(default, Path) and default.is_absolute():
            continue  # the current folder: where the command runs
        assert _documents_default(rows[flag][0], default), f"{heading} {flag}: default {default!r} not in the table"


def _trial(config: dict, last: dict) -> SimpleNamespace:
    """What `trials_table` reads of a Ray Tune trial."""
    metrics = {key: {"max": value} for key, value in last.items()}
    return SimpleNamespace(trial_id="t1", status="TERMINATED", last_result=last, config=config,
                           metric_analysis=metrics, checkpoint=None, num_failures=0, get_error=lambda: None)


def _documented_column(column: str) -> str:
    """How docs/experiment.md writes a column: a per-choice or per-setting column by its pattern."""
    if column.startswith("hp.policy."):
        return "hp.policy.<"
    return "hp.<" if column.startswith("hp.") else column


def test_experiment_md_has_every_trials_column():
    from search.results import trials_table

    metrics = sorted({name for task in tasks.registered() for name in task.metrics(1000)})
    last = {"epoch": 2, "epochs_total": 2, **{cost: 1.0 for cost in names.COSTS}, **{name: 0.5 for name in metrics}}
    config = {"policy": {"layer1.conv": names.KEEP}, "distill": {"w_kd": 1.0}}
    table = trials_table(SimpleNamespace(trials=[_trial(config, last)]), metrics)
    text = (DOCS / "experiment.md").read_text()
    rows = _rows(_sections(DOCS / "experiment.md")["trials.parquet"])
    for column in table.columns:
        assert f"`{_documented_column(column)}" in text, f"trials.parquet column {column!r} not in docs/experiment.md"
        dtype = str(table[column].dtype)
        if column in rows and dtype in ("Int64", "Float64"):
            assert rows[column][0] == dtype, f"{column}: docs/experiment.md says {rows[column][0]}, the table {dtype}"


def test_experiment_md_names_every_file():
    from search.lock import LOCK_FILE
    from search.trial import STATE_FILE

    constants = [value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)]
    text = (DOCS / "experiment.md").read_text()
    missing = [value for value in [*constants, LOCK_FILE, STATE_FILE] if f"`{value}" not in text]
    assert not missing, f"docs/experiment.md does not name {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    slugs: list[str] = []
    for heading in re.findall(r"^#+ (.+)$", _prose(path.read_text()), flags=re.M):
        slug = _slug(heading)
        slugs.append(slug if slug not in slugs else f"{slug}-{slugs.count(slug)}")
    return set(slugs)


def _prose(text: str) -> str:
    """The text without fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_files_that_exist(page):
    text = re.sub(r"`[^`\n]*`", "", _prose(page.read_text()))  # links inside code are not links
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto: ...
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"
