"""Reading the trainer's inputs from a local path or any pyarrow/fsspec URI (s3://, gs://, ...).

Training data are Parquet tables in the shard layout the data platform writes (a table directory with
`_manifest.json` listing its shards and `_units/<unit>.json` per committed unit) or plain
Parquet files. This module reads that layout on its own, so the trainer needs nothing from the data platform.
"""

from __future__ import annotations

import json
import os
import posixpath
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

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


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
