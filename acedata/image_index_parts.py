"""One table's image index as the reader sees it: where each id's rows are, found without loading it.

`PartIndex`: the partitioned index on disk (`.index/_parts-<digest>/`). An id's partition is
`shuffle.bucket_of(id, P)`; the partition is sorted by image_id, so its footer's row-group
min/max statistics say which row groups can hold the id (`np.searchsorted`), and only those are
read (an LRU keeps the last 32 per table). Memory: the row-group bounds of the partitions touched (two
strings per 8192 rows) and the LRU, never the table.

`MemIndex`: the fallback for a table with no index for its current content (an older run, a
table changed since, a plain Parquet folder): the same rows built when the reader opens, from
per-shard index files or the shards' `image_id` columns, held in memory (O(rows), as before).

Both return every row of the asked ids (`PART_SCHEMA`), each id's rows together and in the
order readers rely on; `first_kept` picks the row a reader serves.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from acedata import kept, shards, shuffle
from acedata.image_index_files import (
    DUP_SCHEMA,
    INDEX_DIR,
    MAP_SCHEMA,
    PART_SCHEMA,
    PARTS_META,
    PARTS_VERSION,
    _index_files,
    build_shard_index,
    duplicate_shards,
    finish_partition,
    part_file,
    parts_name,
    read_duplicates,
    to_part,
)
from acedata.image_index_write import shard_index

_COLS = PART_SCHEMA.names


def first_kept(rows: pa.Table, skip: pa.Array | None) -> pa.Table:
    """Per id, the first row (by shard, row group, row) not skipped: not flagged `dropped` by the
    table's duplicates listing, or, given `skip` (`kept.row_key`s), not listed there."""
    if not rows.num_rows:
        return rows
    if skip is None:
        keep = ~rows.column("dropped").to_numpy(zero_copy_only=False)
    else:
        listed = pc.is_in(kept.row_keys(rows.column("source_uri"), rows.column("image_id")), value_set=skip)
        keep = ~listed.to_numpy(zero_copy_only=False)
    pos = np.flatnonzero(keep)
    ids = rows.column("image_id").to_numpy(zero_copy_only=False)[pos]
    first = np.ones(len(pos), bool)
    first[1:] = ids[1:] != ids[:-1]  # an id's rows are adjacent and in order: keep the first
    pos = pos[first]
    return rows if len(pos) == rows.num_rows else rows.take(pa.array(pos))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions start, start+1, ... (length of them) of every range, in order."""
    return np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))


class PartIndex:
    """A table's partitioned index on disk, read lazily."""

    scanned = 0  # shards indexed from their image_id column: none

    def __init__(self, uris: list[str], folder: str, meta: dict[str, Any], cache_groups: int = 32) -> None:
        self.uris = uris
        self.fs, self.dir = shards.resolve(folder)
        self.partitions = int(meta["partitions"])
        self.part_rows = [int(n) for n in meta["part_rows"]]
        self._bounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # partition -> row groups' (min, max)
        self._footers: OrderedDict[int, pq.FileMetaData] = OrderedDict()
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._max_groups = cache_groups
        self._lock = threading.Lock()
        self.groups_read = 0  # index row groups read from disk
        self.rows_read = 0  # index rows they held

    def _path(self, k: int) -> str:
        return posixpath.join(self.dir, part_file(k))

    def _footer(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            hit = self._bounds.get(k)
        if hit is not None:
            return hit
        with self.fs.open_input_file(self._path(k)) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            stats = [md.row_group(g).column(0).statistics for g in range(md.num_row_groups)]
            if all(s is not None and s.has_min_max for s in stats):
                mins, maxs = [s.min for s in stats], [s.max for s in stats]
            else:  # no statistics (ids too long for them): each group's first and last id
                ids = pf.read(columns=["image_id"], use_threads=False).column(0)
                ends = np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])
                mins = [ids[int(e - md.row_group(g).num_rows)].as_py() for g, e in enumerate(ends)]
                maxs = [ids[int(e) - 1].as_py() for e in ends]
        bounds = (np.array(mins, dtype=object), np.array(maxs, dtype=object))
        with self._lock:
            self._bounds[k] = bounds
            self._footers[k] = md
            while len(self._footers) > 16:
                self._footers.popitem(last=False)
        return bounds

    def find(self, ids: Sequence[str]) -> pa.Table:
        """Every index row of `ids` (unknown ids have none), reading only the row groups that can hold them."""
        if not ids:
            return PART_SCHEMA.empty_table()
        x = np.array(list(ids), dtype=object)
        part = shuffle.bucket_of(x, self.partitions)
        need: dict[tuple[int, int], set[str]] = {}  # (partition, row group) -> the ids it may hold
        for k in np.unique(part).tolist():
            if not self.part_rows[k]:
                continue
            mins, maxs = self._footer(k)
            want = x[part == k]
            lo = np.searchsorted(maxs, want, "left")  # first group whose max >= id
            hi = np.searchsorted(mins, want, "right")  # past the last group whose min <= id
            for i, a, z in zip(want.tolist(), lo.tolist(), hi.tolist()):
                for g in range(a, z):
                    need.setdefault((k, g), set()).add(i)
        keys = sorted(need)  # partition, then group order: an id spanning two groups stays in order
        pieces = []
        step = max(1, self._max_groups)  # a batch touching many groups holds at most an LRU's worth at once
        for lo in range(0, len(keys), step):
            chunk = keys[lo: lo + step]
            for key, t in zip(chunk, self._groups(chunk)):
                # the group is sorted, so its matching rows come out in order (no Python strings made per row)
                hit = pc.is_in(t.column("image_id"), value_set=pa.array(sorted(need[key]), pa.string()))
                pos = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
                if len(pos):
                    pieces.append(t.take(pa.array(pos)))
        return pa.concat_tables(pieces) if pieces else PART_SCHEMA.empty_table()

    def _groups(self, need: list[tuple[int, int]]) -> list[pa.Table]:
        """The row groups: from the LRU, the rest read (one read per partition)."""
        out: dict[tuple[int, int], pa.Table] = {}
        missing: dict[int, list[int]] = {}
        with self._lock:
            for key in need:
                hit = self._cache.get(key)
                if hit is None:
                    missing.setdefault(key[0], []).append(key[1])
                else:
                    self._cache.move_to_end(key)
                    out[key] = hit
        for k, groups in missing.items():
            with self._lock:
                md = self._footers.get(k)
            with self.fs.open_input_file(self._path(k)) as f:
                pf = pq.ParquetFile(f, metadata=md)
                t = pf.read_row_groups(groups, columns=_COLS, use_threads=False)
                md = pf.metadata
            start = 0
            for g in groups:
                n = md.row_group(g).num_rows
                out[(k, g)] = t.slice(start, n).combine_chunks()
                start += n
            with self._lock:
                self.groups_read += len(groups)
                self.rows_read += t.num_rows
                for g in groups:
                    self._cache[(k, g)] = out[(k, g)]
                while len(self._cache) > self._max_groups:
                    self._cache.popitem(last=False)
        return [out[key] for key in need]

    def stream(self) -> Iterator[pa.Table]:
        """Every partition, one at a time (a whole partition in memory: about 1M rows)."""
        for k in range(self.partitions):
            if self.part_rows[k]:
                with self.fs.open_input_file(self._path(k)) as f:
                    yield pq.ParquetFile(f).read(columns=_COLS)


class MemIndex:
    """A table's index rows built when the reader opens, in memory (no index for its current content)."""

    groups_read = rows_read = 0

    def __init__(self, table: str, uris: list[str], manifest: dict[str, Any] | None, with_dropped: bool) -> None:
        self.uris = uris
        self.scanned = 0  # shards indexed from their image_id column (no usable index file)
        parts = []
        if manifest is not None:
            fs, d = shards.resolve(table)
            have = _index_files(fs, posixpath.join(d, INDEX_DIR))
            for k, s in enumerate(manifest["shards"]):
                t, built = shard_index(table, s, have, write=False)
                self.scanned += built
                parts.append(to_part(t, k))
        else:  # no manifest (older or foreign tables): index from the image_id column
            for k, uri in enumerate(uris):
                parts.append(to_part(build_shard_index(shards.open_parquet(uri), posixpath.basename(uri)), k))
                self.scanned += 1
        rows = pa.concat_tables(parts) if parts else MAP_SCHEMA.empty_table()
        dup = read_duplicates(table) if with_dropped and duplicate_shards(table) else DUP_SCHEMA.empty_table()
        self.table = finish_partition(rows, dup)
        self._ids = _search_keys(self.table.column("image_id"))

    def find(self, ids: Sequence[str]) -> pa.Table:
        ids = list(ids)
        nul = None
        if self._ids.dtype == object:
            x = np.array(ids, dtype=object)
        else:  # bytes keys: a query holding NUL is no stored id (such tables keep str keys)
            nul = np.array(["\0" in i for i in ids], bool)
            x = np.array([b"" if z else i.encode() for i, z in zip(ids, nul)], dtype="S")
        lo = np.searchsorted(self._ids, x, "left")
        hi = np.searchsorted(self._ids, x, "right")
        if nul is not None and nul.any():
            hi = np.where(nul, lo, hi)
        return self.table.take(pa.array(_ranges(lo, hi - lo)))

    def stream(self) -> Iterator[pa.Table]:
        yield self.table


MAX_KEY_BYTES = 256


def _search_keys(ids: pa.ChunkedArray) -> np.ndarray:
    """Sorted ids to binary-search: fixed-width UTF-8 bytes (compared in C; Python str objects made
    a unit's 15,000 lookups grow from 20 ms at 10^5 rows to 90 ms at 10^6, cache misses on every
    compare). Byte order is the table's sort order. Ids holding NUL (numpy drops trailing NULs) or
    longer than MAX_KEY_BYTES stay Python strings."""
    n = len(ids)
    width = pc.max(pc.binary_length(ids)).as_py() if n else 0
    if not n or width > MAX_KEY_BYTES or pc.any(pc.match_substring(ids, "\0")).as_py():
        return ids.to_numpy(zero_copy_only=False)
    return np.array(ids.cast(pa.binary()).to_pylist(), dtype=f"S{max(1, width)}")


def open_index(table: str, with_dropped: bool = True, cache_groups: int = 32) -> PartIndex | MemIndex:
    """The table's partitioned index when one exists for its current content (shards and duplicates
    listing, checked by the folder's digest name and the row count), else one built in memory."""
    uris = shards.list_shards(table)
    manifest = shards.read_manifest(table)
    if manifest is not None:
        folder = posixpath.join(table, INDEX_DIR, parts_name(manifest["shards"], duplicate_shards(table)))
        fs, d = shards.resolve(folder)
        meta_path = posixpath.join(d, PARTS_META)
        if shards.exists(fs, meta_path):
            meta = shards.read_json(fs, meta_path)
            if meta.get("version") == PARTS_VERSION and meta["rows"] == manifest["rows"]:
                return PartIndex(uris, folder, meta, cache_groups)
    return MemIndex(table, uris, manifest, with_dropped)
