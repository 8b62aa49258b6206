"""Experiment folders on a local (or shared) disk or on any filesystem pyarrow reaches, such as S3.

`--storage s3://bucket/prefix` works as Ray Tune itself stores experiments: through `pyarrow.fs`.
Endpoint and credentials come from the usual AWS settings (environment, ~/.aws) or from the URI's
query (`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`), as `FileSystem.from_uri`
reads it; the query stays with the location, so the `--resume` hint a search prints reaches the same
endpoint. Every file written here replaces the previous one whole: on a disk through
`data.files.atomic_output` (a temporary file, fsync, rename), on an object store with one upload that
either completes or leaves the previous object.
"""
from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs

from data.errors import InputError
from data.files import write_bytes_atomic


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


@dataclass(frozen=True)
class Location:
    """A folder: a filesystem, the path inside it, and how a person writes it (a local path, or a URI and its query)."""

    fs: pafs.FileSystem
    path: str
    base: str  # the local path, or the URI without its query
    query: str = ""  # a URI's query (endpoint_override=...&scheme=...), kept for the commands a user is told to run

    @classmethod
    def parse(cls, location: str | Path) -> Location:
        text = str(location)
        if not is_uri(text):
            local = str(Path(text).resolve())
            return cls(pafs.LocalFileSystem(), local, local)
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"{text}: not a storage URI pyarrow can open ({err})") from None
        base, _, query = text.partition("?")
        return cls(fs, path.rstrip("/"), base.rstrip("/"), query)

    @property
    def text(self) -> str:
        """The location as a person types it in a shell: with its query, quoted where it must be (a query's `&`)."""
        return shlex.quote(f"{self.base}?{self.query}" if self.query else self.base)

    @property
    def local(self) -> Path | None:
        return Path(self.path) if isinstance(self.fs, pafs.LocalFileSystem) else None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Location:
        return Location(self.fs, f"{self.path}/{name}", f"{self.base}/{name}", self.query)

    def parent(self) -> Location:
        return Location(self.fs, self.path.rsplit("/", 1)[0], self.base.rsplit("/", 1)[0], self.query)

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(f"{self.path}/{name}").type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as stream:
                return stream.read()
        except (FileNotFoundError, OSError) as err:
            raise InputError(f"{self.base}/{name}: cannot read ({err})") from None

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.local is not None:
            write_bytes_atomic(self.local / name, data)
            return
        stream = self.fs.open_output_stream(f"{self.path}/{name}")
        stream.write(data)  # an object store shows the new object once close() completes its upload
        stream.close()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_parquet(self, name: str, table: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        self.write_bytes(name, buffer.getvalue())

    def read_parquet(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read_bytes(name)))

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)
