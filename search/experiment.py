"""Reading an experiment folder's copy of its space (the folder's file names: `data.names`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from data.names import SPACE_COPY
from search.space import Space, load_space
from search.storage import Location


def read_space_copy(experiment: Location, record: dict) -> Space:
    """The experiment's copy of its space, read as if it stood where the original did (its module imports)."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / SPACE_COPY
        copy.write_bytes(experiment.read_bytes(SPACE_COPY))
        return load_space(copy, folder=Path(record["space_dir"]) if record.get("space_dir") else None)
