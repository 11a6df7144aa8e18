"""The pair stage's partitions: every clustered row with its vector, grouped by cluster.

The cluster stage's units write them (table `members`) as they assign: each row once in
its home cluster and, for border points, once more in its second cluster; rows sorted by
(cluster_id, image_id), and row groups that end only at a cluster boundary (at least
`GROUP_ROWS` rows each), so a reader picks the groups of a cluster range from the Parquet
footers' statistics and reads nothing else. Each unit also saves its per-cluster counts
(scratch of the cluster stage), and cluster's `finish` sums them into a small sidecar,
`_members.json`: the k per-cluster sizes and the embedding models. The pair driver plans
from that sidecar alone (memory O(k)), and each pair unit reads its clusters' rows from
every shard: no row ever passes through the driver.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acedata import shards, storage
from acedata.errors import UserError
from acedata.mining.vectors import normalize_into

META = "_members.json"
GROUP_ROWS = 4096  # rows per row group at least (~6 MB of 768-d float16): few footer entries, small over-read

VECTOR_KEY = b"acedata.vector"  # schema metadata: "<numpy dtype>,<dim>" of the `embedding` bytes


def members_schema(dtype: str, dim: int) -> pa.Schema:
    """`cluster_id` (mined in), `image_id`, `home`/`other` (nearest / second cluster, -1: none), and the
    vector as stored (`dtype`), as raw bytes: Parquet decodes float16 lists ~8x slower than fixed binary."""
    width = np.dtype(dtype).itemsize * dim
    return pa.schema([
        pa.field("cluster_id", pa.int32(), False),
        pa.field("image_id", pa.string(), False),
        pa.field("home", pa.int32(), False),
        pa.field("other", pa.int32(), False),
        pa.field("embedding", pa.binary(width), False),
    ], metadata={shards.ROW_GROUPS_KEY: b"chunks", VECTOR_KEY: f"{np.dtype(dtype).name},{dim}".encode(),
                 shards.RAW_COLUMNS_KEY: b"embedding"})  # float bytes: zstd saves ~8% for 3x the read CPU


def vector_dtype(tables: list[str]) -> str:
    """The embeddings' stored float type when every table agrees (vectors copied as they are), else float32."""
    types = set()
    for t in tables:
        listed = shards.list_shards(t)
        if listed:
            types.add(shards.open_parquet(listed[0]).schema_arrow.field("embedding").type.value_type)
    if len(types) == 1 and types <= {pa.float16(), pa.float32(), pa.float64()}:
        return types.pop().to_pandas_dtype().__name__
    return "float32"


def to_bytes(x: np.ndarray) -> pa.FixedSizeBinaryArray:
    """The rows of `x` as fixed-width bytes, over x's own memory (no copy when x is contiguous)."""
    x = np.ascontiguousarray(x)
    width = x.dtype.itemsize * x.shape[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(x), [None, pa.py_buffer(x.reshape(-1))])


def from_bytes(col: pa.Array | pa.ChunkedArray, schema: pa.Schema) -> np.ndarray:
    """The (n, dim) vectors of an `embedding` column, in their stored dtype."""
    dtype, dim = schema.metadata[VECTOR_KEY].decode().split(",")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    width = arr.type.byte_width
    raw = np.frombuffer(arr.buffers()[1], np.uint8)[arr.offset * width:(arr.offset + len(arr)) * width]
    return raw.view(dtype).reshape(len(arr), int(dim))


def member_rows(ids: pa.Array, x: np.ndarray, home: np.ndarray, other: np.ndarray,
                group_rows: int | None = None) -> pa.Table:
    """One unit's memberships (`x`: its vectors as stored), sorted by (cluster_id, image_id),
    chunked into row groups of whole clusters."""
    guest = np.flatnonzero(other >= 0)
    rows = np.concatenate([np.arange(len(home)), guest])
    cid = np.concatenate([home, other[guest]]).astype(np.int32)
    key = pa.table({"c": cid, "i": ids.take(pa.array(rows))})
    order = pc.sort_indices(key, sort_keys=[("c", "ascending"), ("i", "ascending")]).to_numpy()  # stable
    rows, cid = rows[order], cid[order]
    t = pa.table({"cluster_id": cid, "image_id": ids.take(pa.array(rows)), "home": home[rows].astype(np.int32),
                  "other": other[rows].astype(np.int32), "embedding": to_bytes(x[rows])},
                 schema=members_schema(x.dtype.name, x.shape[1]))
    if not len(cid):
        return t
    return pa.concat_tables([t.slice(a, b - a) for a, b in group_bounds(cid, group_rows or GROUP_ROWS)])


def group_bounds(cid: np.ndarray, group_rows: int) -> list[tuple[int, int]]:
    """Row ranges of sorted `cid` that cut only where the cluster changes, each >= group_rows rows
    (the last may hold fewer; one cluster larger than that is one group)."""
    starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
    out, begin = [], 0
    for s in starts[1:].tolist():
        if s - begin >= group_rows:
            out.append((begin, s))
            begin = s
    out.append((begin, len(cid)))
    return out


def unit_counts(home: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(3, m): cluster ids present in a unit, their home rows, their border guests."""
    guests = other[other >= 0]
    present = np.union1d(home, guests).astype(np.int64)
    k = int(present.max()) + 1 if len(present) else 0
    return np.stack([present, np.bincount(home, minlength=k)[present], np.bincount(guests, minlength=k)[present]])


def total_counts(files: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(home rows, guests) per cluster id, summed over units' counts files (memory O(k))."""
    mem, gst = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for f in files:
        c, m, g = storage.load_npy(f)
        np.add.at(mem, c, m)
        np.add.at(gst, c, g)
    return mem, gst


def write_meta(table: str, sizes: np.ndarray, models: list[str]) -> None:
    """The sidecar pair plans from: rows to mine per cluster (home + guests), embedding models."""
    storage.write_json(storage.join(table, META), {"k": len(sizes), "sizes": [int(s) for s in sizes],
                                                   "embedding_models": sorted(models)})


def read_meta(table: str) -> dict[str, Any] | None:
    path = storage.join(table, META)
    return storage.read_json(path) if storage.exists_uri(path) else None


def plan_ranges(sizes: np.ndarray, points_per_unit: int) -> list[tuple[str, int, int]]:
    """Whole clusters per unit, in cluster order: (unit id, first cluster, last cluster).

    A cluster's size counts its border guests too; a cluster never spans units."""
    out: list[tuple[str, int, int]] = []
    n = 0
    for c in np.flatnonzero(np.asarray(sizes) > 0).tolist():
        if not out or n + sizes[c] > points_per_unit and n > 0:
            out.append((f"c{c:07d}", c, c))
            n = 0
        out[-1] = (out[-1][0], out[-1][1], c)
        n += int(sizes[c])
    return out


def read_clusters(table: str, lo: int, hi: int) -> tuple[pa.Table, np.ndarray]:
    """Rows of clusters lo..hi from every shard, sorted by (cluster_id, image_id), and their
    unit-norm float32 vectors. Only row groups whose cluster_id range meets [lo, hi] are read.

    The vectors never go through Arrow's filter, concat or take (each a copy of every stored
    vector, over-read ones included): the wanted rows are picked from the row groups' own
    buffers straight into their sorted places, once."""
    parts, vecs, schema = [], [], None
    for s in shards.list_shards(table):
        pf = shards.open_parquet(s)
        schema = pf.schema_arrow
        groups = shards.row_groups_between(pf, "cluster_id", lo, hi)
        if groups:
            t = pf.read_row_groups(groups)
            c = t.column("cluster_id")
            keep = pc.indices_nonzero(pc.and_(pc.greater_equal(c, lo), pc.less_equal(c, hi))).to_numpy()
            parts.append(t.drop_columns(["embedding"]).take(keep))
            vecs.append((t.column("embedding").chunks, keep))
    if not parts:
        raise UserError(f"pair: no rows for clusters {lo}..{hi} in {posixpath.basename(table)} (table changed?)")
    t = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    order = pc.sort_indices(t.select(["cluster_id", "image_id"]),
                            sort_keys=[("cluster_id", "ascending"), ("image_id", "ascending")]).to_numpy()
    return t.take(order), _gather_sorted(vecs, order, schema)


def _gather_sorted(vecs: list[tuple[list[pa.Array], np.ndarray]], order: np.ndarray, schema: pa.Schema) -> np.ndarray:
    """The unit-norm float32 vectors of the kept rows in sorted order: `vecs` holds, per shard read,
    the embedding column's chunks and the kept row numbers among them (in concat order); output
    row k is kept row `order[k]`. Each stored vector is read once from the read buffers, converted
    and normalized in cache-sized steps (`normalize_into`; the same bits as normalizing a gathered
    copy), never copied whole in its stored type first."""
    _, dim = schema.metadata[VECTOR_KEY].decode().split(",")
    out = np.empty((len(order), int(dim)), np.float32)
    where = np.empty(len(order), np.int64)
    where[order] = np.arange(len(order))  # each kept row's place in the output
    at = 0  # kept rows of earlier shards
    for chunks, keep in vecs:
        base = 0  # rows of earlier chunks of this shard
        for ch in chunks:
            lo_k, hi_k = np.searchsorted(keep, [base, base + len(ch)])
            if hi_k > lo_k:
                normalize_into(out, where[at + lo_k:at + hi_k], from_bytes(ch, schema), keep[lo_k:hi_k] - base)
            base += len(ch)
        at += len(keep)
    return out
