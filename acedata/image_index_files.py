"""The image index's files: where they live, how they are named, and one shard's index rows.

Each shard of an images table gets `<table>/.index/<shard stem>.<sha256[:16]>.parquet` (schema
`image_index`: image_id -> row group and row, plus width/height/kind), built from the shard's
footer and metadata columns only. The table's index is `.index/_parts-<digest>/`: P partition
files `p00000.parquet`... (schema `PART_SCHEMA`), rows hashed to a partition by image_id and
sorted by it, and `_index.json` (P, rows per partition) written last. The digest covers the
shard list and the sibling `duplicates` table's shard list, so any change renames it. See
`acedata.image_index`.

A row is `dropped` as `acedata.kept.Kept` skips it: a listing by place (`kept.listing_index`)
names a stored copy by (unit, part, row in the shard), which the index row's place is compared
with (from its shard's name and its row group offset + row); an older listing names rows by
(source_uri, image_id), which the kept copy may share (the same file read twice).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import kept, shards, shuffle
from acedata.errors import UserError
from acedata.schemas import IMAGE, IMAGE_INDEX, conform

INDEX_DIR = ".index"  # hidden: `datasets`, pyarrow and list_shards skip it when reading the table
TABLE_PREFIX = "_table-"  # the merged index file of earlier versions (removed by `ensure_index`)
PARTS_PREFIX = "_parts-"  # the partitioned index of a whole table: `.index/_parts-<digest>/`
BUILD_PREFIX = "_build-"  # scratch and done-markers of a distributed build: `.index/_build-<digest>/`
PARTS_META = "_index.json"  # written last: the partitioned index exists exactly when this does
PARTS_VERSION = 2  # part of the digest: bump when the partition files' layout or meaning changes (2: by place)
ROWS_PER_PARTITION = 1 << 20  # about this many index rows per partition (from row counts only)
GROUP_ROWS = 8192  # rows per row group of a partition file: a lookup reads one or two of them

# A partition file's rows: one per row of the images table, sorted by (image_id, shard, row_group,
# row), so the first kept row of an id is the one readers serve (first shard, then row, wins).
PART_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), False),
    pa.field("shard", pa.int32(), False),  # position in the manifest's shard list
    pa.field("row_group", pa.int32(), False),
    pa.field("row", pa.int32(), False),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("kind", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("dropped", pa.bool_(), False),  # listed in the sibling `duplicates` table: readers skip it
])
# Rows before the duplicates join: a partition row without `dropped`, plus its place (the shard's unit
# and part, null for shards not named by ShardWriter; the row in the shard) for the listing's match.
PLACE_FIELDS = [pa.field("unit", pa.string()), pa.field("part", pa.int32()), pa.field("shard_row", pa.int64())]
MAP_SCHEMA = pa.schema([*PART_SCHEMA.remove(PART_SCHEMA.get_field_index("dropped")), *PLACE_FIELDS])
# A listing's rows as the join reads them: `unit` null names the row by (source_uri, image_id).
DUP_SCHEMA = pa.schema([pa.field("source_uri", pa.string()), pa.field("image_id", pa.string()),
                        pa.field("unit", pa.string()), pa.field("part", pa.int32()), pa.field("row", pa.int64())])
SORT_KEYS = [("image_id", "ascending"), ("shard", "ascending"), ("row_group", "ascending"), ("row", "ascending")]
INDEX_COLUMNS = _META_COLUMNS = ("image_id", "width", "height", "kind", "source_uri")
_KEY_COLUMNS = ("source_uri", "image_id")


def is_image_table(schema: pa.Schema) -> bool:
    """Tables that hold image bytes keyed by image_id get an index."""
    return "image_id" in schema.names and "image" in schema.names and schema.field("image").type == IMAGE


def index_name(shard_file: str, sha256: str) -> str:
    stem = shard_file.removesuffix(".parquet")
    return f"{stem}.{sha256[:16]}.parquet"


def parts_name(shard_infos: Iterable[dict[str, Any]], duplicate_infos: Iterable[dict[str, Any]]) -> str:
    """The folder of a table's partitioned index: a digest of its shard list and of its duplicates
    table's shard list (the `dropped` flags come from it), so a change to either renames it."""
    lines = [f"v{PARTS_VERSION}", *(f"{s['file']}:{s['sha256']}" for s in shard_infos), "--duplicates--",
             *(f"{s['file']}:{s['sha256']}" for s in duplicate_infos)]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return f"{PARTS_PREFIX}{digest[:16]}"


def part_file(k: int) -> str:
    return f"p{k:05d}.parquet"


def partition_count(rows: int) -> int:
    """P for a table of `rows` rows (duplicates included): content row counts only, never workers."""
    return shuffle.bucket_count(rows, ROWS_PER_PARTITION)


def duplicates_dir(table: str) -> str | None:
    """The sibling `duplicates` table of an images table folder (None for a single Parquet file)."""
    return None if table.endswith(".parquet") else kept.duplicates_of(table)


def duplicate_shards(table: str) -> list[dict[str, Any]]:
    """The shard list of the table's `duplicates` sibling ([] when it has none)."""
    dup = duplicates_dir(table)
    manifest = None if dup is None else shards.read_manifest(dup)
    return [] if manifest is None else manifest["shards"]


def read_duplicates(table: str, files: Iterable[str] | None = None) -> pa.Table:
    """The listed duplicates (`DUP_SCHEMA`) of the given shard files of the listing, or all of them.
    A listing by place gives only its placed rows (the rest name inputs never stored: nothing to
    drop); an older one gives every row with a null place (matched by source_uri and image_id)."""
    dup = duplicates_dir(table)
    if files is None:
        files = [s["file"] for s in duplicate_shards(table)]
    by_place = dup is not None and isinstance(kept.listing_index(dup), tuple)
    parts = []
    for f in files:
        if by_place and not (shards.shard_unit(f) or "").startswith(kept.CROSS_UNIT):
            continue
        pf = shards.open_parquet(posixpath.join(dup, f))
        cols = [c for c in DUP_SCHEMA.names if c in pf.schema_arrow.names and (by_place or c in _KEY_COLUMNS)]
        t = pf.read(columns=cols)
        for c in DUP_SCHEMA.names:
            if c not in cols:  # an older listing: no place
                t = t.append_column(c, pa.nulls(t.num_rows, DUP_SCHEMA.field(c).type))
        t = t.select(DUP_SCHEMA.names).cast(DUP_SCHEMA)
        parts.append(t.filter(pc.is_valid(t.column("unit"))) if by_place else t)
    return pa.concat_tables(parts) if parts else DUP_SCHEMA.empty_table()


def _places(units: Any, parts: Any, rows: Any) -> Any:
    """One string per (unit, part, row in the shard): null where the unit is."""
    return pc.binary_join_element_wise(units, pc.cast(parts, pa.string()), pc.cast(rows, pa.string()), "\x00")


def to_part(index: pa.Table, k: int) -> pa.Table:
    """A shard's index rows (schema `image_index`: every row of the shard) as partition rows of
    shard `k` with their place (`MAP_SCHEMA`)."""
    n = index.num_rows
    groups = index.column("row_group").to_numpy().astype(np.int64)
    starts = np.zeros(0, np.int64)
    if n:
        sizes = np.bincount(groups)
        starts = np.cumsum(sizes) - sizes  # row group g's first row in the shard
    place = shards.shard_place(index.column("shard")[0].as_py()) if n else None
    cols = [index.column("image_id"), pa.array(np.full(n, k, np.int32))]
    cols += [index.column(c) for c in MAP_SCHEMA.names[2:-3]]
    cols += [pa.array([None if place is None else place[0]] * n, pa.string()),
             pa.array([None if place is None else place[1]] * n, pa.int32()),
             pa.array(starts[groups] + index.column("row").to_numpy().astype(np.int64) if n else [], pa.int64())]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, MAP_SCHEMA)], schema=MAP_SCHEMA)


def finish_partition(rows: pa.Table, duplicates: pa.Table) -> pa.Table:
    """Index rows (`MAP_SCHEMA`) with their `dropped` flag (`DUP_SCHEMA` rows: by place where they
    have one, else by source_uri and image_id), in the order readers rely on. The order is total
    (shard, row_group, row name one row), so any split of the same rows gives the same table."""
    rows = rows.select(MAP_SCHEMA.names).cast(MAP_SCHEMA)
    dropped = pa.array(np.zeros(rows.num_rows, bool))
    if rows.num_rows and duplicates.num_rows:
        duplicates = duplicates.select(DUP_SCHEMA.names).cast(DUP_SCHEMA)
        placed = pc.is_valid(duplicates.column("unit"))
        at = duplicates.filter(placed)
        if at.num_rows:
            listed = pc.unique(_places(at.column("unit"), at.column("part"), at.column("row")))
            hit = pc.is_in(_places(rows.column("unit"), rows.column("part"), rows.column("shard_row")), value_set=listed)
            dropped = pc.or_(dropped, pc.fill_null(hit, False))
        by_key = duplicates.filter(pc.invert(placed))
        if by_key.num_rows:
            listed = pc.unique(kept.row_keys(by_key.column("source_uri"), by_key.column("image_id")))
            dropped = pc.or_(dropped, pc.is_in(kept.row_keys(rows.column("source_uri"), rows.column("image_id")),
                                               value_set=listed))
    t = rows.select(PART_SCHEMA.names[:-1]).append_column(PART_SCHEMA.field("dropped"), dropped).cast(PART_SCHEMA)
    return t.sort_by(SORT_KEYS).combine_chunks() if t.num_rows else PART_SCHEMA.empty_table()


def write_partition(fs: pafs.FileSystem, path: str, t: pa.Table) -> None:
    """One partition file, row groups of `GROUP_ROWS` with min/max statistics (the reader's directory)."""
    buf = io.BytesIO()
    pq.write_table(t, buf, row_group_size=GROUP_ROWS, compression="zstd", write_statistics=True)
    shards.write_bytes_atomic(fs, path, buf.getvalue())


def build_shard_index(pf: pq.ParquetFile, shard_file: str) -> pa.Table:
    """The index rows of one shard, from its footer and metadata columns (no image bytes read)."""
    names = pf.schema_arrow.names
    if "image_id" not in names:
        raise UserError(f"{shard_file}: no image_id column, so it is not an images table")
    cols = [c for c in _META_COLUMNS if c in names]
    return index_rows((pf.read_row_group(g, columns=cols) for g in range(pf.metadata.num_row_groups)), shard_file)


def index_rows(groups: Iterable[pa.Table], shard_file: str) -> pa.Table:
    """The index rows of one shard from its row groups' metadata columns, in order: read back
    (`build_shard_index`) or as the writer wrote them (`ShardWriter(index_columns=...)`)."""
    parts = []
    for g, t in enumerate(groups):
        n = t.num_rows
        part = {c: t.column(c) for c in _META_COLUMNS if c in t.column_names}
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
