"""Pair partitions for a clusters table made outside this run, and border-pair ownership.

The cluster stage writes the pair stage's partitions itself (`acedata.mining.members`).
A `clusters` table given from elsewhere (e.g. `inputs: {clusters: PATH}`) has none, so
the pair driver builds the same `members` table from it: it holds the cluster index
(image id, cluster, second cluster; a few dozen bytes a row, O(rows)) and streams the
embeddings one shard at a time, writing each shard's memberships as one committed unit.
The sidecar (`_members.json`) is written last: an interrupted build starts over.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acedata import shards
from acedata.errors import UserError
from acedata.mining.members import member_rows, read_meta, vector_dtype, write_meta
from acedata.mining.vectors import to_matrix


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


def build_members(cluster_tables: list[str], emb_tables: list[str], out: str) -> dict:
    """Write a members table for a foreign clusters table under `out` (a URI); returns its sidecar."""
    meta = read_meta(out)
    if meta is not None:
        return meta
    fs, root = shards.resolve(out)
    if shards.exists(fs, root):
        fs.delete_dir_contents(root)  # an interrupted build: start over
    index = cluster_index(cluster_tables)
    ids = index.column("image_id")
    cid = index.column("cluster_id").to_numpy()
    cid2 = index.column("cluster_id2").to_numpy()
    dtype = vector_dtype(emb_tables)
    schema = None
    found = np.zeros(len(cid), dtype=bool)
    models: set[str] = set()
    shard_no = 0
    for table in emb_tables:
        for shard in shards.list_shards(table):
            pf = shards.open_parquet(shard)
            cols = ["image_id", "embedding"] + (["model"] if "model" in pf.schema_arrow.names else [])
            t = pf.read(columns=cols)
            if "model" in cols:
                models.update(v for v in t.column("model").unique().to_pylist() if v is not None)
            where = pc.index_in(ids, value_set=t.column("image_id")).to_numpy(zero_copy_only=False)
            hit = ~np.isnan(where) if where.dtype.kind == "f" else where >= 0
            new = np.flatnonzero(hit & ~found)  # an id embedded twice: its first occurrence wins
            found[new] = True
            pos = np.nan_to_num(where, nan=-1).astype(np.int64)[new]
            x = to_matrix(t.column("embedding").take(pa.array(pos)), dtype)
            rows = member_rows(ids.take(pa.array(new)).combine_chunks(), x, cid[new], cid2[new])
            schema = rows.schema
            w = shards.ShardWriter(out, schema, unit=f"s{shard_no:06d}")
            w.write(rows)
            w.commit()
            shard_no += 1
    if not found.all():
        raise UserError(f"pair: {int((~found).sum())} clustered image_ids have no embedding "
                        f"(embeddings {emb_tables})")
    if schema is None:
        raise UserError(f"pair: the embeddings tables {emb_tables} are empty")
    shards.finalize_manifest(out, schema, table="members")
    k = int(max(cid.max(initial=-1), cid2.max(initial=-1))) + 1
    write_meta(out, np.bincount(cid, minlength=k) + np.bincount(cid2[cid2 >= 0], minlength=k), sorted(models))
    return read_meta(out)


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
