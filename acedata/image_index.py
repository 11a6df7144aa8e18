"""One image index and one reader: image bytes by `image_id`, reading only the row groups that hold them.

Index: each shard of an images table gets a small Parquet file
`<table>/.index/<shard stem>.<sha256[:16]>.parquet` (schema `image_index`): image_id -> row group
and row within the group, plus width/height/kind. It is built from the shard's footer and its
metadata columns only (never the image bytes), so its content depends only on the shard's content.
Its name carries the shard's digest: it is written once and never rewritten. A shard that is
rewritten later (duplicate removal) gets a new index file, and the reader, which matches the
digest against the table's manifest, never trusts a stale one. Units write their shards' indexes
as they commit; after a stage's `finish` the runtime fills any gap and merges them into one file
per table, `.index/_table-<digest of the shard list>.parquet` (`ensure_index`), so a reader opens
one file, not one per shard. The folder is hidden, so `datasets`/pyarrow never read it as rows.

Reader: opens the index of every table once; `rows(ids, columns)` groups the wanted ids by
(shard, row group), reads each group once with only the asked columns, and keeps a small LRU of
decoded groups. Shards without an index (older runs, plain Parquet folders) are indexed when the
reader opens, from their `image_id` column. Workers share one reader per process (`shared_reader`).

Layout and naming live in `image_index_files`, writing in `image_index_write`; both are re-exported here.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import shards
from acedata.errors import UserError
from acedata.image_index_files import (  # noqa: F401 - re-exported: the index's public names stay here
    INDEX_DIR,
    TABLE_PREFIX,
    _index_files,
    _read_index,
    build_shard_index,
    index_name,
    is_image_table,
    table_index_name,
)
from acedata.image_index_write import ensure_index, write_index  # noqa: F401 - re-exported
from acedata.kept import dropped_uris, keep_mask
from acedata.schemas import IMAGE_INDEX


class UnknownImages(UserError, KeyError):
    """Image ids that no images table of the reader holds."""

    def __init__(self, ids: list[str], where: str) -> None:
        super().__init__(f"{len(ids)} image id(s) not in {where}: {', '.join(ids[:3])}"
                         + (" ..." if len(ids) > 3 else ""))
        self.ids = ids

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def _table_index(table: str) -> tuple[list[str], pa.Table, int]:
    """(shard URIs, index rows with `shard_idx` into them, shards indexed from their image_id column)."""
    uris = shards.list_shards(table)
    manifest = shards.read_manifest(table)  # None for a single file or a folder without one
    parts: list[pa.Table] = []
    scanned = 0
    if manifest is not None:
        fs, d = shards.resolve(table)
        idx_dir = posixpath.join(d, INDEX_DIR)
        have = _index_files(fs, idx_dir)
        merged = table_index_name(manifest["shards"])
        if merged in have:  # the usual case: one file for the whole table
            t = _read_index(fs, posixpath.join(idx_dir, merged))
            if t.num_rows == manifest["rows"]:
                files = pa.array([s["file"] for s in manifest["shards"]], pa.string())
                k = pc.index_in(t.column("shard"), value_set=files).cast(pa.int32())
                return uris, t.append_column("shard_idx", k).replace_schema_metadata(None), 0
        for k, (s, uri) in enumerate(zip(manifest["shards"], uris)):
            name = index_name(s["file"], s["sha256"])
            t = _read_index(fs, posixpath.join(idx_dir, name)) if name in have else None
            if t is None or t.num_rows != s["rows"]:
                t, scanned = build_shard_index(shards.open_parquet(uri), s["file"]), scanned + 1
            parts.append(_with_shard(t, k))
    else:
        for k, uri in enumerate(uris):  # no manifest (older or foreign tables): index from the image_id column
            parts.append(_with_shard(build_shard_index(shards.open_parquet(uri), posixpath.basename(uri)), k))
            scanned += 1
    schema = IMAGE_INDEX.append(pa.field("shard_idx", pa.int32()))
    return uris, pa.concat_tables(parts) if parts else schema.empty_table(), scanned


def _with_shard(t: pa.Table, k: int) -> pa.Table:
    return t.append_column("shard_idx", pa.array(np.full(t.num_rows, k, np.int32))).replace_schema_metadata(None)


# --- reading -----------------------------------------------------------------------------


class ImageReader:
    """Rows of images tables by image_id; the first table (then shard, then row) holding an id wins."""

    def __init__(self, tables: Sequence[str], cache_groups: int = 64, cache_bytes: int = 256 << 20,
                 skip_rows: Collection[str] | None = None) -> None:
        """`skip_rows`: `acedata.kept.row_key`s of rows to leave out (copies that lose to a kept copy
        of the same image); default: the rows each table's sibling `duplicates` table lists."""
        if skip_rows is None:
            skip_rows = dropped_uris(tables)
        self.tables = list(tables)
        self._uris: list[str] = []
        parts: list[pa.Table] = []
        self.scanned_shards = 0  # shards indexed from their image_id column (no usable index file)
        for t in self.tables:
            uris, idx, scanned = _table_index(t)
            shift = pc.add(idx.column("shard_idx"), pa.scalar(len(self._uris), pa.int32()))
            parts.append(idx.set_column(idx.schema.get_field_index("shard_idx"), "shard_idx", shift))
            self._uris.extend(uris)
            self.scanned_shards += scanned
        index = pa.concat_tables(parts) if parts else IMAGE_INDEX.append(pa.field("shard_idx", pa.int32())).empty_table()
        if skip_rows and index.num_rows:
            mask = keep_mask(index.column("source_uri"), index.column("image_id"), set(skip_rows))
            index = index if mask is None else index.filter(mask)
        self._pos: dict[str, int] = {}
        for i, image_id in enumerate(index.column("image_id").to_pylist()):
            self._pos.setdefault(image_id, i)
        self._shard = index.column("shard_idx").to_numpy()
        self._group = index.column("row_group").to_numpy()
        self._row = index.column("row").to_numpy()
        self._meta_cols = index.select(["width", "height", "kind"])
        self._footers: dict[int, pq.FileMetaData] = {}
        self._cache: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._cache_bytes = 0
        self._max_groups, self._max_bytes = cache_groups, cache_bytes
        self._lock = threading.Lock()
        self.row_groups_read = 0

    @classmethod
    def for_run(cls, run_dir: str, **kw: Any) -> ImageReader:
        from acedata.review.catalog import run_tables

        return cls(run_tables(run_dir, "images"), **kw)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._pos

    def __len__(self) -> int:
        return len(self._pos)

    def ids(self) -> Iterable[str]:
        return self._pos.keys()

    def info(self, image_id: str) -> dict[str, Any]:
        """width, height, kind from the index alone."""
        p = self._pos.get(image_id)
        if p is None:
            raise UnknownImages([image_id], self._where())
        return {c: self._meta_cols.column(c)[p].as_py() for c in ("width", "height", "kind")}

    def sizes(self) -> dict[str, list]:
        """image_id -> [width, height] for every image, from the index alone."""
        w = self._meta_cols.column("width").to_pylist()
        h = self._meta_cols.column("height").to_pylist()
        return {i: [w[p], h[p]] for i, p in self._pos.items()}

    def kind(self, image_id: str) -> str | None:
        p = self._pos.get(image_id)
        return None if p is None else self._meta_cols.column("kind")[p].as_py()

    def rows(self, image_ids: Iterable[str], columns: Sequence[str] = ("image_id", "image"),
             missing: str = "raise") -> dict[str, dict[str, Any]]:
        """{image_id: row} with `columns` (absent columns as None); unknown ids raise, or are skipped."""
        wanted = list(dict.fromkeys(image_ids))
        absent = [i for i in wanted if i not in self._pos]
        if absent and missing == "raise":
            raise UnknownImages(absent, self._where())
        by_shard: dict[int, dict[int, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
        for i in wanted:
            p = self._pos.get(i)
            if p is not None:
                by_shard[int(self._shard[p])][int(self._group[p])].append((int(self._row[p]), i))
        cols = list(dict.fromkeys(["image_id", *columns]))
        out: dict[str, dict[str, Any]] = {}
        for k in sorted(by_shard):
            groups = by_shard[k]
            tables = self._shard_groups(k, sorted(groups), cols)
            for g, items in sorted(groups.items()):
                got = tables[g].take(pa.array([r for r, _ in items], pa.int32())).to_pylist()
                for (_, image_id), row in zip(items, got):
                    if row["image_id"] != image_id:
                        raise RuntimeError(f"{self._uris[k]}: row group {g} changed since its index was read "
                                           f"(expected {image_id}); reopen the reader")
                    out[image_id] = {c: row.get(c) for c in columns}
        return out

    def image_bytes(self, image_ids: Iterable[str], missing: str = "raise") -> dict[str, bytes]:
        rows = self.rows(image_ids, ("image_id", "image"), missing)
        return {i: r["image"]["bytes"] for i, r in rows.items()}

    def _where(self) -> str:
        return ", ".join(self.tables[:3]) + (" ..." if len(self.tables) > 3 else "") if self.tables else "(no tables)"

    def _shard_groups(self, k: int, groups: list[int], cols: list[str]) -> dict[int, pa.Table]:
        """Row groups of shard k with `cols`: from the LRU, the rest in one read of that shard."""
        out: dict[int, pa.Table] = {}
        missing: list[int] = []
        with self._lock:
            for g in groups:
                hit = self._cache.get((k, g, tuple(cols)))
                if hit is None:
                    missing.append(g)
                else:
                    self._cache.move_to_end((k, g, tuple(cols)))
                    out[g] = hit
            footer = self._footers.get(k)
        if not missing:
            return out
        fs, path = shards.resolve(self._uris[k])
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f, metadata=footer)
            present = [c for c in cols if c in pf.schema_arrow.names]
            t = pf.read_row_groups(missing, columns=present, use_threads=False)  # small reads: threads cost more
            footer = pf.metadata
        start = 0
        for g in missing:
            n = footer.row_group(g).num_rows
            out[g] = t.slice(start, n)
            start += n
        with self._lock:
            self.row_groups_read += len(missing)
            self._footers[k] = footer
            for g in missing:
                self._cache[(k, g, tuple(cols))] = out[g]
                self._cache_bytes += out[g].nbytes
            while self._cache and (len(self._cache) > self._max_groups or self._cache_bytes > self._max_bytes):
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return out


# One reader per process and set of tables: task workers build a fresh stage per unit, and the
# index must not be reloaded each time. Keyed by each manifest's (and its duplicates table's) size
# and mtime, so a table rewritten in place (a rerun into the same folder) is reopened.
_SHARED: OrderedDict[tuple, ImageReader] = OrderedDict()
_SHARED_LOCK = threading.Lock()


def _table_key(table: str) -> tuple:
    fs, d = shards.resolve(table)
    dup = posixpath.join(posixpath.dirname(d.rstrip("/")), "duplicates", shards.MANIFEST)
    info, dinfo = fs.get_file_info([posixpath.join(d, shards.MANIFEST), dup])
    if info.type == pafs.FileType.NotFound:
        info = fs.get_file_info(d)
    return (table, info.size, info.mtime_ns, dinfo.size, dinfo.mtime_ns)


def shared_reader(tables: Sequence[str]) -> ImageReader:
    key = tuple(_table_key(t) for t in tables)
    with _SHARED_LOCK:
        hit = _SHARED.get(key)
        if hit is not None:
            _SHARED.move_to_end(key)
            return hit
    reader = ImageReader(tables)
    with _SHARED_LOCK:
        _SHARED[key] = reader
        while len(_SHARED) > 4:
            _SHARED.popitem(last=False)
    return reader
