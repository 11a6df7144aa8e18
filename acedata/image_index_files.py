"""The image index's files: where they live, how they are named, and one shard's index rows.

Each shard of an images table gets `<table>/.index/<shard stem>.<sha256[:16]>.parquet` (schema
`image_index`: image_id -> row group and row, plus width/height/kind), built from the shard's
footer and metadata columns only; the merged index of a whole table is
`.index/_table-<digest of the shard list>.parquet`. See `acedata.image_index`.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import shards
from acedata.errors import UserError
from acedata.schemas import IMAGE, IMAGE_INDEX, conform

INDEX_DIR = ".index"  # hidden: `datasets`, pyarrow and list_shards skip it when reading the table
TABLE_PREFIX = "_table-"  # the merged index of a whole table: `.index/_table-<digest>.parquet`
_META_COLUMNS = ("image_id", "width", "height", "kind", "source_uri")


def is_image_table(schema: pa.Schema) -> bool:
    """Tables that hold image bytes keyed by image_id get an index."""
    return "image_id" in schema.names and "image" in schema.names and schema.field("image").type == IMAGE


def index_name(shard_file: str, sha256: str) -> str:
    stem = shard_file.removesuffix(".parquet")
    return f"{stem}.{sha256[:16]}.parquet"


def table_index_name(shard_infos: Iterable[dict[str, Any]]) -> str:
    """The name of a table's merged index: a digest of its shard list, so any change renames it."""
    h = hashlib.sha256("\n".join(f"{s['file']}:{s['sha256']}" for s in shard_infos).encode())
    return f"{TABLE_PREFIX}{h.hexdigest()[:16]}.parquet"


def build_shard_index(pf: pq.ParquetFile, shard_file: str) -> pa.Table:
    """The index rows of one shard, from its footer and metadata columns (no image bytes read)."""
    names = pf.schema_arrow.names
    if "image_id" not in names:
        raise UserError(f"{shard_file}: no image_id column, so it is not an images table")
    cols = [c for c in _META_COLUMNS if c in names]
    parts = []
    for g in range(pf.metadata.num_row_groups):
        t = pf.read_row_group(g, columns=cols)
        n = t.num_rows
        part = {c: t.column(c) for c in cols}
        part["shard"] = pa.array([shard_file] * n, pa.string())
        part["row_group"] = pa.array(np.full(n, g, np.int32))
        part["row"] = pa.array(np.arange(n, dtype=np.int32))
        parts.append(conform(pa.table(part), IMAGE_INDEX))
    return pa.concat_tables(parts) if parts else IMAGE_INDEX.empty_table()


def _read_index(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read()


def _index_files(fs: pafs.FileSystem, idx_dir: str) -> set[str]:
    if not shards.exists(fs, idx_dir):
        return set()
    return {posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(idx_dir))
            if i.path.endswith(".parquet") and not posixpath.basename(i.path).startswith(".")}
