"""Cluster: embeddings -> `clusters` (FAISS spherical k-means, cosine).

The driver trains the centroids (`plan`) on a seeded sample of at most
`k * max_points_per_centroid` vectors, read shard by shard so it never holds the
whole table; units then assign every vector to its nearest centroid in parallel.
faiss-gpu is used when present and a GPU is visible (`gpu: auto`), else faiss-cpu.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from acedata import shards
from acedata.config import StageConfig
from acedata.errors import UserError
from acedata.mining.kmeans import assign, sample_size, size_stats, train_spherical, use_gpu
from acedata.mining.vectors import normalize, read_unit, row_group_units, to_matrix
from acedata.schemas import CLUSTERS
from acedata.stage import Stage, UnitResult, WorkUnit, register

CENTROIDS = "centroids.npy"
TRAIN_INFO = "kmeans.json"


class ClusterConfig(StageConfig):
    k: int = Field(1000, ge=1)
    niter: int = Field(20, ge=1)
    nredo: int = Field(1, ge=1)
    max_points_per_centroid: int = Field(256, ge=1)
    seed: int = 0
    gpu: Literal["auto", True, False] = "auto"
    rows_per_unit: int = Field(200_000, ge=1)


def sample_rows(tables: list[str], want: int, seed: int) -> np.ndarray:
    """`want` rows drawn uniformly without replacement (all rows when fewer), unit-normalised."""
    counts = [(s, shards.open_parquet(s).metadata.num_rows) for t in tables for s in shards.list_shards(t)]
    total = sum(n for _, n in counts)
    if total == 0:
        raise UserError(f"cluster: the embeddings tables {tables} are empty")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(want, total), replace=False))
    out, start = [], 0
    for shard, n in counts:
        mine = picks[(picks >= start) & (picks < start + n)] - start
        if len(mine):
            col = shards.open_parquet(shard).read(columns=["embedding"]).column("embedding")
            out.append(normalize(to_matrix(col.take(pa.array(mine)))))
        start += n
    return np.concatenate(out)


@register
class Cluster(Stage):
    kind = "cluster"
    Config = ClusterConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"clusters": CLUSTERS}
    # The centroids are this stage's model (k x dim floats, a GPU index with `gpu`): an actor pool
    # loads them once per actor, where a task would reload them for every unit.
    uses_model = True

    def _path(self, name: str) -> str:
        return posixpath.join(self.ctx.stage_dir, name)

    def plan(self) -> list[WorkUnit]:
        c: ClusterConfig = self.config
        tables = self.ctx.input("embeddings")
        fs, _ = shards.resolve(self.ctx.stage_dir)
        if not shards.exists(fs, shards.resolve(self._path(CENTROIDS))[1]):  # resumed runs keep their centroids
            sample = sample_rows(tables, sample_size(c.k, c.max_points_per_centroid), c.seed)
            km = train_spherical(sample, c.k, c.niter, c.seed, c.gpu, c.max_points_per_centroid, c.nredo)
            info = {"k": len(km.centroids), "k_requested": c.k, "train_points": km.train_points,
                    "objective": km.objective, "gpu": km.gpu, "dim": int(km.centroids.shape[1])}
            _, d = shards.resolve(self.ctx.stage_dir)
            os.makedirs(d, exist_ok=True)
            tmp = os.path.join(d, ".tmp-" + CENTROIDS)
            np.save(tmp, km.centroids)
            os.replace(tmp, os.path.join(d, CENTROIDS))
            shards.write_bytes_atomic(fs, os.path.join(d, TRAIN_INFO), json.dumps(info).encode())
        return [WorkUnit(uid, p) for uid, p in row_group_units(tables, c.rows_per_unit)]

    def setup(self) -> None:
        _, d = shards.resolve(self.ctx.stage_dir)
        self.centroids = np.load(os.path.join(d, CENTROIDS))
        self.gpu = use_gpu(self.config.gpu)

    def process(self, unit: WorkUnit) -> UnitResult:
        t = read_unit(unit.payload, ["image_id", "embedding"])
        x = normalize(to_matrix(t.column("embedding")))
        if x.shape[1] != self.centroids.shape[1]:
            raise UserError(f"cluster: {unit.payload['shard']} has dim {x.shape[1]}, centroids {self.centroids.shape[1]}")
        ids, sims = assign(x, self.centroids, self.gpu)
        out = pa.table({"image_id": t.column("image_id"), "cluster_id": pa.array(ids, pa.int32()),
                        "distance": pa.array(1.0 - sims, pa.float32())})
        return UnitResult({"clusters": out}, {"inputs": t.num_rows})

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        _, d = shards.resolve(self.ctx.stage_dir)
        with open(os.path.join(d, TRAIN_INFO)) as f:
            info = json.load(f)
        ids = shards.read_table(self.ctx.out("clusters"), ["cluster_id"]).column("cluster_id").to_numpy()
        stats = size_stats(np.bincount(ids, minlength=info["k"]), info["k"])
        shards.write_bytes_atomic(*shards.resolve(os.path.join(d, "cluster_sizes.json")),
                                  json.dumps(stats).encode())
        return {"kmeans": info, "cluster_sizes": stats}
