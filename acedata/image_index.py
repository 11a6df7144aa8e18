"""One image index and one reader: image bytes by `image_id`, reading only the row groups that hold them.

Index, per images table, under its hidden `.index/` folder (so `datasets`/pyarrow never read it as rows):

- each shard gets `<shard stem>.<sha256[:16]>.parquet` (schema `image_index`): image_id -> row
  group and row within the group, plus width/height/kind/source_uri, built by the unit that wrote
  the shard from its footer and metadata columns (never the image bytes);
- the table gets `_parts-<digest>/`: P partition files, rows hashed to a partition by image_id
  (P from the row count only) and sorted by (image_id, shard, row group, row) in row groups of
  8192, each row flagged `dropped` when the sibling `duplicates` table lists it (by its place:
  unit, part, row in the shard; by source_uri and image_id in older listings); `_index.json`
  (P, rows per partition) is written last. The digest covers the shard list and the duplicates
  listing, so a changed table or listing is never served from a stale index. Built after each
  stage (`ensure_index`): inline for small tables, by map and reduce units on the executor for
  large ones (`acedata.image_index_build`). Written once, never rewritten.

Reader: keeps the shard list and, per table, the partitioned index's directory; a lookup hashes
ids to partitions, reads each partition's footer once, the row groups whose min/max can hold the
ids (LRU), then the image row groups (LRU). Memory does not grow with the table. A table with no
index for its current content (older runs, plain Parquet folders) is indexed in memory when the
reader opens, from per-shard index files or `image_id` columns. Workers share one reader per
process (`shared_reader`).

Layout and naming live in `image_index_files`, writing in `image_index_write` and
`image_index_build`, the per-table lookup in `image_index_parts`; public names are re-exported here.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import shards
from acedata.errors import UserError
from acedata.image_index_build import ensure_index, parts_dir  # noqa: F401 - re-exported
from acedata.image_index_files import (  # noqa: F401 - re-exported: the index's public names stay here
    INDEX_COLUMNS,
    INDEX_DIR,
    PART_SCHEMA,
    PARTS_META,
    PARTS_PREFIX,
    _index_files,
    _read_index,
    build_shard_index,
    index_name,
    index_rows,
    is_image_table,
    parts_name,
)
from acedata.image_index_parts import MemIndex, PartIndex, first_kept, open_index
from acedata.image_index_write import write_index  # noqa: F401 - re-exported


class UnknownImages(UserError, KeyError):
    """Image ids that no images table of the reader holds."""

    def __init__(self, ids: list[str], where: str) -> None:
        super().__init__(f"{len(ids)} image id(s) not in {where}: {', '.join(ids[:3])}"
                         + (" ..." if len(ids) > 3 else ""))
        self.ids = ids

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


# --- reading -----------------------------------------------------------------------------

_Where = tuple[int, int, int, Any, Any, Any]  # (shard, row group, row, width, height, kind)


class ImageReader:
    """Rows of images tables by image_id; the first table (then shard, then row) holding an id wins."""

    def __init__(self, tables: Sequence[str], cache_groups: int = 64, cache_bytes: int = 256 << 20,
                 skip_rows: Collection[str] | None = None, index_groups: int = 32) -> None:
        """`skip_rows`: `acedata.kept.row_key`s of rows to leave out (copies that lose to a kept copy
        of the same image); default: the rows each table's sibling `duplicates` table lists.
        `cache_groups`/`cache_bytes` bound the LRU of image row groups, `index_groups` that of
        index row groups per table."""
        self.tables = list(tables)
        self._skip = None if skip_rows is None else pa.array(sorted(set(skip_rows)), pa.string())
        self._indexes: list[PartIndex | MemIndex] = [open_index(t, skip_rows is None, index_groups) for t in self.tables]
        self._uris: list[str] = []
        self._offsets: list[int] = []  # each table's first shard in `_uris`
        for idx in self._indexes:
            self._offsets.append(len(self._uris))
            self._uris.extend(idx.uris)
        self.scanned_shards = sum(i.scanned for i in self._indexes)  # shards indexed from their image_id column
        self._footers: OrderedDict[int, pq.FileMetaData] = OrderedDict()
        self._cache: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._cache_bytes = 0
        self._max_groups, self._max_bytes = cache_groups, cache_bytes
        self._lock = threading.Lock()
        self.row_groups_read = 0  # image row groups read

    @classmethod
    def for_run(cls, run_dir: str, **kw: Any) -> ImageReader:
        from acedata.review.catalog import run_tables

        return cls(run_tables(run_dir, "images"), **kw)

    @property
    def index_rows_read(self) -> int:
        """Index rows read from partitioned indexes so far (an I/O count: lookups stay small)."""
        return sum(i.rows_read for i in self._indexes)

    @property
    def index_groups_read(self) -> int:
        return sum(i.groups_read for i in self._indexes)

    def _lookup(self, image_ids: Iterable[str]) -> dict[str, _Where]:
        """Where the served row of each known id is; table by table, ids found leave the search."""
        remaining = [i for i in dict.fromkeys(image_ids) if isinstance(i, str)]
        out: dict[str, _Where] = {}
        for idx, off in zip(self._indexes, self._offsets):
            if not remaining:
                break
            got = first_kept(idx.find(remaining), self._skip)
            if not got.num_rows:
                continue
            cols = [got.column(c).to_pylist() for c in ("image_id", "shard", "row_group", "row", "width", "height", "kind")]
            for i, s, g, r, w, h, k in zip(*cols):
                out[i] = (s + off, g, r, w, h, k)
            remaining = [i for i in remaining if i not in out]
        return out

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_id in self._lookup([image_id])

    def present(self, image_ids: Iterable[str]) -> set[str]:
        """The ids of `image_ids` some table holds (one batched lookup; `in` looks up one id)."""
        return set(self._lookup(image_ids))

    def __len__(self) -> int:
        """Distinct ids: streams every partition (small tools only)."""
        return sum(1 for _ in self.ids())

    def ids(self) -> Iterator[str]:
        """Every id once. Streams every partition of every table (and, for several tables, keeps
        the ids seen): for the reference planner and small tools, not for workers."""
        seen: set[str] | None = set() if len(self._indexes) > 1 else None
        for idx in self._indexes:
            for part in idx.stream():
                for i in first_kept(part, self._skip).column("image_id").to_pylist():
                    if seen is not None:
                        if i in seen:
                            continue
                        seen.add(i)
                    yield i

    def info(self, image_id: str) -> dict[str, Any]:
        """width, height, kind from the index alone."""
        p = self._lookup([image_id]).get(image_id)
        if p is None:
            raise UnknownImages([image_id], self._where())
        return {"width": p[3], "height": p[4], "kind": p[5]}

    def infos(self, image_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{image_id: info} for the known ids of `image_ids`, in one batched lookup."""
        return {i: {"width": p[3], "height": p[4], "kind": p[5]} for i, p in self._lookup(image_ids).items()}

    def sizes(self) -> dict[str, list]:
        """image_id -> [width, height] for every image, from the index alone. Streams every
        partition and holds the whole answer: the single-process reference planner's."""
        out: dict[str, list] = {}
        for idx in self._indexes:
            for part in idx.stream():
                t = first_kept(part, self._skip)
                for i, w, h in zip(*(t.column(c).to_pylist() for c in ("image_id", "width", "height"))):
                    out.setdefault(i, [w, h])
        return out

    def kind(self, image_id: str) -> str | None:
        p = self._lookup([image_id]).get(image_id)
        return None if p is None else p[5]

    def rows(self, image_ids: Iterable[str], columns: Sequence[str] = ("image_id", "image"),
             missing: str = "raise") -> dict[str, dict[str, Any]]:
        """{image_id: row} with `columns` (absent columns as None); unknown ids raise, or are skipped."""
        wanted = list(dict.fromkeys(image_ids))
        pos = self._lookup(wanted)
        absent = [i for i in wanted if i not in pos]
        if absent and missing == "raise":
            raise UnknownImages(absent, self._where())
        by_shard: dict[int, dict[int, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
        for i in wanted:
            p = pos.get(i)
            if p is not None:
                by_shard[p[0]][p[1]].append((p[2], i))
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
            if footer is not None:
                self._footers.move_to_end(k)
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
            while len(self._footers) > 1024:  # footers of image shards: bounded, not one per shard read
                self._footers.popitem(last=False)
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
