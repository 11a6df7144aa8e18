"""Reading the trainer's inputs from a local path or any pyarrow/fsspec URI (s3://, gs://, ...).

Training data are Parquet tables in the shard layout the data platform writes (a table directory with
`_manifest.json` listing its shards and `_units/<unit>.json` per committed unit) or plain
Parquet files. This module reads that layout on its own, so the trainer needs nothing from the data platform.

It is also the trainer's one way to write (checkpoints): `upload` copies a local file to a path or URI,
`local_copy` hands a local path for any path or URI (a download for remote ones), `is_local` tells the
filesystems with an atomic rename from object stores (which have none: a "move" is copy + delete).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
UNITS_DIR = "_units"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; fsspec covers schemes pyarrow lacks."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            from acemodel.errors import UserError

            raise UserError(f"{uri}: no filesystem for this URI ({e})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def absolute(path: str) -> str:
    """A local path made absolute (`~` expanded); URIs unchanged. Call where the user typed it."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """Join path segments onto a local path or URI (always '/')."""
    return posixpath.join(base, *parts)


def is_local(fs: pafs.FileSystem) -> bool:
    """True for filesystems with an atomic rename (the local disk, also as file:// or fsspec "file")."""
    if isinstance(fs, pafs.LocalFileSystem):
        return True
    inner = getattr(getattr(fs, "handler", None), "fs", None)  # an fsspec filesystem behind PyFileSystem
    protocol = getattr(inner, "protocol", ())
    return "file" in protocol or "local" in protocol


def exists(uri: str) -> bool:
    fs, p = resolve(uri)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, p = resolve(uri)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def open_parquet(uri: str) -> pq.ParquetFile:
    fs, p = resolve(uri)
    return pq.ParquetFile(fs.open_input_file(p))


def unit_fragment(table: str, unit: str) -> dict[str, Any]:
    """The record of one committed unit of a table: its shards (file names relative to the table)."""
    return read_json(posixpath.join(table, UNITS_DIR, f"{unit}.json"))


def list_shards(table: str) -> list[str]:
    """The Parquet files of a table, in a stable order: the manifest's shards when there is a
    manifest, else every *.parquet below it outside hidden (`.`) and bookkeeping (`_`) folders.
    `table` may also be one Parquet file. FileNotFoundError when nothing is there."""
    fs, root = resolve(table)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no table at {table}")
    if kind == pafs.FileType.File:
        return [table]
    # keep the caller's spelling (a URI stays a URI) for the paths handed back
    base = table if "://" in table else root
    manifest = posixpath.join(base, MANIFEST)
    if exists(manifest):
        return [posixpath.join(base, s["file"]) for s in read_json(manifest)["shards"]]
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = posixpath.relpath(info.path, root)
        if rel.endswith(".parquet") and not any(part.startswith((".", "_")) for part in rel.split("/")):
            found.append(posixpath.join(base, rel))
    return sorted(found)


def list_dir(uri: str) -> list[pafs.FileInfo]:
    """Direct children of a directory (empty when it does not exist), sorted by name."""
    fs, p = resolve(uri)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)), key=lambda i: i.base_name)


def write_bytes(uri: str, data: bytes) -> None:
    """One whole object (one PUT on object stores; callers wanting local atomicity write a temp + move)."""
    fs, p = resolve(uri)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def upload(local_path: str, uri: str) -> None:
    """Copy one local file to a path or URI, streamed (a multi-GB checkpoint never sits in memory)."""
    fs, p = resolve(uri)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    pafs.copy_files(local_path, p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the file at `uri`: the file itself when it is local, else a temporary download."""
    fs, p = resolve(uri)
    if is_local(fs):
        yield p if isinstance(fs, pafs.LocalFileSystem) else os.path.abspath(p)
        return
    with tempfile.TemporaryDirectory(prefix="acemodel-") as tmp:
        dst = os.path.join(tmp, posixpath.basename(p))
        pafs.copy_files(p, dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield dst


def delete_dir(uri: str) -> None:
    """Remove a directory tree (on object stores: every object under the prefix); a missing one is fine."""
    fs, p = resolve(uri)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def delete_file(uri: str) -> None:
    fs, p = resolve(uri)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)
