"""The chaining guard: union-find joins A and C when A~B and B~C, so one bridge image
can merge two unrelated groups. After each union-find turn every set is checked and
offenders are split, with bounded work:

* check: a set is coherent when it has at most `max_set_size` members and no two of
  its members have a direct similarity below `min_pair_sim` (an S x S product, cheap
  because S is capped; oversize sets fail without it) nor, after turn 2, a pass-2
  score below `min_pair_score`;
* split, up to `max_rounds` rounds: re-run union-find on the set's own edges with the
  link threshold raised by `step` per round (by default the band up to `upper` is
  spread over the rounds; bridges are the weakest links, so they go first), and check
  each part again;
* peel, for parts still failing after the last round: repeatedly take the medoid of
  what is left and the members most similar to it that are pairwise coherent (at most
  `max_set_size`); every peel removes at least the medoid, so it ends.

Members left alone are dropped (a set of one makes no pair). Counters in GuardStats
measure how much chaining was found and undone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from acedata.mining.unionfind import UnionFind


@dataclass
class GuardConfig:
    enabled: bool = True
    max_set_size: int = 64
    min_pair_sim: float = 0.5
    min_pair_score: float | None = None  # turn 2: least pass-2 score between members (None: not checked)
    max_rounds: int = 4
    step: float | None = None  # None: (upper - link threshold) / (max_rounds + 1), i.e. spread over the band


@dataclass
class GuardStats:
    sets_checked: int = 0
    sets_oversize: int = 0
    sets_incoherent: int = 0
    split_rounds: int = 0
    sets_peeled: int = 0
    members_dropped: int = 0  # left as singletons by a split
    incoherent_pairs_before: int = 0  # member pairs below min_pair_sim in the sets checked
    incoherent_pairs_after: int = 0
    micros: int = 0  # time spent in the guard

    def add(self, other: GuardStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)




def _components(members: np.ndarray, src: np.ndarray, dst: np.ndarray, w: np.ndarray, t: float) -> list[np.ndarray]:
    """Connected components of `members` using only edges with weight >= t (global ids)."""
    local = {int(m): i for i, m in enumerate(members)}
    uf = UnionFind(len(members))
    keep = w >= t
    for a, b in zip(src[keep].tolist(), dst[keep].tolist()):
        uf.union(local[a], local[b])
    return [members[g] for g in uf.sets()]


ScoreOf = Callable[[np.ndarray], np.ndarray]  # member indices -> S x S pass-2 scores (NaN: unscored)


def _bad_pairs(members: np.ndarray, emb: np.ndarray, cfg: GuardConfig, score_of: ScoreOf | None) -> np.ndarray:
    """S x S: True where two members are not coherent (embedding cosine, and pass-2 score if checked)."""
    x = emb[members]
    bad = x @ x.T < cfg.min_pair_sim
    if score_of is not None and cfg.min_pair_score is not None:
        sc = score_of(members)
        np.fill_diagonal(sc, np.inf)
        bad |= ~(sc >= cfg.min_pair_score)  # NaN counts as incoherent
    return bad


def _peel(members: np.ndarray, emb: np.ndarray, cfg: GuardConfig, score_of: ScoreOf | None) -> list[np.ndarray]:
    out = []
    left = members.copy()
    while len(left) > 1:
        x = emb[left]
        # the medoid under summed cosine similarity: argmax_i x_i . sum_j x_j (no S x S needed)
        seed = int(np.argmax(x @ x.sum(axis=0)))
        to_seed = x @ x[seed]
        cand = np.flatnonzero(to_seed >= cfg.min_pair_sim)
        cand = cand[np.argsort(-to_seed[cand], kind="stable")][: cfg.max_set_size]
        cand = np.concatenate([[seed], cand[cand != seed]])  # the seed first, kept while possible
        # greedily drop the member with most incoherent partners until none is left
        while len(cand) > 1:
            bad = _bad_pairs(left[cand], emb, cfg, score_of).sum(axis=1)
            if bad.max() == 0:
                break
            worst = np.flatnonzero(bad == bad.max())
            worst = worst[worst != 0] if (worst != 0).any() else worst
            cand = np.delete(cand, worst[-1])
        out.append(np.sort(left[cand]))
        mask = np.ones(len(left), dtype=bool)
        mask[cand] = False
        mask[seed] = False
        left = left[mask]
    return out


def guard_sets(
    sets: list[np.ndarray],
    emb: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    link_threshold: float,
    cfg: GuardConfig,
    upper: float = 1.0,
    score_of: ScoreOf | None = None,
) -> tuple[list[np.ndarray], GuardStats]:
    """Check every set (indices into `emb`, unit-norm rows) and split the offenders.

    `edges` are the (src, dst, weight) links that formed the sets, `link_threshold`
    the weight they were linked at; splitting raises it round by round towards `upper`.
    `score_of` gives pass-2 scores between members; with `cfg.min_pair_score` set, a
    pair scoring below it also makes a set incoherent (chaining through the scorer).
    """
    stats = GuardStats()
    t0 = time.perf_counter()
    if not cfg.enabled:
        return [s for s in sets if len(s) > 1], stats
    src, dst, w = edges
    # edges grouped by the set holding them (both ends are in the same set)
    label = np.full(len(emb), -1, dtype=np.int64)
    for i, s in enumerate(sets):
        label[s] = i
    owner = label[src] if len(src) else np.zeros(0, np.int64)
    order = np.argsort(owner, kind="stable")
    src, dst, w, owner = src[order], dst[order], w[order], owner[order]
    starts = np.searchsorted(owner, np.arange(len(sets) + 1))

    def coherent(members: np.ndarray, count_before: bool) -> bool:
        if len(members) > cfg.max_set_size:
            if count_before:
                stats.sets_oversize += 1
            return False
        bad = int(np.triu(_bad_pairs(members, emb, cfg, score_of), 1).sum())
        if count_before:
            stats.incoherent_pairs_before += bad
            if bad:
                stats.sets_incoherent += 1
        return bad == 0

    out: list[np.ndarray] = []
    for i, members in enumerate(sets):
        if len(members) < 2:
            continue
        stats.sets_checked += 1
        if coherent(members, True):
            out.append(members)
            continue
        es, ed, ew = src[starts[i] : starts[i + 1]], dst[starts[i] : starts[i + 1]], w[starts[i] : starts[i + 1]]
        pending = [members]
        for r in range(1, cfg.max_rounds + 1):
            stats.split_rounds += 1
            step = cfg.step if cfg.step is not None else (upper - link_threshold) / (cfg.max_rounds + 1)
            t = link_threshold + step * r
            nxt = []
            for part in pending:
                mask = np.isin(es, part)
                for comp in _components(part, es[mask], ed[mask], ew[mask], t):
                    if len(comp) < 2:
                        stats.members_dropped += 1
                    elif coherent(comp, False):
                        out.append(comp)
                    else:
                        nxt.append(comp)
            pending = nxt
            if not pending:
                break
        for part in pending:
            stats.sets_peeled += 1
            kept = [c for c in _peel(part, emb, cfg, score_of) if len(c) > 1]
            out.extend(kept)
            stats.members_dropped += len(part) - sum(len(c) for c in kept)
    for s in out:
        stats.incoherent_pairs_after += int(np.triu(_bad_pairs(s, emb, cfg, score_of), 1).sum())
    out.sort(key=lambda s: int(s[0]))
    stats.micros = int((time.perf_counter() - t0) * 1e6)
    return out, stats
