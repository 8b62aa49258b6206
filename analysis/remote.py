"""Experiments on an object store (`s3://bucket/prefix/name`): analysed from a local copy, outputs written back.

`python -m analysis s3://...` copies what the analysis reads (trials.parquet, teacher.json, run.json and
every trial's result.json) through `pyarrow.fs` into a temporary folder named like the experiment, runs
there, and uploads the files it wrote (pareto.csv, the figures, report.md) into the experiment's prefix
beside trials.parquet, as a local analysis writes them into the folder. Endpoint and credentials are
pyarrow's: the AWS environment, or the URI's query (`?endpoint_override=127.0.0.1:9000&scheme=http`).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from data.errors import InputError
from data.names import RESULT_FILE, RUN_FILE, TEACHER_FILE, TRIALS_FILE

READ = (TRIALS_FILE, TEACHER_FILE, RUN_FILE)


def is_uri(location: str) -> bool:
    return "://" in location


def _open(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """The filesystem, the path inside it, and the URI without its query."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{uri}: not a storage URI pyarrow can open ({err})") from None
    return fs, path.rstrip("/"), uri.partition("?")[0].rstrip("/")


def _download(fs: pafs.FileSystem, root: str, base: str, folder: Path) -> dict[str, int]:
    """Copy the files the analysis reads; their modification times in the copy, by relative name."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as err:  # FileNotFoundError for a prefix that holds nothing
        raise InputError(f"{base}: cannot list the experiment ({err})") from None
    copied = {}
    for info in infos:
        name = info.path[len(root) + 1:]
        if info.type != pafs.FileType.File or not (name in READ or name.endswith(f"/{RESULT_FILE}")):
            continue
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as stream:
            target.write_bytes(stream.read())
        copied[name] = target.stat().st_mtime_ns
    return copied


def _upload(fs: pafs.FileSystem, root: str, folder: Path, copied: dict[str, int]) -> None:
    """Upload the files written or changed in the copy since it was made (one whole object each)."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if copied.get(name) == file.stat().st_mtime_ns:
            continue
        stream = fs.open_output_stream(f"{root}/{name}")
        stream.write(file.read_bytes())
        stream.close()


@contextlib.contextmanager
def staged(location: str) -> Iterator[Path]:
    """The experiment folder itself, or for a URI a local copy whose new files are uploaded when the block succeeds.

    An InputError about the copy names the URI, not the temporary folder.
    """
    if not is_uri(location):
        yield Path(location)
        return
    fs, root, base = _open(location)
    name = root.rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="plugkd-analysis-") as temporary:
        folder = Path(temporary) / name
        folder.mkdir()
        copied = _download(fs, root, base, folder)
        if not copied:
            raise InputError(f"{base}: no experiment there (no {TRIALS_FILE}, {TEACHER_FILE} or {RESULT_FILE})")
        try:
            yield folder
        except InputError as err:
            raise InputError(str(err).replace(str(folder), base)) from None
        _upload(fs, root, folder, copied)
