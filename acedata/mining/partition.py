"""Cluster partitions for the pair stage: each unit's clusters with their vectors.

The driver holds only the cluster index (image id, cluster, second cluster; a few
dozen bytes a row) and streams the embeddings one shard at a time: every row is
written to the partition of each cluster it belongs to (its nearest, and for border
points its second nearest), as one file per (unit, shard). Vectors are copied as
stored, without conversion; units normalise what they read. A `_COMPLETE` marker
is written last, so an interrupted plan rewrites the partitions from scratch.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow.fs import FileSelector, FileType

from acedata import shards
from acedata.errors import UserError
from acedata.mining.vectors import normalize, to_matrix

COMPLETE = "_COMPLETE"


def cluster_index(tables: list[str]) -> pa.Table:
    """image_id, cluster_id, cluster_id2 (-1: none) of every clustered image."""
    parts = []
    for p in tables:
        listed = shards.list_shards(p)
        names = shards.open_parquet(listed[0]).schema_arrow.names if listed else []
        cols = ["image_id", "cluster_id"] + (["cluster_id2"] if "cluster_id2" in names else [])
        t = shards.read_table(p, cols)
        second = t.column("cluster_id2") if "cluster_id2" in cols else pa.nulls(t.num_rows, pa.int32())
        parts.append(pa.table({"image_id": t.column("image_id"), "cluster_id": t.column("cluster_id").cast(pa.int32()),
                               "cluster_id2": pc.fill_null(second, -1).cast(pa.int32())}))
    return pa.concat_tables(parts)


def plan_units(cid: np.ndarray, cid2: np.ndarray, points_per_unit: int) -> tuple[np.ndarray, list[str]]:
    """Whole clusters per unit, in cluster order: (unit number per cluster id, unit ids).

    A cluster's size counts its border guests too; a cluster never spans units."""
    k = int(max(cid.max(initial=-1), cid2.max(initial=-1))) + 1
    sizes = np.bincount(cid, minlength=k) + np.bincount(cid2[cid2 >= 0], minlength=k)
    unit_of = np.full(k, -1, dtype=np.int64)
    uids: list[str] = []
    n = 0
    for c in np.flatnonzero(sizes):
        if not uids or n + sizes[c] > points_per_unit and n > 0:
            uids.append(f"c{int(c):07d}")
            n = 0
        unit_of[c] = len(uids) - 1
        n += int(sizes[c])
    return unit_of, uids


def write_partitions(index: pa.Table, emb_tables: list[str], sizes: tuple[np.ndarray, np.ndarray] | None,
                     pdir: str, unit_of: np.ndarray, uids: list[str], skip: set[str]) -> None:
    """Stream the embedding shards into per-unit partition files under `pdir` (a URI)."""
    fs, root = shards.resolve(pdir)
    if shards.exists(fs, posixpath.join(root, COMPLETE)):
        return
    if shards.exists(fs, root):
        fs.delete_dir_contents(root)
    fs.create_dir(root, recursive=True)
    cid = index.column("cluster_id").to_numpy()
    cid2 = index.column("cluster_id2").to_numpy()
    # memberships: (index row, cluster mined in): every row once, border rows twice
    m_row = np.concatenate([np.arange(len(cid)), np.flatnonzero(cid2 >= 0)])
    m_cluster = np.concatenate([cid, cid2[cid2 >= 0]])
    m_unit = unit_of[m_cluster]
    wanted = ~np.isin(m_unit, [i for i, u in enumerate(uids) if u in skip])
    m_row, m_cluster, m_unit = m_row[wanted], m_cluster[wanted], m_unit[wanted]
    found = np.zeros(len(cid), dtype=bool)
    ids = index.column("image_id")
    shard_no = 0
    for table in emb_tables:
        for shard in shards.list_shards(table):
            t = shards.open_parquet(shard).read(columns=["image_id", "embedding"])
            where = pc.index_in(ids, value_set=t.column("image_id")).to_numpy(zero_copy_only=False)
            hit = ~np.isnan(where) if where.dtype.kind == "f" else where >= 0
            new = hit & ~found  # an id embedded twice: its first occurrence wins
            found |= new
            take = new[m_row]
            rows, clusters, units = m_row[take], m_cluster[take], m_unit[take]
            pos = np.nan_to_num(where, nan=-1).astype(np.int64)
            order = np.argsort(units, kind="stable")
            bounds = np.flatnonzero(np.diff(units[order])) + 1
            for g in np.split(order, bounds) if len(order) else []:
                r = rows[g]
                part = pa.table({
                    "image_id": ids.take(pa.array(r)),
                    "cluster_id": pa.array(clusters[g], pa.int32()),
                    "home": pa.array(cid[r], pa.int32()),
                    "other": pa.array(cid2[r], pa.int32()),
                    "embedding": t.column("embedding").take(pa.array(pos[r])),
                    "width": pa.array(sizes[0][r], pa.float32()) if sizes else pa.nulls(len(r), pa.float32()),
                    "height": pa.array(sizes[1][r], pa.float32()) if sizes else pa.nulls(len(r), pa.float32()),
                })
                d = posixpath.join(root, uids[int(units[g[0]])])
                fs.create_dir(d, recursive=True)
                pq.write_table(part, posixpath.join(d, f"{shard_no:06d}.parquet"), filesystem=fs,
                               compression="none")  # scratch, read once: speed over size
            shard_no += 1
    if not found.all():
        raise UserError(f"pair: {int((~found).sum())} clustered image_ids have no embedding "
                        f"(embeddings {emb_tables})")
    shards.write_bytes_atomic(fs, posixpath.join(root, COMPLETE), b"{}")


def read_partition(pdir: str, uid: str) -> tuple[pa.Table, np.ndarray]:
    """A unit's rows sorted by (cluster_id, image_id), and their unit-norm float32 vectors."""
    fs, root = shards.resolve(pdir)
    d = posixpath.join(root, uid)
    files = sorted(i.path for i in fs.get_file_info(FileSelector(d)) if i.type == FileType.File)
    tables = [pq.read_table(f, filesystem=fs) for f in files]
    x = np.concatenate([normalize(to_matrix(t.column("embedding"))) for t in tables])
    t = pa.concat_tables([t.drop_columns(["embedding"]) for t in tables])
    order = pc.sort_indices(pa.table({"c": t.column("cluster_id"), "i": t.column("image_id")}),
                            sort_keys=[("c", "ascending"), ("i", "ascending")]).to_numpy()
    return t.take(pa.array(order)), x[order]


def image_sizes(tables: list[str], ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """(width, height) per id from the images tables (NaN where unknown), or None."""
    if not tables:
        return None
    t = pa.concat_tables(shards.read_table(p, ["image_id", "width", "height"]) for p in tables)
    where = pc.index_in(ids, value_set=t.column("image_id"))
    w = pc.take(t.column("width"), where).to_numpy(zero_copy_only=False)
    h = pc.take(t.column("height"), where).to_numpy(zero_copy_only=False)
    return w, h


def owned_here(here: int, home_a: np.ndarray, other_a: np.ndarray, home_b: np.ndarray,
               other_b: np.ndarray) -> np.ndarray:
    """Which pairs this cluster writes, when a border pair can be mined in two clusters.

    Both ends belong to `here`; a pair is written by the common cluster that is home to
    more of its ends, ties to the smaller cluster id, so exactly one cluster writes it."""
    alt_a = np.where(home_a == here, other_a, home_a)
    alt_b = np.where(home_b == here, other_b, home_b)
    common = (alt_a == alt_b) & (alt_a >= 0)
    homes_here = (home_a == here).astype(np.int8) + (home_b == here)
    homes_alt = 2 - homes_here
    alt_wins = common & ((homes_alt > homes_here) | ((homes_alt == homes_here) & (alt_a < here)))
    return ~alt_wins
