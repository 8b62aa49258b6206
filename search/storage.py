"""Experiment folders on a local (or shared) disk or on any filesystem pyarrow reaches, such as S3.

`--storage s3://bucket/prefix` works as Ray Tune itself stores experiments: through `pyarrow.fs`.
Endpoint and credentials come from the usual AWS settings (environment, ~/.aws) or from the URI's
query (`s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000`), as `FileSystem.from_uri` reads
it. Every file written here replaces the previous one whole: a temporary file then a rename on disks,
one PUT (atomic by S3's semantics) on object stores.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs

from data.errors import InputError


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a local file whole or not at all: a temporary file in its folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Location:
    """A folder: a filesystem, the path inside it, and how a person writes it (a local path or a URI)."""

    fs: pafs.FileSystem
    path: str
    text: str

    @classmethod
    def parse(cls, location: str | Path) -> Location:
        text = str(location)
        if not is_uri(text):
            local = str(Path(text).resolve())
            return cls(pafs.LocalFileSystem(), local, local)
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pafs.ArrowInvalid, OSError, ValueError) as err:  # type: ignore[attr-defined]
            raise InputError(f"--storage {text}: not a storage URI pyarrow can open ({err})") from None
        base = text.split("?", 1)[0].rstrip("/")
        return cls(fs, path.rstrip("/"), base)

    @property
    def local(self) -> Path | None:
        return Path(self.path) if isinstance(self.fs, pafs.LocalFileSystem) else None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Location:
        return Location(self.fs, f"{self.path}/{name}", f"{self.text}/{name}")

    def parent(self) -> Location:
        return Location(self.fs, self.path.rsplit("/", 1)[0], self.text.rsplit("/", 1)[0])

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(f"{self.path}/{name}").type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as stream:
                return stream.read()
        except (FileNotFoundError, OSError) as err:
            raise InputError(f"{self.text}/{name}: cannot read ({err})") from None

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.local is not None:
            write_bytes_atomic(self.local / name, data)
            return
        with self.fs.open_output_stream(f"{self.path}/{name}") as stream:
            stream.write(data)

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
