"""Pair: embeddings + clusters -> `pairs` (task `natural_edit`), mined by a two-turn
union-find inside each coarse cluster (DESIGN.md §4).

The driver (`plan`) reads only the k per-cluster sizes the cluster stage recorded beside
its `members` table (`acedata.mining.members`) and packs whole clusters into units of
about `points_per_unit` points; it reads no row. A unit reads its clusters' rows (border
points are in both of their clusters) from every members shard, mines each cluster
(`acedata.mining.twopass`), enumerates the in-band pairs of each final set with a
deterministic cap (`acedata.mining.pairs`), keeps each border pair in one cluster only,
applies the cleaning filters (`acedata.mining.cleaning`: image sizes looked up for the
pairs' ends only) and writes each pair once (unordered: source is the smaller image_id)
unless `both_directions`. A clusters table made elsewhere has no members table: the
driver then builds one in the stage's scratch (`acedata.mining.partition`).
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from acedata import shards, storage
from acedata.config import StageConfig, Strict
from acedata.errors import UserError
from acedata.mining.chaining import GuardConfig
from acedata.mining.cleaning import image_sizes, pairs_table, reject_reasons, same_rows
from acedata.mining.members import plan_ranges, read_clusters, read_meta
from acedata.mining.partition import build_members
from acedata.mining.scorers import Scorer, make_scorer, scorer_class, scorer_options
from acedata.mining.twopass import MiningParams, mine_unit
from acedata.schemas import PAIRS
from acedata.stage import Stage, UnitResult, WorkUnit, register

SCRATCH = "_partitions"  # members built here for a clusters table made elsewhere


class GuardSettings(Strict):
    enabled: bool = True
    max_set_size: int = Field(64, ge=2)
    min_pair_sim: float | None = None  # None: tau_low - 0.2
    min_pair_score: float | None = None  # turn 2 pass-2 score floor inside a set; None: half the pass-2 low bound
    check_scores: bool = True  # apply min_pair_score after turn 2
    max_rounds: int = Field(4, ge=0)
    step: float | None = Field(None, gt=0)  # None: the band spread over max_rounds + 1


class PairFilters(Strict):
    min_side: int = 0  # both images at least this many pixels on the short side
    max_aspect: float | None = None  # each image's long/short side ratio
    max_aspect_change: float | None = 2.0  # ratio between the two images' aspect ratios
    duplicate_sim: float = 0.999  # cosine at or above this: the same picture (exact duplicate)
    sim_min: float | None = None  # band on the pair's own pass-1 cosine (None: no bound)
    sim_max: float | None = None


class PairConfig(StageConfig):
    tau_low: float = 0.8
    tau_high: float = 0.95
    scorer: str = "siglip"
    scorer_options: dict[str, Any] = Field(default_factory=dict)
    pass2_low: float | None = None  # None: the scorer's default band (siglip: the turn-1 band)
    pass2_high: float | None = None
    guard: GuardSettings = Field(default_factory=GuardSettings)
    max_pairs_per_set: int = Field(100, ge=1)
    both_directions: bool = False
    filters: PairFilters = Field(default_factory=PairFilters)
    points_per_unit: int = Field(50_000, ge=1)
    block: int = Field(4096, ge=16)
    max_edges_per_node: int | None = Field(256, ge=1)  # turn-1 edges kept per point (strongest); None: all
    device: str = "auto"  # for the similarity products: auto | cpu | cuda
    task: str = "natural_edit"

    @model_validator(mode="after")
    def _check_band(self) -> PairConfig:
        if not -1.0 <= self.tau_low <= self.tau_high <= 1.0:
            raise ValueError(f"need -1 <= tau_low <= tau_high <= 1, got [{self.tau_low}, {self.tau_high}]")
        scorer_options(self.scorer, self.scorer_options)  # a typo in scorer options fails at spec load
        return self


def mining_params(c: PairConfig, scorer: Scorer) -> MiningParams:
    lo, hi = (c.tau_low, c.tau_high) if scorer.name == "siglip" else scorer.default_band
    lo = lo if c.pass2_low is None else c.pass2_low
    hi = hi if c.pass2_high is None else c.pass2_high
    g = c.guard
    min_score = None
    if g.check_scores:
        min_score = lo / 2 if g.min_pair_score is None else g.min_pair_score
    device = c.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    guard = GuardConfig(enabled=g.enabled, max_set_size=g.max_set_size,
                        min_pair_sim=c.tau_low - 0.2 if g.min_pair_sim is None else g.min_pair_sim,
                        min_pair_score=min_score, max_rounds=g.max_rounds, step=g.step)
    return MiningParams(tau_low=c.tau_low, tau_high=c.tau_high, pass2_low=lo, pass2_high=hi, block=c.block,
                        device=device, guard=guard, max_edges_per_node=c.max_edges_per_node)


@register
class Pair(Stage):
    kind = "pair"
    Config = PairConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"pairs": PAIRS}
    version = 2  # reads the cluster stage's members table

    # --- driver ------------------------------------------------------------------

    def __init__(self, config: PairConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        # a scorer with weights (object_model, face) loads them in setup: an actor pool, loaded once per actor
        self.uses_model = scorer_class(config.scorer).loads_model

    def _members_table(self) -> str | None:
        """The cluster stage's members table that goes with the clusters table (its sibling), if any."""
        clusters = self.ctx.input("clusters")[-1]
        for m in self.ctx.inputs.get("members") or []:
            if posixpath.dirname(m.rstrip("/")) == posixpath.dirname(clusters.rstrip("/")):
                return m
        return None

    def plan(self) -> list[WorkUnit]:
        """Units of whole clusters from the k per-cluster sizes alone (memory O(k)); no row is read here."""
        c: PairConfig = self.config
        make_scorer(c.scorer, c.scorer_options)  # a bad scorer or missing weights fail before any work
        table = self._members_table()
        meta = read_meta(table) if table else None
        if meta is None:  # a clusters table made elsewhere: partition it here (O(rows) on the driver)
            table = storage.join(self.ctx.stage_dir, SCRATCH)
            meta = build_members(self.ctx.input("clusters"), self.ctx.input("embeddings"), table)
        self._write_meta({"embedding_models": meta["embedding_models"], "members": table})
        return [WorkUnit(uid, {"members": table, "clusters": [lo, hi]})
                for uid, lo, hi in plan_ranges(np.asarray(meta["sizes"], np.int64), c.points_per_unit)]

    def _write_meta(self, meta: dict[str, Any]) -> None:
        fs, d = shards.resolve(self.ctx.stage_dir)
        fs.create_dir(d, recursive=True)
        shards.write_bytes_atomic(fs, posixpath.join(d, "_pair_meta.json"), json.dumps(meta).encode())

    def _read_meta(self) -> dict[str, Any]:
        fs, d = shards.resolve(self.ctx.stage_dir)
        p = posixpath.join(d, "_pair_meta.json")
        return shards.read_json(fs, p) if shards.exists(fs, p) else {}

    # --- workers -----------------------------------------------------------------

    def setup(self) -> None:
        c: PairConfig = self.config
        self.scorer = make_scorer(c.scorer, c.scorer_options)
        self.scorer.setup()
        self._loads = int(self.scorer.loads_model)  # reported by the next unit: summed, the number of model loads
        self.params = mining_params(c, self.scorer)
        self.store = None
        self.images = self.ctx.inputs.get("images") or []
        if self.scorer.needs_images:
            from acedata.lookup import ImageStore

            if not self.images:
                raise UserError(f"pair: scorer {c.scorer!r} needs image bytes; give the stage an images table "
                                f"(inputs: {{images: PATH}} or --images)")
            self.store = ImageStore(self.images)
        meta = self._read_meta()
        self.provenance = json.dumps({
            "stage": "pair", "scorer": self.scorer.model_id, "tau": [c.tau_low, c.tau_high],
            "pass2": [self.params.pass2_low, self.params.pass2_high],
            "guard": self.params.guard.__dict__, "max_pairs_per_set": c.max_pairs_per_set,
            "embedding_models": meta.get("embedding_models", []),
        }, sort_keys=True)

    def process(self, unit: WorkUnit) -> UnitResult:
        c: PairConfig = self.config
        t0 = time.perf_counter()
        part, x = read_clusters(unit.payload["members"], *unit.payload["clusters"])
        t_read = time.perf_counter() - t0
        ids = part.column("image_id").to_pylist()
        store = self.store

        def images_for(members: np.ndarray, names: list[str]) -> list[bytes | None]:
            wanted = [names[m] for m in members]
            got = store.image_bytes(wanted)
            return [got.get(i) for i in wanted]

        found, stats, mined = mine_unit(ids, part.column("cluster_id").to_numpy(), part.column("home").to_numpy(),
                                        part.column("other").to_numpy(), x, self.scorer, self.params,
                                        c.max_pairs_per_set, images_for)
        # the cleaning filters once per unit, vectorised over all its pairs; sizes only for the pairs' ends
        a, b = found["a"], found["b"]
        names = part.column("image_id").combine_chunks()
        ends = np.unique(np.concatenate([a, b]))
        w, h = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
        w[ends], h[ends] = image_sizes(self.images, [ids[e] for e in ends.tolist()]) if self.images else (np.nan, np.nan)
        why = reject_reasons(c.filters, found["sim"], w[a], h[a], w[b], h[b], same_rows(names, a, b))
        keep = why == ""
        table = pairs_table(c.task, self.scorer.name, self.provenance, names.take(pa.array(a[keep])),
                            names.take(pa.array(b[keep])), found["sim"][keep], found["score"][keep],
                            found["set_id"][keep], found["cluster_id"][keep], c.both_directions)
        counts = {k: int(v) for k, v in stats.flat().items()}
        counts.update({f"rejected_{k}": v for k, v in Counter(why[~keep].tolist()).items()})
        counts.update(mined)
        counts["border_points"] = int((part.column("other").to_numpy() >= 0).sum())
        counts["model_loads"], self._loads = self._loads, 0
        counts["sim_matmul_us"] = int(stats.band.matmul_seconds * 1e6)
        counts["read_us"] = int(t_read * 1e6)
        counts["mine_us"] = int((time.perf_counter() - t0 - t_read) * 1e6)
        return UnitResult({"pairs": table}, counts)

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        storage.delete_dir(storage.join(self.ctx.stage_dir, SCRATCH))  # the fallback's partitions, if any
        flops = counts.get("sim_flops", 0)
        secs = counts.get("sim_matmul_us", 0) / 1e6
        chain = {
            "sets_checked": counts.get("guard1_sets_checked", 0) + counts.get("guard2_sets_checked", 0),
            "sets_split": counts.get("guard1_sets_incoherent", 0) + counts.get("guard1_sets_oversize", 0)
            + counts.get("guard2_sets_incoherent", 0) + counts.get("guard2_sets_oversize", 0),
            "incoherent_pairs_before": counts.get("guard1_incoherent_pairs_before", 0)
            + counts.get("guard2_incoherent_pairs_before", 0),
            "incoherent_pairs_after": counts.get("guard2_incoherent_pairs_after", 0),
            "members_dropped": counts.get("guard1_members_dropped", 0) + counts.get("guard2_members_dropped", 0),
            "guard_seconds": round((counts.get("guard1_micros", 0) + counts.get("guard2_micros", 0)) / 1e6, 2),
            "mining_seconds": round(counts.get("mine_us", 0) / 1e6, 2),
        }
        return {"chaining": chain, "sim_gflops_per_s": round(flops / secs / 1e9, 2) if secs else None}

