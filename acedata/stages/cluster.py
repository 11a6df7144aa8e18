"""Cluster: embeddings -> `clusters` (FAISS spherical k-means, cosine).

k is derived from the number of vectors (`target_cluster_size` points per cluster) unless
given. The driver trains the centroids on a seeded sample of at most
`k * max_points_per_centroid` vectors, capped at `max_train_points` (training costs
grow as sample * k); a first wave of units draws it (`acedata.mining.sample`: each writes
its rows below a hash threshold, so the driver reads about twice the sample, never the
table); units then assign every vector to its nearest centroid in parallel, reading their
own row groups.
A border point (second centroid within `border_margin` cosine of the first) also gets
`cluster_id2`, so the pair stage can recover pairs the partition cuts apart.
Units also write the pair stage's partitions, `members` (`acedata.mining.members`: rows
with their vectors grouped by cluster) and their per-cluster counts; `finish` sums those
into k sizes, so `pair` plans without reading a row.
faiss-gpu is used when present and a GPU is visible (`gpu: auto`), else faiss-cpu; units run
FAISS at `resources.num_cpus` threads, with either executor (a Ray worker's OMP_NUM_THREADS).
Above `two_level_min_k` clusters the centroids are trained in two levels instead
(`acedata.mining.twolevel`): coarse cells on the driver, fine centroids per cell in waves.
A unit's memory is its vectors as stored plus its members' copy of them (bounded by
`rows_per_unit`, not by N): it reads them in batches (`vectors.read_vectors`) and
normalizes and searches a block of rows at a time (`kmeans.search_stored`, the same bits).
"""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from acedata import shards, storage
from acedata.config import StageConfig
from acedata.errors import UserError
from acedata.mining import sample, twolevel
from acedata.mining.kmeans import (
    assign_top2_stored,
    border_second,
    derive_k,
    faiss_threads,
    sample_size,
    size_stats,
    train_spherical,
    use_gpu,
)
from acedata.mining.members import (
    VECTOR_KEY,
    member_rows,
    members_schema,
    total_counts,
    unit_counts,
    vector_dtype,
    write_meta,
)
from acedata.mining.vectors import read_vectors, row_group_units
from acedata.schemas import CLUSTERS
from acedata.stage import Stage, UnitResult, WorkUnit, register

CENTROIDS = "centroids.npy"
TRAIN_INFO = "kmeans.json"
COUNTS_DIR = "_counts"  # per unit: (cluster ids, home rows, border guests)


class ClusterConfig(StageConfig):
    k: int | None = Field(None, ge=1)  # None: derived from N and target_cluster_size
    target_cluster_size: int = Field(1000, ge=2)  # points per cluster when k is derived
    niter: int = Field(20, ge=1)
    nredo: int = Field(1, ge=1)
    max_points_per_centroid: int = Field(256, ge=1)
    min_points_per_centroid: int = Field(39, ge=1)
    max_train_points: int | None = Field(100_000, ge=1)  # None: k * max_points_per_centroid
    border_margin: float | None = Field(0.03, ge=0)  # None: no second cluster
    seed: int = 0
    gpu: Literal["auto", True, False] = "auto"
    rows_per_unit: int = Field(200_000, ge=1)
    # k above this: two-level k-means (flat training costs ~k^2 * dim on the driver); None: always flat
    two_level_min_k: int | None = Field(256, ge=1)
    max_coarse_k: int = Field(4096, ge=1)  # two-level: coarse cells, about sqrt(k) and at most this
    search_cells: int = Field(3, ge=1)  # two-level: a row looks for its fine centroids in this many cells


def shard_rows(tables: list[str]) -> list[tuple[str, int]]:
    """(shard, rows) from Parquet footers only."""
    return [(s, shards.open_parquet(s).metadata.num_rows) for t in tables for s in shards.list_shards(t)]


@register
class Cluster(Stage):
    kind = "cluster"
    Config = ClusterConfig
    # members: the pair stage's partitions (the vectors' type is the embeddings': see output_schema)
    outputs: ClassVar[dict[str, pa.Schema]] = {"clusters": CLUSTERS, "members": members_schema("float16", 1)}
    version = 2  # writes members
    # The centroids are this stage's model (k x dim floats, a GPU index with `gpu`): an actor pool
    # loads them once per actor, where a task would reload them for every unit.
    uses_model = True

    def _path(self, name: str) -> str:
        return posixpath.join(self.ctx.stage_dir, name)

    def output_schema(self, table: str) -> pa.Schema:
        if table != "members":
            return self.outputs[table]
        if not hasattr(self, "_members_schema"):  # the vectors keep the embeddings' stored type
            dim = storage.read_json(self._path(TRAIN_INFO))["dim"]
            self._members_schema = members_schema(vector_dtype(self.ctx.input("embeddings")), dim)
        return self._members_schema

    def _trained(self) -> bool:
        # both files: a crash may fall between them (info is written first, centroids / plan last)
        return storage.exists_uri(self._path(TRAIN_INFO)) and any(
            storage.exists_uri(self._path(n)) for n in (CENTROIDS, twolevel.PLAN))

    def _two_level(self) -> bool:
        return storage.exists_uri(self._path(twolevel.PLAN))

    def plan(self) -> list[WorkUnit]:
        """Resumed with centroids: the assign units. Else the sample wave (`acedata.mining.sample`):
        the driver reads Parquet footers here, and about 2 * sample-size rows in `next_wave`."""
        c: ClusterConfig = self.config
        tables = self.ctx.input("embeddings")
        if self._trained():  # resumed runs keep their centroids
            return self._assign_units()
        n = sum(rows for _, rows in shard_rows(tables))
        if n == 0:
            raise UserError(f"cluster: the embeddings tables {tables} are empty")
        k = c.k or derive_k(n, c.target_cluster_size)
        two = c.two_level_min_k is not None and k > c.two_level_min_k
        if two and storage.exists_uri(self._path(twolevel.COARSE)):  # resumed: the coarse cells are trained
            self._coarse = storage.read_json(self._path(twolevel.COARSE_INFO))
            return self._route_wave()
        k_train = twolevel.coarse_k(k, c.max_coarse_k) if two else k
        self._sampling = {"n": n, "k": k_train, "k_total": k, "two": two,
                          "want": sample_size(k_train, c.max_points_per_centroid,
                                              c.min_points_per_centroid, c.max_train_points),
                          "factor": sample.FIRST_FACTOR}
        return self._sample_wave(0)

    def _sample_wave(self, wave: int) -> list[WorkUnit]:
        s = self._sampling
        below = sample.threshold(s["want"], s["n"], s["factor"])
        units = sample.sample_units(self.ctx.input("embeddings"), self.config.rows_per_unit, wave, below,
                                    self.config.seed)
        s["units"], s["every_row"] = [u.id for u in units], below is None
        return units

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        phase = getattr(self, "_phase", None)
        if phase == "route":
            return self._fine_wave()
        if phase == "fine":
            return self._fine_done()
        s = getattr(self, "_sampling", None)
        if s is None or "done" in s:  # the assign wave finished (or centroids came from a resumed run)
            return []
        got = sample.pick(self.ctx.stage_dir, s["units"], s["want"], s["every_row"])
        if got is None:  # rare: fewer than `want` keys fell below the threshold; a larger one
            s["factor"] *= sample.GROWTH
            return self._sample_wave(wave + 1)
        x, models = got
        c: ClusterConfig = self.config
        km = train_spherical(x, s["k"], c.niter, c.seed, c.gpu, c.max_points_per_centroid, c.nredo)
        if s["two"]:
            s["done"] = True
            self._coarse = {"n": s["n"], "k": s["k_total"], "k1": len(km.centroids), "train_points": km.train_points,
                            "objective": km.objective, "gpu": km.gpu, "dim": int(km.centroids.shape[1]),
                            "embedding_models": sorted(models)}
            storage.write_json(self._path(twolevel.COARSE_INFO), self._coarse)  # info first, centroids last
            storage.save_npy(self._path(twolevel.COARSE), km.centroids)
            sample.cleanup(self.ctx.stage_dir)
            return self._route_wave()
        info = {"k": len(km.centroids), "k_requested": c.k, "k_derived": c.k is None, "vectors": s["n"],
                "train_points": km.train_points,
                "objective": km.objective, "gpu": km.gpu, "dim": int(km.centroids.shape[1]),
                "embedding_models": sorted(models)}
        # info first, centroids last: the centroids' presence means both are there
        storage.write_json(self._path(TRAIN_INFO), info)
        storage.save_npy(self._path(CENTROIDS), km.centroids)
        sample.cleanup(self.ctx.stage_dir)
        s["done"] = True
        return self._assign_units()

    # --- two-level: route rows to coarse cells, train fine centroids per cell -------------------

    def _route_wave(self) -> list[WorkUnit]:
        c: ClusterConfig = self.config
        co = self._coarse
        below = twolevel.candidate_threshold(co["n"], co["k"], c.max_points_per_centroid)
        pay = {"below": None if below is None else str(below), "seed": c.seed}
        units = [WorkUnit(uid, {"route": pay, **p}) for uid, p in
                 row_group_units(self.ctx.input("embeddings"), c.rows_per_unit, prefix="route-")]
        self._phase, self._route_ids = "route", [u.id for u in units]
        return units

    def _fine_wave(self) -> list[WorkUnit]:
        c: ClusterConfig = self.config
        route = twolevel.route_dir(self.ctx.stage_dir)
        rows = twolevel.cell_rows([posixpath.join(route, "_counts", f"{u}.npy") for u in self._route_ids])
        k2 = twolevel.fine_counts(rows, self._coarse["k"])
        # a fine unit reads ~2x its sample points as candidates (as stored; its sample float32): a quarter
        # of an assign unit's rows keeps its memory below an assign unit's
        units = twolevel.fine_units(k2, c, max(1, c.rows_per_unit // 4))
        self._phase, self._k2, self._fine = "fine", k2, [(u.id, u.payload["fine"]["lo"], u.payload["fine"]["hi"])
                                                         for u in units]
        return units

    def _fine_done(self) -> list[WorkUnit]:
        co = self._coarse
        info = {"k": int(self._k2.sum()), "k_requested": self.config.k, "k_derived": self.config.k is None,
                "vectors": co["n"], "train_points": co["train_points"], "objective": co["objective"],
                "gpu": co["gpu"], "dim": co["dim"], "embedding_models": co["embedding_models"],
                "two_level": {"coarse_k": co["k1"], "nonempty_cells": int((self._k2 > 0).sum()),
                              "max_fine_k": int(self._k2.max()), "fine_units": len(self._fine)}}
        storage.write_json(self._path(TRAIN_INFO), info)
        # the plan last: its presence means the fine centroids and the info are all there
        storage.write_json(self._path(twolevel.PLAN), {"k2": self._k2.tolist(), "units": self._fine,
                                                       "search_cells": self.config.search_cells})
        storage.delete_dir(twolevel.route_dir(self.ctx.stage_dir))
        self._phase = "assign"
        return self._assign_units()

    def _assign_units(self) -> list[WorkUnit]:
        units = [WorkUnit(uid, p) for uid, p in row_group_units(self.ctx.input("embeddings"), self.config.rows_per_unit)]
        self._unit_ids = [u.id for u in units]
        return units

    def setup(self) -> None:
        # the sample wave runs before any centroids exist: an assign unit loads them in `process`
        self.centroids = self.fine = self.coarse = None
        if self._trained():
            self._load_centroids()
        self.gpu = use_gpu(self.config.gpu)

    def _load_centroids(self) -> None:
        if self._two_level():  # coarse cells and the fine plan; fine centroids one cell range at a time
            self.fine = twolevel.Fine(self.ctx.stage_dir)
            self.centroids = self.fine.coarse
        else:
            self.centroids = storage.load_npy(self._path(CENTROIDS))

    def process(self, unit: WorkUnit) -> UnitResult:
        with faiss_threads(self.config.resources.num_cpus):  # the local executor as a Ray worker
            return self._process(unit)

    def _process(self, unit: WorkUnit) -> UnitResult:
        if sample.is_sample_unit(unit):  # scratch only: no table rows, no counts (the summary stays as before)
            sample.write_candidates(unit, self.ctx.stage_dir)
            return UnitResult({})
        if "fine" in unit.payload:  # two-level: one cell range's fine centroids (scratch + .npy only)
            if self.coarse is None:
                self.coarse = storage.load_npy(self._path(twolevel.COARSE))
            twolevel.train_cells(unit, self.ctx.stage_dir, self.coarse, self.gpu)
            return UnitResult({})
        if "route" in unit.payload:  # two-level: cell counts and fine-sample candidates (scratch only)
            if self.coarse is None:
                self.coarse = storage.load_npy(self._path(twolevel.COARSE))
            t, stored = read_vectors(unit.payload, ["image_id"], vector_dtype(self.ctx.input("embeddings")))
            twolevel.write_route(unit, self.ctx.stage_dir, t.column("image_id").combine_chunks(), stored, self.coarse)
            return UnitResult({})
        if self.centroids is None:
            self._load_centroids()
        # the unit's vectors as stored (the members' copy is made from them), normalized a block at a time
        schema = self.output_schema("members")
        t, stored = read_vectors(unit.payload, ["image_id"], schema.metadata[VECTOR_KEY].decode().split(",")[0])
        if stored.shape[1] != self.centroids.shape[1]:
            raise UserError(f"cluster: {unit.payload['shard']} has dim {stored.shape[1]}, "
                            f"centroids {self.centroids.shape[1]}")
        ids, sims = (self.fine.top2(stored) if self.fine is not None
                     else assign_top2_stored(stored, self.centroids, self.gpu))
        second = border_second(ids, sims, self.config.border_margin)
        image_ids = t.column("image_id").combine_chunks()
        out = pa.table({"image_id": image_ids, "cluster_id": pa.array(ids[:, 0], pa.int32()),
                        "distance": pa.array(1.0 - sims[:, 0], pa.float32()),
                        "cluster_id2": pa.array(second, pa.int32(), mask=second < 0)})
        members = member_rows(image_ids, stored, ids[:, 0], second)
        # per-cluster counts for finish's k sizes: the same bytes whichever attempt writes them
        storage.save_npy(self._path(f"{COUNTS_DIR}/{unit.id}.npy"), unit_counts(ids[:, 0], second))
        return UnitResult({"clusters": out, "members": members}, {"inputs": t.num_rows, "border_points": int((second >= 0).sum())})

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        sample.cleanup(self.ctx.stage_dir)  # a run that crashed after training left it
        storage.delete_dir(twolevel.route_dir(self.ctx.stage_dir))
        info = storage.read_json(self._path(TRAIN_INFO))
        files = [self._path(f"{COUNTS_DIR}/{u}.npy") for u in self._unit_ids]
        homes, guests = total_counts(files, info["k"])  # memory O(k), no row read
        stats = size_stats(homes, info["k"])
        storage.write_json(self._path("cluster_sizes.json"), stats)
        write_meta(self.ctx.out("members"), homes + guests, info.get("embedding_models", []))
        return {"kmeans": info, "cluster_sizes": stats}
