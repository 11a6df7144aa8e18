"""The "kept" view of an images table: each image_id once.

Ingest never rewrites a committed shard. When two units both hold a copy of one image,
its `finish` lists the copies that lose (every copy but the one with the smallest source
order key) in the sibling `duplicates` table, and readers skip rows whose `source_uri`
is listed there (`source_uri` is unique per input row). Inside one unit, duplicates never
reach the images table at all, so the same rule covers both.

Every consumer of an images table (embed, synthesize, instruct, assemble, lookups, stats,
export) reads it through these helpers. Tables without a `duplicates` sibling (synthesize's
images, a user's own table) are read whole. Memory: one string per listed duplicate.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from acedata import shards

DUPLICATES = "duplicates"


def _sibling(table: str) -> str:
    return posixpath.join(posixpath.dirname(table.rstrip("/")), DUPLICATES)


def dropped_uris(tables: Iterable[str]) -> set[str]:
    """The `source_uri`s of rows that readers of these images tables must skip."""
    out: set[str] = set()
    for t in tables:
        if t.endswith(".parquet"):
            continue
        dup = _sibling(t)
        if shards.read_manifest(dup) is None:
            continue
        for batch in shards.iter_batches(dup, columns=["source_uri"], batch_size=65536):
            out.update(batch.column(0).to_pylist())
    return out


def keep_mask(uris: pa.Array | pa.ChunkedArray, dropped: set[str]) -> pa.Array | None:
    """A boolean mask of rows to keep, or None when every row is kept."""
    if not dropped:
        return None
    mask = pc.invert(pc.is_in(uris, value_set=pa.array(sorted(dropped), pa.string())))
    return mask if not pc.all(mask).as_py() else None


def filter_kept(table: pa.Table, dropped: set[str]) -> pa.Table:
    """`table` (with a `source_uri` column) without the dropped rows."""
    mask = keep_mask(table.column("source_uri"), dropped) if table.num_rows else None
    return table if mask is None else table.filter(mask)


def iter_kept(tables: list[str], columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.Table]:
    """Batches of the kept rows of every table, in table and shard order."""
    dropped = dropped_uris(tables)
    want = None if columns is None else list(dict.fromkeys([*columns, "source_uri"]))
    for t in tables:
        for batch in shards.iter_batches(t, columns=want, batch_size=batch_size):
            kept = filter_kept(pa.Table.from_batches([batch]), dropped)
            yield kept if columns is None or "source_uri" in columns else kept.drop_columns(["source_uri"])


def read_kept(tables: str | list[str], columns: list[str] | None = None) -> pa.Table:
    """The kept rows of one or several images tables as one table."""
    tables = [tables] if isinstance(tables, str) else tables
    parts = list(iter_kept(tables, columns))
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")
