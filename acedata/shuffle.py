"""Hash partitioning on workers: the shuffle behind joins and group-bys the driver must not do.

A stage that needs rows with the same key together (a join of pairs and instructions, a
group-by image id) runs two waves (`Stage.next_wave`): each unit of the first wave writes
its rows into `n` buckets by a stable hash of the key (`write_buckets`); each unit of the
second wave reads one bucket, from every writer (`read_bucket`). The driver only chooses
`n` and names units, so its memory grows with the number of units, never with rows.

The hash is pandas' SipHash of the key's bytes with a fixed key: the same on every
machine, Python process and run, so which rows share a bucket depends only on the keys
and `n`. A writer only ever writes its own file, so a retried unit rewrites it with the same
content, and `read_bucket` concatenates the writers' rows in writer-name order, independent
of scheduling.

One file per writer, `DIR/<writer>.shuf`, not one per (writer, bucket): both the writers and
the buckets of a wave grow with the run, so per-bucket files made the file count, and a
fixed ~0.5 ms of Parquet write + read per file, grow as rows^2 (the assemble label wave at
10^7 rows: 310 writers x 1,756 output buckets, its whole CPU time). The file holds each
bucket's rows as one Arrow IPC stream, buckets in order, then an index of byte offsets
(n + 1 int64) and a trailer (n, magic); a reader opens each writer's file and reads two
index entries and its bucket's bytes, ~30 us. Scratch written as `DIR/b00042/<writer>.parquet`
(by an older version, before a resume) is still read.
"""

from __future__ import annotations

import posixpath
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import ipc
from pyarrow.fs import FileSelector, FileSystem, FileType

from acedata import shards


def bucket_count(rows: int, rows_per_bucket: int, max_buckets: int = 100_000) -> int:
    """Buckets for `rows` rows of about `rows_per_bucket` each (at least 1)."""
    return max(1, min(max_buckets, -(-rows // max(1, rows_per_bucket))))


def bucket_of(keys: pa.Array | pa.ChunkedArray | list | np.ndarray, n: int) -> np.ndarray:
    """The bucket (0..n-1) of each key: strings hash their UTF-8 bytes, integers their value."""
    if isinstance(keys, pa.ChunkedArray | pa.Array):
        keys = keys.to_numpy(zero_copy_only=False)
    values = np.asarray(keys)
    if values.dtype.kind in "iu":
        values = values.astype(np.int64)
    elif values.dtype.kind != "O":
        values = values.astype(object)
    return (pd.util.hash_array(values, categorize=False) % np.uint64(n)).astype(np.int64)


SUFFIX = ".shuf"
MAGIC = b"ACESHUF1"
_TRAILER = 16  # int64 bucket count, MAGIC
_OLD_BUCKET = re.compile(r"b\d{5}$")  # the per-bucket folders of the older layout


def bucket_dir(root: str, bucket: int) -> str:
    """The older layout's folder of one bucket (read, never written)."""
    return posixpath.join(root, f"b{bucket:05d}")


def write_buckets(table: pa.Table, key: str, n: int, root: str, writer: str) -> int:
    """Write `table`'s rows to `root` (a URI) split by `bucket_of(table[key], n)`; returns the
    number of non-empty buckets.

    Rows keep their order inside a bucket."""
    if table.num_rows == 0:
        return 0
    return write_parts(table, bucket_of(table.column(key), n), root, writer)


def write_parts(table: pa.Table, buckets: np.ndarray, root: str, writer: str) -> int:
    """Write row i of `table` to bucket `buckets[i]` (a partition chosen by the caller, e.g. a range
    of a sort key, so buckets in order hold the keys in order); returns the number of non-empty
    buckets. One file, `root/<writer>.shuf` (a second call for the same writer and root replaces
    it); no file when the table is empty."""
    if table.num_rows == 0:
        return 0
    fs, base = shards.resolve(root)
    b = np.asarray(buckets, dtype=np.int64)
    order = np.argsort(b, kind="stable")
    b = b[order]
    rows = table.take(pa.array(order))
    n = int(b[-1]) + 1
    bounds = np.searchsorted(b, np.arange(n + 1))  # bucket k: rows bounds[k] .. bounds[k+1]
    full = np.flatnonzero(np.diff(bounds))
    sizes = np.zeros(n, np.int64)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(posixpath.join(base, writer + SUFFIX)) as out:
        for k in full.tolist():
            start = out.tell()
            with ipc.new_stream(out, rows.schema) as w:  # closing the writer leaves `out` open
                w.write_table(rows.slice(bounds[k], bounds[k + 1] - bounds[k]))
            sizes[k] = out.tell() - start
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype("<i8")
        out.write(offsets.tobytes() + np.array([n], "<i8").tobytes() + MAGIC)
    return len(full)


def read_bucket(root: str, bucket: int, columns: list[str] | None = None,
                schema: pa.Schema | None = None) -> pa.Table:
    """Every writer's rows of one bucket, writers in name order (empty: `schema`'s empty table)."""
    fs, base = shards.resolve(root)
    found: list[tuple[str, str]] = []  # (file name, path): "<writer>.shuf" sorts as "<writer>.parquet" did
    if shards.exists(fs, base):
        for i in fs.get_file_info(FileSelector(base)):
            name = posixpath.basename(i.path)
            if i.type == FileType.File and name.endswith(SUFFIX):
                found.append((name, i.path))
            elif i.type == FileType.Directory and _OLD_BUCKET.match(name) and int(name[1:]) == bucket:
                found += [(posixpath.basename(j.path), j.path) for j in fs.get_file_info(FileSelector(i.path))
                          if j.type == FileType.File and j.path.endswith(".parquet")]
    tables = [t for _, path in sorted(found) if (t := _read(fs, path, bucket, columns)) is not None]
    if tables:
        return pa.concat_tables(tables, promote_options="default")
    if schema is None:
        raise ValueError(f"bucket {bucket} under {root} is empty and no schema was given")
    return schema.empty_table() if columns is None else schema.empty_table().select(columns)


def _read(fs: FileSystem, path: str, bucket: int, columns: list[str] | None) -> pa.Table | None:
    """One writer's rows of `bucket`, or None when it wrote none."""
    with fs.open_input_file(path) as f:
        if not path.endswith(SUFFIX):  # the older layout: the file is the bucket
            return pq.ParquetFile(f).read(columns=columns)
        size = f.size()
        trailer = bytes(f.read_at(_TRAILER, size - _TRAILER)) if size >= _TRAILER else b""
        if trailer[8:] != MAGIC:
            raise ValueError(f"{path}: not a whole shuffle file (its writer failed while writing?)")
        n = int(np.frombuffer(trailer[:8], "<i8")[0])
        if bucket >= n:
            return None
        lo, hi = np.frombuffer(f.read_at(16, size - _TRAILER - 8 * (n + 1 - bucket)), "<i8").tolist()
        if hi == lo:
            return None
        t = ipc.open_stream(pa.py_buffer(f.read_at(hi - lo, lo))).read_all()
    return t if columns is None else t.select(columns)


def delete(root: str) -> None:
    """Remove the scratch buckets (after the wave that reads them has committed)."""
    fs, base = shards.resolve(root)
    if shards.exists(fs, base):
        fs.delete_dir(base)
