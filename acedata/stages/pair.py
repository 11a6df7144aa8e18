"""Pair: embeddings + clusters -> `pairs` (task `natural_edit`), mined by a two-turn
union-find inside each coarse cluster (DESIGN.md §4).

The driver (`plan`) joins clusters to embeddings (and, when an images table is given,
image sizes), packs whole clusters into units of about `points_per_unit` points, and
writes each unit's rows to a partition file; a unit then mines its clusters
(`acedata.mining.twopass`), enumerates pairs per final set with a deterministic cap,
applies the cleaning filters and writes each pair once (unordered: source is the
smaller image_id) unless `both_directions`.
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
import pyarrow.compute as pc
from pydantic import Field, model_validator

from acedata import shards, storage
from acedata.config import StageConfig, Strict
from acedata.errors import UserError
from acedata.mining.chaining import GuardConfig
from acedata.mining.scorers import Scorer, make_scorer
from acedata.mining.twopass import MiningParams, MiningStats, mine_cluster, sample_pairs, set_id, set_key
from acedata.mining.vectors import fixed_list, normalize, to_matrix
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
    device: str = "auto"  # for the similarity products: auto | cpu | cuda
    task: str = "natural_edit"

    @model_validator(mode="after")
    def _check_band(self) -> PairConfig:
        if not -1.0 <= self.tau_low <= self.tau_high <= 1.0:
            raise ValueError(f"need -1 <= tau_low <= tau_high <= 1, got [{self.tau_low}, {self.tau_high}]")
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
                        device=device, guard=guard)


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

    def plan(self) -> list[WorkUnit]:
        c: PairConfig = self.config
        make_scorer(c.scorer, c.scorer_options)  # a bad scorer name fails before any work
        clusters = pa.concat_tables(shards.read_table(p, ["image_id", "cluster_id"]) for p in self.ctx.input("clusters"))
        emb = pa.concat_tables(_read_embeddings(p) for p in self.ctx.input("embeddings"))
        where = pc.index_in(clusters.column("image_id"), value_set=emb.column("image_id")).to_numpy(
            zero_copy_only=False)
        missing = np.isnan(where) if where.dtype.kind == "f" else where < 0
        if missing.any():
            raise UserError(f"pair: {int(missing.sum())} clustered image_ids have no embedding "
                            f"(clusters {self.ctx.input('clusters')}, embeddings {self.ctx.input('embeddings')})")
        where = where.astype(np.int64)
        cid = clusters.column("cluster_id").to_numpy()
        sizes = _image_sizes(self.ctx.inputs.get("images") or [], clusters.column("image_id"))
        models = emb.column("model").unique().to_pylist() if "model" in emb.column_names else []
        self._write_meta({"embedding_models": models})
        # whole clusters per unit, in cluster order; a cluster never spans units
        order = np.argsort(cid, kind="stable")
        cid_sorted = cid[order]
        bounds = np.flatnonzero(np.diff(cid_sorted)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(cid_sorted)]])
        units: list[WorkUnit] = []
        done = {posixpath.basename(p)[:-5] for p in _list(posixpath.join(self.ctx.stage_dir, "_done"))}
        pdir = self._partition_dir()
        have = {i.base_name for i in storage.listdir(pdir)}
        i = 0
        while i < len(starts):
            j, n = i, 0
            while j < len(starts) and (n == 0 or n + ends[j] - starts[j] <= c.points_per_unit):
                n += ends[j] - starts[j]
                j += 1
            uid = f"c{int(cid_sorted[starts[i]]):07d}"
            path = storage.join(pdir, f"{uid}.parquet")
            if uid not in done and f"{uid}.parquet" not in have:
                rows = order[starts[i] : ends[j - 1]]
                part = pa.table({
                    "image_id": clusters.column("image_id").take(pa.array(rows)),
                    "cluster_id": pa.array(cid[rows], pa.int32()),
                    "embedding": emb.column("embedding").take(pa.array(where[rows])),
                    "width": pa.array(sizes[0][rows], pa.float32()) if sizes else pa.nulls(len(rows), pa.float32()),
                    "height": pa.array(sizes[1][rows], pa.float32()) if sizes else pa.nulls(len(rows), pa.float32()),
                })
                storage.write_parquet(path, part, compression="none")  # scratch, read once: speed over size
            units.append(WorkUnit(uid, {"partition": path}))
            i = j
        return units

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
        part = storage.read_parquet(unit.payload["partition"])
        ids = part.column("image_id").to_pylist()
        x = normalize(to_matrix(part.column("embedding")))
        cid = part.column("cluster_id").to_numpy()
        # sizes as float, NaN where unknown (embeddings-only runs): size filters then do not apply
        w = part.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
        h = part.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
        stats = MiningStats()
        reasons: Counter[str] = Counter()
        cols: dict[str, list] = {k: [] for k in ("a", "b", "sim", "score", "set_id", "cluster_id")}
        final_sets = 0
        t0 = time.perf_counter()
        bounds = np.flatnonzero(np.diff(cid)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(cid)]])):
            cluster_ids = ids[lo:hi]

            def images_for(members: np.ndarray, names: list[str] = cluster_ids) -> list[bytes | None]:
                wanted = [names[m] for m in members]
                got = self.store.image_bytes(wanted)
                return [got.get(i) for i in wanted]

            xs = x[lo:hi]
            for fs in mine_cluster(xs, self.scorer, self.params, images_for, stats):
                final_sets += 1
                names = [cluster_ids[m] for m in fs.members]
                pa_, pb_ = sample_pairs(len(fs.members), c.max_pairs_per_set, set_key(names))
                ga, gb = fs.members[pa_], fs.members[pb_]
                sims = np.einsum("nd,nd->n", xs[ga], xs[gb])
                same = np.array([cluster_ids[a] == cluster_ids[b] for a, b in zip(ga.tolist(), gb.tolist())], bool)
                why = reject_reasons(c.filters, sims, w[lo + ga], h[lo + ga], w[lo + gb], h[lo + gb], same)
                reasons.update(why[why != ""].tolist())
                keep = why == ""
                cols["a"].extend(cluster_ids[k] for k in ga[keep].tolist())
                cols["b"].extend(cluster_ids[k] for k in gb[keep].tolist())
                cols["sim"].append(sims[keep])
                cols["score"].append(fs.pass2[pa_[keep], pb_[keep]])
                cols["set_id"].extend([set_id(names)] * int(keep.sum()))
                cols["cluster_id"].extend([int(cid[lo])] * int(keep.sum()))
        counts = {k: int(v) for k, v in stats.flat().items()}
        counts.update({f"rejected_{k}": v for k, v in reasons.items()})
        counts["final_sets"] = final_sets
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


def _read_embeddings(path: str) -> pa.Table:
    cols = ["image_id", "embedding"]
    schema = shards.open_parquet(shards.list_shards(path)[0]).schema_arrow if shards.list_shards(path) else None
    if schema is not None and "model" in schema.names:
        cols.append("model")
    if schema is not None and not {"image_id", "embedding"} <= set(schema.names):
        raise UserError(f"pair: {path} needs columns image_id and embedding (has {schema.names})")
    # one layout for every input (float16/32, list or fixed-size list): unit-norm fixed-size float16,
    # converted batch by batch so a large table is never held as float32
    batches = []
    for b in shards.iter_batches(path, cols, batch_size=65_536):
        t = pa.Table.from_batches([b])
        emb = fixed_list(normalize(to_matrix(t.column("embedding"))))
        batches.append(t.set_column(t.schema.get_field_index("embedding"), "embedding", emb))
    if not batches:
        raise UserError(f"pair: the embeddings table {path} is empty")
    return pa.concat_tables(batches)


def _image_sizes(tables: list[str], ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    if not tables:
        return None
    t = pa.concat_tables(shards.read_table(p, ["image_id", "width", "height"]) for p in tables)
    where = pc.index_in(ids, value_set=t.column("image_id"))
    w = pc.take(t.column("width"), where).to_numpy(zero_copy_only=False)
    h = pc.take(t.column("height"), where).to_numpy(zero_copy_only=False)
    return w, h
