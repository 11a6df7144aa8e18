"""The "kept" view of an images table: each image_id once.

No stage rewrites a committed shard. When two units both hold a copy of one image, the
stage's last waves (`acedata.copies`, units named `cross-unit-...`) list the copies that lose
(ingest: every copy but the one with the smallest source order key; synthesize: every copy
but the one drawn from the smallest photo id) in the sibling `duplicates` table, by place:
the unit that stored the copy, the shard's part number and the row in it. Inside one unit,
duplicates never reach the images table at all (the table lists them with no place).

Readers look the listing up one shard at a time (`Kept`): the rows of the storing unit U are
all in the listing's unit `cross-unit-nN-i<bucket of U>`, sorted by place, so a reader reads
one small part of the listing, never all of it: memory O(rows listed for that unit).
Listings written before places were recorded (no `-nN-iI` units) name rows by
(`source_uri`, `image_id`) and are loaded whole, as `dropped_uris` does.

Every consumer of an images table (embed, synthesize, instruct, assemble, lookups, stats,
export) reads it through these helpers. Tables without a `duplicates` sibling (a user's own
table) are read whole.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acedata import shards, shuffle

DUPLICATES = "duplicates"
# Prefix of the duplicates table's units that list stored copies (the rest list inputs that
# never reached the images table: duplicates met inside one unit).
CROSS_UNIT = "cross-unit"
# `acedata.copies.index_unit`: the listing's bucket count and the bucket of storing units it holds
PLACED = re.compile(rf"^{CROSS_UNIT}-n(?P<n>\d+)-i(?P<i>\d+)$")


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
    """Keys (`row_key`) of every row the duplicates listings of these images tables name, loaded
    whole (one string per listed row). A key may also name the kept copy (the same file read
    twice): readers of one shard use `Kept`, which skips by place."""
    out: set[str] = set()
    for t in tables:
        if t.endswith(".parquet"):
            continue
        dup = duplicates_of(t)
        if shards.read_manifest(dup) is not None:
            out |= _listed_keys(dup)
    return out


def _listed_keys(dup: str) -> set[str]:
    out: set[str] = set()
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


class Kept:
    """Which rows of images-table shards readers skip, looked up one shard at a time.

    `tables`: the images tables read (single Parquet files among them have no listing).
    Holds each listing's shard names (from its manifest) and the last shard's rows."""

    def __init__(self, tables: Iterable[str] = ()) -> None:
        self._files = {t for t in tables if t.endswith(".parquet")}
        self._listings: dict[str, tuple[int, dict[int, list[str]]] | set[str] | None] = {}
        self._last: tuple[str, np.ndarray] | None = None

    def _listing(self, shard: str) -> tuple[int, dict[int, list[str]]] | set[str] | None:
        """(bucket count, bucket -> listing shards) of a by-place listing; a set of `row_key`s of
        an older one; None without a listing."""
        if shard in self._files:
            return None
        dup = duplicates_of(posixpath.dirname(shard))
        if dup not in self._listings:
            self._listings[dup] = _read_listing(dup)
        return self._listings[dup]

    def by_key(self, shard: str) -> bool:
        """Whether the shard's listing names rows by (source_uri, image_id): those columns are needed."""
        return isinstance(self._listing(shard), set)

    def skipped(self, shard: str) -> np.ndarray:
        """Sorted row numbers of `shard` that readers skip (by-place listings)."""
        if self._last is not None and self._last[0] == shard:
            return self._last[1]
        listing = self._listing(shard)
        place = shards.shard_place(shard)
        rows = np.zeros(0, np.int64)
        if isinstance(listing, tuple) and place is not None:
            rows = _listed_rows(listing, *place)
        self._last = (shard, rows)
        return rows

    def filter(self, shard: str, table: pa.Table, first_row: int) -> pa.Table:
        """`table` (rows `first_row`.. of `shard`) without the rows readers skip."""
        listing = self._listing(shard)
        if listing is None or table.num_rows == 0:
            return table
        if isinstance(listing, set):
            return filter_kept(table, listing)
        skip = self.skipped(shard)
        if not len(skip):
            return table
        keep = ~np.isin(np.arange(first_row, first_row + table.num_rows), skip)
        return table if keep.all() else table.filter(pa.array(keep))


def _read_listing(dup: str) -> tuple[int, dict[int, list[str]]] | set[str] | None:
    index = listing_index(dup)
    return _listed_keys(dup) if index == "by_key" else index


def listing_index(dup: str) -> tuple[int, dict[int, list[str]]] | str | None:
    """From a duplicates table's manifest alone: (bucket count, bucket -> shard URIs) of a by-place
    listing, "by_key" for an older one (rows named by source_uri and image_id), None for none."""
    manifest = shards.read_manifest(dup)
    if manifest is None:
        return None
    n, parts = 0, {}
    for s in manifest["shards"]:
        unit = shards.shard_unit(s["file"]) or ""
        if not unit.startswith(CROSS_UNIT):
            continue  # inputs never stored: nothing to skip
        m = PLACED.match(unit)
        if m is None:
            return "by_key"
        n = int(m.group("n"))
        parts.setdefault(int(m.group("i")), []).append(posixpath.join(dup.rstrip("/"), s["file"]))
    return n, parts


def listed_by_key(table: str) -> bool:
    """Whether an images table's listing names rows by (source_uri, image_id) (an older listing)."""
    return not table.endswith(".parquet") and listing_index(duplicates_of(table)) == "by_key"


def _listed_rows(listing: tuple[int, dict[int, list[str]]], unit: str, part: int) -> np.ndarray:
    """Rows of shard `part` of `unit` in a by-place listing: one bucket's shards, and of those only
    the row groups whose `unit` range holds it (the rows are sorted by place)."""
    n, parts = listing
    if not parts:
        return np.zeros(0, np.int64)
    out = []
    for f in parts.get(int(shuffle.bucket_of([unit], n)[0]), []):
        pf = shards.open_parquet(f)
        col = pf.schema_arrow.get_field_index("unit")
        for g in range(pf.metadata.num_row_groups):
            st = pf.metadata.row_group(g).column(col).statistics
            if st is not None and st.has_min_max and not st.min <= unit <= st.max:
                continue
            t = pf.read_row_group(g, columns=["unit", "part", "row"])
            mine = pc.and_(pc.equal(t.column("unit"), unit), pc.equal(t.column("part"), part))
            out.append(t.column("row").filter(mine).to_numpy())
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def iter_kept(tables: list[str], columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.Table]:
    """Batches of the kept rows of every table, in table and shard order (listings looked up per shard)."""
    kept = Kept(tables)
    for t in tables:
        for shard in shards.list_shards(t):
            want = columns
            if columns is not None and kept.by_key(shard):
                want = list(dict.fromkeys([*columns, "source_uri", "image_id"]))
            row = 0
            for batch in shards.open_parquet(shard).iter_batches(batch_size=batch_size, columns=want):
                got = kept.filter(shard, pa.Table.from_batches([batch]), row)
                row += batch.num_rows
                extra = [c for c in got.column_names if columns is not None and c not in columns]
                yield got.drop_columns(extra) if extra else got


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
