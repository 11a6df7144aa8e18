"""Writing the image index: each committed shard's index file (by the unit that wrote the shard),
then, after a stage, the gaps filled and one merged file per table (`ensure_index`)."""

from __future__ import annotations

import io
import posixpath
import uuid
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
    table_index_name,
)
from acedata.schemas import IMAGE_INDEX, with_hf_metadata


def _write_index_file(fs: pafs.FileSystem, path: str, table: pa.Table, sha256: str) -> None:
    meta = dict(with_hf_metadata(IMAGE_INDEX).metadata)
    meta[b"acedata.shard_sha256"] = sha256.encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    shards.write_bytes_atomic(fs, path, buf.getvalue())


def write_index(table_dir: str, shard_infos: Iterable[dict[str, Any]]) -> int:
    """Write the index file of each listed shard ({file, sha256}) that has none; returns how many."""
    fs, d = shards.resolve(table_dir)
    idx_dir = posixpath.join(d, INDEX_DIR)
    have = _index_files(fs, idx_dir)
    made = 0
    for s in shard_infos:
        name = index_name(s["file"], s["sha256"])
        if name in have:  # content-addressed by the shard's digest: never rewritten
            continue
        with fs.open_input_file(posixpath.join(d, s["file"])) as f:
            t = build_shard_index(pq.ParquetFile(f), s["file"])
        fs.create_dir(idx_dir, recursive=True)
        _write_index_file(fs, posixpath.join(idx_dir, name), t, s["sha256"])
        made += 1
    return made


def ensure_index(table_dir: str) -> dict[str, int]:
    """Index every shard the manifest lists, merge them into the table's index file (one file to
    open), and drop index files of shards no longer listed. Runs on the driver after a stage."""
    manifest = shards.read_manifest(table_dir)
    if manifest is None:
        return {"written": 0, "removed": 0}
    written = write_index(table_dir, manifest["shards"])
    fs, d = shards.resolve(table_dir)
    idx_dir = posixpath.join(d, INDEX_DIR)
    keep = {index_name(s["file"], s["sha256"]) for s in manifest["shards"]}
    merged = table_index_name(manifest["shards"])
    if manifest["shards"] and merged not in _index_files(fs, idx_dir):
        _merge(fs, idx_dir, [index_name(s["file"], s["sha256"]) for s in manifest["shards"]], merged)
        written += 1
    keep.add(merged)
    removed = 0
    for name in _index_files(fs, idx_dir) - keep:  # a superseded shard's index (dedupe, retried unit)
        fs.delete_file(posixpath.join(idx_dir, name))
        removed += 1
    return {"written": written, "removed": removed}


def _merge(fs: pafs.FileSystem, idx_dir: str, names: list[str], merged: str, group_rows: int = 1 << 17) -> None:
    """Concatenate per-shard index files in manifest order into row groups of `group_rows`
    (few, large groups read fast), holding at most one group in memory."""
    tmp = posixpath.join(idx_dir, f".tmp-{uuid.uuid4().hex}.parquet")
    schema = with_hf_metadata(IMAGE_INDEX)
    pending: list[pa.Table] = []
    rows = 0
    with fs.open_output_stream(tmp) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as w:
        for name in names:
            pending.append(_read_index(fs, posixpath.join(idx_dir, name)).cast(schema))
            rows += pending[-1].num_rows
            if rows >= group_rows:
                w.write_table(pa.concat_tables(pending), row_group_size=rows)
                pending, rows = [], 0
        if pending:
            w.write_table(pa.concat_tables(pending), row_group_size=max(rows, 1))
    fs.move(tmp, posixpath.join(idx_dir, merged))
