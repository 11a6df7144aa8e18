"""Writing the image index's per-shard files (by the unit that wrote the shard, or to fill a gap).
The table's partitioned index is built from them by `acedata.image_index_build`."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import shards
from acedata.image_index_files import (
    INDEX_DIR,
    _index_files,
    _read_index,
    build_shard_index,
    index_name,
)
from acedata.schemas import IMAGE_INDEX, with_hf_metadata


def _write_index_file(fs: pafs.FileSystem, path: str, table: pa.Table, sha256: str) -> None:
    meta = dict(with_hf_metadata(IMAGE_INDEX).metadata)
    meta[b"acedata.shard_sha256"] = sha256.encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    shards.write_bytes_atomic(fs, path, buf.getvalue())


def write_index(table_dir: str, shard_infos: Iterable[dict[str, Any]], whole_table: bool | None = None,
                written: dict[str, pa.Table] | None = None) -> int:
    """Write the index file of each listed shard ({file, sha256}) that has none; returns how many.

    `written`: index rows of shards this process has just written (`ShardWriter.index_rows`),
    used instead of reading the shard's metadata columns back.

    `whole_table`: the shards are the table's (one listing of the index folder), not one unit's
    (their names only: a listing would cost every unit O(all shards)); None: by their number."""
    fs, d = shards.resolve(table_dir)
    idx_dir = posixpath.join(d, INDEX_DIR)
    shard_infos = list(shard_infos)
    names = [index_name(s["file"], s["sha256"]) for s in shard_infos]
    if whole_table if whole_table is not None else len(names) > 16:  # the driver's pass: one listing
        have = _index_files(fs, idx_dir)
        present = [n in have for n in names]
    else:  # a unit's own shards: these names only (a listing cost every unit O(all shards))
        found = fs.get_file_info([posixpath.join(idx_dir, n) for n in names]) if names else []
        present = [i.type != pafs.FileType.NotFound for i in found]
    made = 0
    for s, name, there in zip(shard_infos, names, present):
        if there:  # content-addressed by the shard's digest: never rewritten
            continue
        t = (written or {}).get(s["file"])
        if t is None:
            with fs.open_input_file(posixpath.join(d, s["file"])) as f:
                t = build_shard_index(pq.ParquetFile(f), s["file"])
        fs.create_dir(idx_dir, recursive=True)
        _write_index_file(fs, posixpath.join(idx_dir, name), t, s["sha256"])
        made += 1
    return made


def shard_index(table_dir: str, s: dict[str, Any], have: set[str] | None = None,
                write: bool = True) -> tuple[pa.Table, bool]:
    """(index rows of one listed shard, whether they were built from the shard): its index file when
    that holds the shard's rows, else built from the shard's metadata columns (and, with `write`,
    saved, so the next reader finds it). `have`: the index folder's files, when already listed."""
    fs, d = shards.resolve(table_dir)
    idx_dir = posixpath.join(d, INDEX_DIR)
    name = index_name(s["file"], s["sha256"])
    path = posixpath.join(idx_dir, name)
    if name in have if have is not None else shards.exists(fs, path):
        t = _read_index(fs, path)
        if t.num_rows == s["rows"]:
            return t, False
    with fs.open_input_file(posixpath.join(d, s["file"])) as f:
        t = build_shard_index(pq.ParquetFile(f), s["file"])
    if write:
        fs.create_dir(idx_dir, recursive=True)
        _write_index_file(fs, path, t, s["sha256"])
    return t, True
