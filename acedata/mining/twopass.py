"""Two-turn union-find inside one coarse cluster, then pair enumeration per final set.

Turn 1 links members whose embedding cosine lies in [tau_low, tau_high] (blocked, see
`similarity.band_edges`); turn 2 re-links the members of each turn-1 set by a scorer's
own band. The chaining guard checks and splits the sets after each turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from acedata.mining.chaining import GuardConfig, GuardStats, guard_sets
from acedata.mining.scorers.base import Scorer
from acedata.mining.similarity import BandStats, band_edges
from acedata.unionfind import components


@dataclass
class MiningParams:
    tau_low: float = 0.8
    tau_high: float = 0.95
    pass2_low: float = 0.0
    pass2_high: float = 1.0
    block: int = 4096
    device: str = "cpu"
    max_edges_per_node: int | None = 256  # turn-1 edges kept per point (its strongest); None: all
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class FinalSet:
    members: np.ndarray  # indices into the cluster's rows, sorted
    pass2: np.ndarray  # (s, s) pass-2 scores between the members (symmetric, by position in `members`)


@dataclass
class MiningStats:
    points: int = 0
    pass1_edges: int = 0
    pass1_sets: int = 0
    pass2_edges: int = 0
    pass2_sets: int = 0
    guard_pass1: GuardStats = field(default_factory=GuardStats)
    guard_pass2: GuardStats = field(default_factory=GuardStats)
    band: BandStats = field(default_factory=BandStats)

    def flat(self) -> dict[str, float]:
        out: dict[str, float] = {
            "points": self.points,
            "pass1_edges": self.pass1_edges,
            "pass1_sets": self.pass1_sets,
            "pass2_edges": self.pass2_edges,
            "pass2_sets": self.pass2_sets,
            "sim_flops": self.band.flops,
        }
        for name, g in (("guard1", self.guard_pass1), ("guard2", self.guard_pass2)):
            out.update({f"{name}_{k}": v for k, v in g.items()})
        return out


ImagesFor = Callable[[np.ndarray], list[bytes | None]]


def mine_cluster(
    emb: np.ndarray,
    scorer: Scorer,
    params: MiningParams,
    images_for: ImagesFor | None = None,
    stats: MiningStats | None = None,
) -> list[FinalSet]:
    """Final sets of one cluster (`emb`: unit-norm rows, float32)."""
    return mine_clusters(emb, np.array([0, len(emb)], np.int64), scorer, params, images_for, stats)


def mine_clusters(
    emb: np.ndarray,
    bounds: np.ndarray,
    scorer: Scorer,
    params: MiningParams,
    images_for: ImagesFor | None = None,
    stats: MiningStats | None = None,
) -> list[FinalSet]:
    """Final sets of every cluster of `emb` (cluster c: rows bounds[c]:bounds[c + 1]), cluster after
    cluster, members as rows of `emb`: the same sets, in the same order, as `mine_cluster` on each
    cluster's rows. Turn-1 similarities are per cluster (edges never cross a cluster, so neither
    do sets); everything after them (components, both guard passes, turn 2's scores) runs once
    over all the clusters' sets, not once per cluster (a unit holds ~50 clusters: the per-call
    numpy steps per set size were much of the non-kernel cost). A scorer that scores with a
    model is still called once per cluster, so its batches are the per-cluster ones."""
    stats = stats if stats is not None else MiningStats()
    n = len(emb)
    edges1 = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        stats.points += hi - lo
        if hi - lo < 2:
            continue
        src, dst, sim = band_edges(emb[lo:hi], params.tau_low, params.tau_high, params.block, params.device,
                                   stats.band, params.max_edges_per_node)
        edges1.append((src + lo, dst + lo, sim))
    if not edges1:
        return []
    src, dst, sim = (np.concatenate(e) for e in zip(*edges1))
    stats.pass1_edges += len(src)
    sets1 = components(n, src, dst, min_size=2)  # ordered by smallest member: cluster after cluster
    low_sims: dict = {}  # turn 2's guard re-checks turn 1's sets: their similarities once
    sets1, g1 = guard_sets(sets1, emb, (src, dst, sim), params.tau_low, params.guard, params.tau_high,
                           low_sims=low_sims)
    stats.guard_pass1.add(g1)
    stats.pass1_sets += len(sets1)
    if not sets1:
        return []
    src, dst, score, pairs_per_set = _score_sets(emb, bounds, sets1, scorer, images_for)
    rows1 = np.concatenate(sets1)  # the linked points, set after set
    sizes = np.array([len(m) for m in sets1], np.int64)
    owner = np.full(n, -1, np.int64)  # the turn-1 set of each linked point
    owner[rows1] = np.repeat(np.arange(len(sets1)), sizes)
    # every turn-1 set's S x S pass-2 matrix (NaN: unscored), laid end to end in one flat array,
    # so the scores between any members are one gather, for one set or a stack of them
    start = np.concatenate([[0], np.cumsum(sizes * sizes)])
    pos = np.zeros(n, np.int64)  # each linked point's place in its (sorted) turn-1 set
    pos[rows1] = np.arange(len(rows1)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    t = np.repeat(np.arange(len(sets1)), pairs_per_set)
    flat = np.full(int(start[-1]), np.nan, dtype=np.float32)
    flat[start[t] + src * sizes[t] + dst] = score
    flat[start[t] + dst * sizes[t] + src] = score
    first = np.repeat(np.cumsum(sizes) - sizes, pairs_per_set)  # where each pair's set starts among the linked rows
    a, b = rows1[first + src], rows1[first + dst]  # members are sorted, so a < b
    linked = (score >= params.pass2_low) & (score <= params.pass2_high)  # nan never links
    stats.pass2_edges += int(linked.sum())
    edges2 = (a[linked], b[linked], score[linked])
    sets2 = components(n, edges2[0], edges2[1], min_size=2)  # edges stay inside a turn-1 set

    def score_of(s: np.ndarray) -> np.ndarray:
        """Pass-2 scores between the members of one set (S,) -> (S, S), or of a stack (G, S) -> (G, S, S)."""
        k = owner[s[..., 0]]
        p = pos[s]
        return flat[start[k][..., None, None] + p[..., :, None] * sizes[k][..., None, None] + p[..., None, :]]

    sets2, g2 = guard_sets(sets2, emb, edges2, params.pass2_low, params.guard, params.pass2_high, score_of,
                           low_sims)
    stats.guard_pass2.add(g2)
    sets2.sort(key=lambda s: (int(owner[s[0]]), int(s[0])))  # by turn-1 set, then smallest member
    by_size: dict[int, list[int]] = {}
    for k, s in enumerate(sets2):
        by_size.setdefault(len(s), []).append(k)
    pass2: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(sets2)
    for idx in by_size.values():  # the sets' pass-2 matrices, one gather per set size
        for k, scores in zip(idx, score_of(np.stack([sets2[k] for k in idx]))):
            pass2[k] = scores
    out = [FinalSet(s, p) for s, p in zip(sets2, pass2)]
    stats.pass2_sets += len(out)
    return out


def _score_sets(emb: np.ndarray, bounds: np.ndarray, sets: list[np.ndarray], scorer: Scorer,
                images_for: ImagesFor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`scorer.score_sets_flat` over turn 1's sets (rows of `emb`, ordered by cluster): one call for
    a scorer whose scores are the embeddings' own per-pair products (the same bits however the sets
    are grouped), else one call per cluster, with its images fetched once per cluster."""
    if scorer.cosine_scores and not scorer.needs_images:
        return scorer.score_sets_flat(emb, sets, None)
    first = np.array([int(m[0]) for m in sets], np.int64)
    cuts = np.searchsorted(first, bounds)
    parts = []
    for c in range(len(bounds) - 1):
        a, b = int(cuts[c]), int(cuts[c + 1])
        if a == b:
            continue
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        local = [m - lo for m in sets[a:b]]
        images_of = None
        if scorer.needs_images:  # one fetch per cluster, not per set
            linked = np.concatenate(local)
            images = dict(zip(linked.tolist(), images_for(linked + lo)))
            images_of = lambda m, images=images: [images[k] for k in m.tolist()]
        parts.append(scorer.score_sets_flat(emb[lo:hi], local, images_of))
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def mine_unit(ids: list[str], cid: np.ndarray, home: np.ndarray, other: np.ndarray, x: np.ndarray, scorer: Scorer,
              params: MiningParams, cap: int, images_for: Callable[[np.ndarray, list[str]], list[bytes | None]],
              ) -> tuple[dict[str, np.ndarray], MiningStats, dict[str, int]]:
    """Mine every cluster of a unit (rows sorted by cluster): the candidate pairs of all final sets
    as flat arrays (`a`, `b` row indices into the unit, `sim`, `score`, `set_id`, `cluster_id`),
    the mining stats and counters. Each in-band pair of a set is kept (at most `cap` per set),
    and a border pair only in the one cluster that owns it."""
    from acedata.mining.pairs import enumerate_sets, set_key

    stats = MiningStats()
    band, band2 = (params.tau_low, params.tau_high), (params.pass2_low, params.pass2_high)
    sets: list[tuple[np.ndarray, np.ndarray, int, str]] = []  # every final set of the unit: rows, pass-2, cluster, key
    bounds = np.r_[0, np.flatnonzero(np.diff(cid)) + 1, len(cid)].astype(np.int64)
    for fs in mine_clusters(x, bounds, scorer, params, lambda m: images_for(m, ids), stats):
        sets.append((fs.members, fs.pass2, int(cid[fs.members[0]]), set_key([ids[k] for k in fs.members.tolist()])))
    final_sets = len(sets)
    # every set's pairs at once: band checks, border ownership and the per-set cap, vectorised
    got, out_of_band, border_dups = enumerate_sets(x, sets, home, other, band, band2, cap, scorer.cosine_scores)
    set_ids = np.array([int(key[:15], 16) for _, _, _, key in sets], np.int64)  # = pairs.set_id(names)
    clusters = np.array([here for _, _, here, _ in sets], np.int32)
    flat = {"a": got["a"].astype(np.int64), "b": got["b"].astype(np.int64), "sim": got["sim"],
            "score": got["score"], "set_id": set_ids[got["set"]] if sets else np.zeros(0, np.int64),
            "cluster_id": clusters[got["set"]] if sets else np.zeros(0, np.int32)}
    counters = {"final_sets": final_sets,
                "pairs_out_of_band": out_of_band,  # enumerated from a set but outside a band: never written
                "pairs_border_elsewhere": border_dups}  # border pairs left to the other cluster that mines them
    return flat, stats, counters
