"""Pair: embeddings + clusters -> `pairs` (task `natural_edit`), mined by a two-turn
union-find inside each coarse cluster (DESIGN.md §4).

The driver (`plan`) packs whole clusters into units of about `points_per_unit` points
and streams the embeddings into per-unit partitions (`acedata.mining.partition`; border
points go to both of their clusters); a unit then mines its clusters
(`acedata.mining.twopass`), enumerates the in-band pairs of each final set with a
deterministic cap (`acedata.mining.pairs`), keeps each border pair in one cluster only,
applies the cleaning filters and writes each pair once (unordered: source is the smaller
image_id) unless `both_directions`.
"""

from __future__ import annotations

import hashlib
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
from acedata.mining.pairs import in_band_pairs, set_key, upper_pairs
from acedata.mining.partition import (
    cluster_index,
    image_sizes,
    owned_here,
    plan_units,
    read_partition,
    write_partitions,
)
from acedata.mining.scorers import Scorer, make_scorer, scorer_class, scorer_options
from acedata.mining.twopass import MiningParams, MiningStats, mine_cluster
from acedata.schemas import PAIRS
from acedata.stage import Stage, UnitResult, WorkUnit, register

PARTITIONS = "_partitions"


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


def pair_id(task: str, source: str, target: str) -> str:
    return hashlib.sha256(f"{task}:{source}:{target}".encode()).hexdigest()[:32]


def reject_reasons(f: PairFilters, sim: np.ndarray, wa: np.ndarray, ha: np.ndarray, wb: np.ndarray,
                   hb: np.ndarray, same_id: np.ndarray | None = None) -> np.ndarray:
    """The cleaning filters, vectorised: per pair "" (kept) or the first reason that drops it.

    Sizes are NaN where unknown (embeddings-only runs); size and aspect filters then pass.
    """
    why = np.full(len(sim), "", dtype=object)

    def mark(mask: np.ndarray, reason: str) -> None:
        why[(why == "") & mask] = reason

    if same_id is not None:
        mark(same_id, "duplicate")  # one image listed twice (e.g. embedded in two tables)
    mark(sim >= f.duplicate_sim, "duplicate")
    if f.sim_min is not None:
        mark(sim < f.sim_min, "band")
    if f.sim_max is not None:
        mark(sim > f.sim_max, "band")
    with np.errstate(invalid="ignore", divide="ignore"):
        mark(np.fmin(np.fmin(wa, ha), np.fmin(wb, hb)) < f.min_side, "size")  # NaN compares False
        ra, rb = wa / np.maximum(ha, 1), wb / np.maximum(hb, 1)
        if f.max_aspect is not None:
            worst = np.maximum(np.maximum(ra, 1 / ra), np.maximum(rb, 1 / rb))
            mark(worst > f.max_aspect, "aspect")
        if f.max_aspect_change is not None:
            mark(np.maximum(ra, rb) / np.minimum(ra, rb) > f.max_aspect_change, "aspect")
    return why


@register
class Pair(Stage):
    kind = "pair"
    Config = PairConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"pairs": PAIRS}

    def _partition_dir(self) -> str:
        return storage.join(self.ctx.stage_dir, PARTITIONS)  # a URI: workers resolve it themselves

    # --- driver ------------------------------------------------------------------

    def __init__(self, config: PairConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        # a scorer with weights (object_model, face) loads them in setup: an actor pool, loaded once per actor
        self.uses_model = scorer_class(config.scorer).loads_model

    def plan(self) -> list[WorkUnit]:
        c: PairConfig = self.config
        make_scorer(c.scorer, c.scorer_options)  # a bad scorer or missing weights fail before any work
        index = cluster_index(self.ctx.input("clusters"))
        emb_tables = self.ctx.input("embeddings")
        self._write_meta({"embedding_models": _embedding_models(emb_tables)})
        unit_of, uids = plan_units(index.column("cluster_id").to_numpy(), index.column("cluster_id2").to_numpy(),
                                   c.points_per_unit)
        done = {posixpath.basename(p)[:-5] for p in _list(posixpath.join(self.ctx.stage_dir, "_done"))}
        sizes = image_sizes(self.ctx.inputs.get("images") or [], index.column("image_id"))
        write_partitions(index, emb_tables, sizes, self._partition_dir(), unit_of, uids, done)
        return [WorkUnit(uid, {"partition": uid}) for uid in uids]

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
        if self.scorer.needs_images:
            from acedata.lookup import ImageStore

            tables = self.ctx.inputs.get("images")
            if not tables:
                raise UserError(f"pair: scorer {c.scorer!r} needs image bytes; give the stage an images table "
                                f"(inputs: {{images: PATH}} or --images)")
            self.store = ImageStore(tables)
        meta = self._read_meta()
        self.provenance = json.dumps({
            "stage": "pair", "scorer": self.scorer.model_id, "tau": [c.tau_low, c.tau_high],
            "pass2": [self.params.pass2_low, self.params.pass2_high],
            "guard": self.params.guard.__dict__, "max_pairs_per_set": c.max_pairs_per_set,
            "embedding_models": meta.get("embedding_models", []),
        }, sort_keys=True)

    def process(self, unit: WorkUnit) -> UnitResult:
        c: PairConfig = self.config
        part, x = read_partition(self._partition_dir(), unit.payload["partition"])
        ids = part.column("image_id").to_pylist()
        cid = part.column("cluster_id").to_numpy()
        home, other = part.column("home").to_numpy(), part.column("other").to_numpy()
        # sizes as float, NaN where unknown (embeddings-only runs): size filters then do not apply
        w = part.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
        h = part.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
        p = self.params
        band, band2 = (p.tau_low, p.tau_high), (p.pass2_low, p.pass2_high)
        stats = MiningStats()
        reasons: Counter[str] = Counter()
        found: dict[str, list] = {k: [] for k in ("a", "b", "sim", "score", "set_id", "cluster_id")}
        final_sets = out_of_band = border_dups = 0
        t0 = time.perf_counter()
        bounds = np.flatnonzero(np.diff(cid)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(cid)]])):
            cluster_ids = ids[lo:hi]
            here = int(cid[lo])

            def images_for(members: np.ndarray, names: list[str] = cluster_ids) -> list[bytes | None]:
                wanted = [names[m] for m in members]
                got = self.store.image_bytes(wanted)
                return [got.get(i) for i in wanted]

            xs = x[lo:hi]
            hs, os_ = home[lo:hi], other[lo:hi]
            for fs in mine_cluster(xs, self.scorer, p, images_for, stats):
                final_sets += 1
                m = fs.members
                names = [cluster_ids[k] for k in m]

                ui, uj = upper_pairs(len(m))
                owned = owned_here(here, hs[m[ui]], os_[m[ui]], hs[m[uj]], os_[m[uj]])
                pa_, pb_, sims, oob, dup = in_band_pairs(xs[m], fs.pass2, band, band2, c.max_pairs_per_set,
                                                         set_key(names), owned)
                out_of_band += oob
                border_dups += dup
                key = set_key(names)
                found["a"].append(lo + m[pa_])
                found["b"].append(lo + m[pb_])
                found["sim"].append(sims)
                found["score"].append(fs.pass2[pa_, pb_])
                found["set_id"].append(np.full(len(pa_), int(key[:15], 16), np.int64))  # = set_id(names)
                found["cluster_id"].append(np.full(len(pa_), here, np.int32))
        # the cleaning filters once per unit, vectorised over all its pairs (not per set)
        f = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in found.items()}
        a, b = f["a"].astype(np.int64), f["b"].astype(np.int64)
        id_arr = np.array(ids, dtype=object)
        why = reject_reasons(c.filters, f["sim"], w[a], h[a], w[b], h[b], id_arr[a] == id_arr[b])
        reasons.update(why[why != ""].tolist())
        keep = why == ""
        cols = {"a": id_arr[a[keep]].tolist(), "b": id_arr[b[keep]].tolist(), "sim": [f["sim"][keep]],
                "score": [f["score"][keep]], "set_id": f["set_id"][keep].tolist(),
                "cluster_id": f["cluster_id"][keep].tolist()}
        counts = {k: int(v) for k, v in stats.flat().items()}
        counts.update({f"rejected_{k}": v for k, v in reasons.items()})
        counts["final_sets"] = final_sets
        counts["pairs_out_of_band"] = out_of_band  # enumerated from a set but outside a band: never written
        counts["pairs_border_elsewhere"] = border_dups  # border pairs left to the other cluster that mines them
        counts["border_points"] = int((other >= 0).sum())
        counts["model_loads"], self._loads = self._loads, 0
        counts["sim_matmul_us"] = int(stats.band.matmul_seconds * 1e6)
        counts["mine_us"] = int((time.perf_counter() - t0) * 1e6)
        return UnitResult({"pairs": self._pairs_table(cols)}, counts)

    def _pairs_table(self, cols: dict[str, list]) -> pa.Table:
        """Unordered pairs (source = the smaller image_id), or both directions."""
        c: PairConfig = self.config
        src = [min(a, b) for a, b in zip(cols["a"], cols["b"])]
        tgt = [max(a, b) for a, b in zip(cols["a"], cols["b"])]
        sim = np.concatenate(cols["sim"]) if cols["sim"] else np.zeros(0, np.float32)
        score = np.concatenate(cols["score"]) if cols["score"] else np.zeros(0, np.float32)
        set_ids, cluster_ids = cols["set_id"], cols["cluster_id"]
        if c.both_directions:
            src, tgt = src + tgt, tgt + src
            sim, score = np.concatenate([sim, sim]), np.concatenate([score, score])
            set_ids, cluster_ids = set_ids * 2, cluster_ids * 2
        n = len(src)
        return pa.table({
            "pair_id": [pair_id(c.task, s, t) for s, t in zip(src, tgt)],
            "source_id": pa.array(src, pa.string()), "target_id": pa.array(tgt, pa.string()),
            "task": [c.task] * n, "subtask": [self.scorer.name] * n,
            "cluster_id": pa.array(cluster_ids, pa.int32()), "set_id": pa.array(set_ids, pa.int64()),
            "sim_pass1": pa.array(sim.astype(np.float32)), "score_pass2": pa.array(score.astype(np.float32)),
            "provenance": [self.provenance] * n,
        })

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        storage.delete_dir(self._partition_dir())  # scratch: never part of a committed table
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


def _list(d: str) -> list[str]:
    fs, p = shards.resolve(d)
    if not shards.exists(fs, p):
        return []
    from pyarrow.fs import FileSelector

    return [i.path for i in fs.get_file_info(FileSelector(p)) if i.path.endswith(".json")]


def _embedding_models(tables: list[str]) -> list[str]:
    """The distinct `model` values of the embeddings tables (read column by column, shard by shard)."""
    models: set[str] = set()
    for path in tables:
        listed = shards.list_shards(path)
        if not listed:
            raise UserError(f"pair: the embeddings table {path} is empty")
        names = shards.open_parquet(listed[0]).schema_arrow.names
        if not {"image_id", "embedding"} <= set(names):
            raise UserError(f"pair: {path} needs columns image_id and embedding (has {names})")
        if "model" in names:
            for s in listed:
                models.update(v for v in shards.open_parquet(s).read(columns=["model"]).column("model")
                              .unique().to_pylist() if v is not None)
    return sorted(models)
