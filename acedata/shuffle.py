"""Hash partitioning on workers: the shuffle behind joins and group-bys the driver must not do.

A stage that needs rows with the same key together (a join of pairs and instructions, a
group-by image id) runs two waves (`Stage.next_wave`): each unit of the first wave writes
its rows into `n` buckets by a stable hash of the key (`write_buckets`); each unit of the
second wave reads one bucket, from every writer (`read_bucket`). The driver only chooses
`n` and names units, so its memory grows with the number of units, never with rows.

The hash is pandas' SipHash of the key's bytes with a fixed key: the same on every
machine, Python process and run, so which rows share a bucket depends only on the keys
and `n`. Files are `DIR/b00042/<writer>.parquet`; a writer only ever writes its own files,
so a retried unit rewrites them with the same content, and `read_bucket` concatenates
them in writer-name order, independent of scheduling.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


def bucket_dir(root: str, bucket: int) -> str:
    return posixpath.join(root, f"b{bucket:05d}")


def write_buckets(table: pa.Table, key: str, n: int, root: str, writer: str) -> int:
    """Write `table`'s rows to `root` (a URI) split by `bucket_of(table[key], n)`; returns files written.

    Rows keep their order inside a bucket. Empty buckets get no file."""
    if table.num_rows == 0:
        return 0
    return write_parts(table, bucket_of(table.column(key), n), root, writer)


def write_parts(table: pa.Table, buckets: np.ndarray, root: str, writer: str) -> int:
    """Write row i of `table` to bucket `buckets[i]` (a partition chosen by the caller, e.g. a range
    of a sort key, so buckets in order hold the keys in order); returns files written."""
    if table.num_rows == 0:
        return 0
    fs, base = shards.resolve(root)
    b = np.asarray(buckets, dtype=np.int64)
    order = np.argsort(b, kind="stable")
    starts = np.flatnonzero(np.diff(b[order])) + 1
    written = 0
    for rows in np.split(order, starts):
        d = bucket_dir(base, int(b[rows[0]]))
        fs.create_dir(d, recursive=True)
        # scratch read once by the next wave: speed over size
        pq.write_table(table.take(pa.array(rows)), posixpath.join(d, f"{writer}.parquet"), filesystem=fs,
                       compression="none")
        written += 1
    return written


def read_bucket(root: str, bucket: int, columns: list[str] | None = None,
                schema: pa.Schema | None = None) -> pa.Table:
    """Every writer's rows of one bucket, writers in name order (empty: `schema`'s empty table)."""
    fs, base = shards.resolve(root)
    d = bucket_dir(base, bucket)
    files: list[str] = []
    if shards.exists(fs, d):
        files = sorted(i.path for i in fs.get_file_info(FileSelector(d)) if i.type == FileType.File
                       and i.path.endswith(".parquet"))
    tables = [_read(fs, f, columns) for f in files]
    if tables:
        return pa.concat_tables(tables, promote_options="default")
    if schema is None:
        raise ValueError(f"bucket {bucket} under {root} is empty and no schema was given")
    return schema.empty_table() if columns is None else schema.empty_table().select(columns)


def _read(fs: FileSystem, path: str, columns: list[str] | None) -> pa.Table:
    # a reader reads one file per writer of the earlier wave, so files grow with the run: ParquetFile
    # costs ~0.33 ms per small file, pq.read_table (the dataset machinery) ~0.8 ms
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read(columns=columns)


def delete(root: str) -> None:
    """Remove the scratch buckets (after the wave that reads them has committed)."""
    fs, base = shards.resolve(root)
    if shards.exists(fs, base):
        fs.delete_dir(base)
