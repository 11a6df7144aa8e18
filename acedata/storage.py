"""One filesystem layer for every run path: local paths and URIs alike.

`resolve(uri)` gives a pyarrow filesystem and the path inside it for a local path,
`file://`, `s3://`, `gs://`, `hdfs://` (pyarrow's own filesystems) or any other fsspec
protocol (`memory://`, `az://`, ... wrapped in `PyFileSystem(FSSpecHandler)`).
Credentials and endpoints come from each ecosystem's own configuration (for S3:
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_PROFILE` / `~/.aws/config`,
`AWS_ENDPOINT_URL` for S3-compatible servers), never from a pipeline spec.

User-typed paths are made absolute once, with `absolute()`, on the machine where they
were typed (the CLI), before they travel to Ray workers or jobs.

Writes are whole-object: `write_bytes` is atomic on every filesystem. Locally it writes
a hidden temporary file and renames it; object stores have no rename (a "move" is a
copy plus a delete), but a single PUT becomes visible all at once or not at all, so
there the object is written directly under its final name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute (`~` expanded); URIs unchanged. Call where the user typed it."""
    if is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or URI."""
    if not is_uri(uri):
        return pafs.LocalFileSystem(), absolute(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            from acedata.errors import UserError

            raise UserError(f"{uri}: no filesystem for this URI ({e})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def is_local(fs: pafs.FileSystem) -> bool:
    """True for filesystems with an atomic rename (the local disk)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return True
    inner = getattr(getattr(fs, "handler", None), "fs", None)  # an fsspec filesystem behind PyFileSystem
    if isinstance(inner, pafs.LocalFileSystem):  # a wrapper around the local disk (tests' fault injection)
        return True
    protocol = getattr(inner, "protocol", ())
    return "file" in protocol or "local" in protocol


def join(base: str, *parts: str) -> str:
    """Join path segments onto a local path or URI (always '/')."""
    return posixpath.join(base, *parts)


# --- queries ---------------------------------------------------------------------


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def exists_uri(uri: str) -> bool:
    fs, p = resolve(uri)
    return exists(fs, p)


def is_file(uri: str) -> bool:
    fs, p = resolve(uri)
    return fs.get_file_info(p).type == pafs.FileType.File


def is_dir(uri: str) -> bool:
    fs, p = resolve(uri)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def listdir(uri: str) -> list[pafs.FileInfo]:
    """Direct children of a directory (empty when it does not exist), sorted by name."""
    fs, p = resolve(uri)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)), key=lambda i: i.path)


def subdirs(uri: str) -> list[str]:
    """Names of the visible subdirectories (not starting with '.' or '_'), sorted."""
    return [i.base_name for i in listdir(uri)
            if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))]


def walk(uri: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """Like os.walk, top-down, over a local path or URI: (dir URI, subdir names, file names).

    Callers may prune the subdir list in place.
    """
    infos = listdir(uri)
    dirs = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    files = [i.base_name for i in infos if i.type == pafs.FileType.File]
    yield uri, dirs, files
    for d in dirs:
        yield from walk(join(uri, d))


# --- reading ---------------------------------------------------------------------


def read_bytes(uri: str) -> bytes:
    fs, p = resolve(uri)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def load_npy(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = resolve(uri)
    with fs.open_input_file(p) as f:
        return pq.read_table(f, columns=columns)


# --- writing ---------------------------------------------------------------------


def makedirs(uri: str) -> None:
    fs, p = resolve(uri)
    fs.create_dir(p, recursive=True)


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write one object atomically: temp + rename locally, one direct PUT on object stores."""
    parent = posixpath.dirname(path)
    if is_local(fs):
        fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


@contextlib.contextmanager
def open_output(uri: str) -> Iterator[pa.NativeFile]:
    """Stream one object out; it appears under `uri` only once the block completes.

    Locally a hidden temporary file is renamed at the end; on object stores the upload
    completes at close (a failed block deletes what was uploaded).
    """
    fs, path = resolve(uri)
    local = is_local(fs)
    if local:
        fs.create_dir(posixpath.dirname(path), recursive=True)
    target = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}") \
        if local else path
    out = fs.open_output_stream(target)
    try:
        yield out
    except BaseException:
        out.close()
        fs.delete_file(target)
        raise
    out.close()
    if local:
        fs.move(target, path)


def write_bytes(uri: str, data: bytes) -> None:
    fs, p = resolve(uri)
    write_file(fs, p, data)


def write_json(uri: str, obj: Any, indent: int | None = None) -> None:
    write_bytes(uri, json.dumps(obj, indent=indent).encode())


def save_npy(uri: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(uri, buf.getvalue())


def write_parquet(uri: str, table: pa.Table, **kw: Any) -> None:
    """One Parquet file, streamed out row group by row group; it appears whole (see `open_output`).
    (Built in memory first, a file of a unit's candidates was held twice more: as Arrow's buffer
    and as its bytes copy.)"""
    with open_output(uri) as out:
        pq.write_table(table, out, **kw)


def attempt_id() -> str:
    """A short id unique to one write attempt: object names that are written exactly once."""
    return uuid.uuid4().hex[:12]


# --- deleting (scratch and temporary files only; committed files are never deleted) ------


def delete_file(uri: str) -> None:
    fs, p = resolve(uri)
    if exists(fs, p):
        fs.delete_file(p)


def delete_dir(uri: str) -> None:
    """Remove a directory tree; a missing one is fine."""
    fs, p = resolve(uri)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


# --- columnar scans ------------------------------------------------------------------


def scan_parquet(files: list[str]):
    """A polars LazyFrame over Parquet files on any filesystem (projection/predicate pushdown kept).

    Local files go to polars directly; other URIs through a pyarrow dataset on the same
    filesystem every other read uses, so credentials and endpoints are configured once.
    """
    import polars as pl

    if not any(is_uri(f) for f in files):
        return pl.scan_parquet(files)
    import pyarrow.dataset as pads

    fs, _ = resolve(files[0])
    paths = [resolve(f)[1] for f in files]
    return pl.scan_pyarrow_dataset(pads.dataset(paths, filesystem=fs, format="parquet"))
