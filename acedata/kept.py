"""The "kept" view of an images table: each image_id once.

No stage rewrites a committed shard. When two units both hold a copy of one image, the
stage's last waves (`acedata.copies`, units named `cross-unit-...`) list the copies that lose
(ingest: every copy but the one with the smallest source order key; synthesize: every copy
but the one drawn from the smallest photo id) in the sibling `duplicates` table, and readers
skip rows whose (`source_uri`, `image_id`) is listed there.
A row is named by both because one source can yield several images (a synthesizer's mask
and its condition share the source's uri). Inside one unit, duplicates never reach the
images table at all, so the same rule covers both.

Every consumer of an images table (embed, synthesize, instruct, assemble, lookups, stats,
export) reads it through these helpers. Tables without a `duplicates` sibling (a user's own
table) are read whole. Memory: one string per listed duplicate.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from acedata import shards

DUPLICATES = "duplicates"
# Prefix of the duplicates table's units that list stored copies (the rest list inputs that
# never reached the images table: duplicates met inside one unit).
CROSS_UNIT = "cross-unit"


def duplicates_of(table: str) -> str:
    """The sibling `duplicates` table of an images table folder."""
    return posixpath.join(posixpath.dirname(table.rstrip("/")), DUPLICATES)


def row_key(source_uri: str | None, image_id: str | None) -> str:
    """How a listed duplicate names one row of an images table."""
    return f"{source_uri}\x00{image_id}"


def row_keys(uris: pa.Array | pa.ChunkedArray, ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """`row_key` of each (source_uri, image_id), vectorised."""
    return pc.binary_join_element_wise(pc.fill_null(uris, "None"), pc.fill_null(ids, "None"), "\x00")


def dropped_uris(tables: Iterable[str]) -> set[str]:
    """Keys (`row_key`) of the rows that readers of these images tables must skip."""
    out: set[str] = set()
    for t in tables:
        if t.endswith(".parquet"):
            continue
        dup = duplicates_of(t)
        if shards.read_manifest(dup) is None:
            continue
        for batch in shards.iter_batches(dup, columns=["source_uri", "image_id"], batch_size=65536):
            out.update(row_keys(batch.column(0), batch.column(1)).to_pylist())
    return out


def keep_mask(uris: pa.Array | pa.ChunkedArray, ids: pa.Array | pa.ChunkedArray,
              dropped: set[str]) -> pa.Array | None:
    """A boolean mask of rows to keep, or None when every row is kept."""
    if not dropped:
        return None
    mask = pc.invert(pc.is_in(row_keys(uris, ids), value_set=pa.array(sorted(dropped), pa.string())))
    return mask if not pc.all(mask).as_py() else None


def filter_kept(table: pa.Table, dropped: set[str]) -> pa.Table:
    """`table` (with `source_uri` and `image_id` columns) without the dropped rows."""
    mask = keep_mask(table.column("source_uri"), table.column("image_id"), dropped) if table.num_rows else None
    return table if mask is None else table.filter(mask)


def iter_kept(tables: list[str], columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.Table]:
    """Batches of the kept rows of every table, in table and shard order."""
    dropped = dropped_uris(tables)
    want = None if columns is None else list(dict.fromkeys([*columns, "source_uri", "image_id"]))
    for t in tables:
        for batch in shards.iter_batches(t, columns=want, batch_size=batch_size):
            kept = filter_kept(pa.Table.from_batches([batch]), dropped)
            extra = [c for c in ("source_uri", "image_id") if columns is not None and c not in columns]
            yield kept.drop_columns(extra) if extra else kept


def read_kept(tables: str | list[str], columns: list[str] | None = None) -> pa.Table:
    """The kept rows of one or several images tables as one table."""
    tables = [tables] if isinstance(tables, str) else tables
    parts = list(iter_kept(tables, columns))
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")


def cross_unit_rows(images_table: str) -> int:
    """How many stored rows of an images table its `duplicates` sibling lists (so the table holds
    `count_rows - cross_unit_rows` distinct kept rows). Reads unit fragments, never rows."""
    if images_table.endswith(".parquet"):
        return 0
    dup = duplicates_of(images_table)
    return sum(s["rows"] for u in sorted(shards.committed_units(dup)) if u.startswith(CROSS_UNIT)
               for s in shards.unit_fragment(dup, u)["shards"])
