"""The chaining guard: union-find joins A and C when A~B and B~C, so one bridge image
can merge two unrelated groups. After each union-find turn every set is checked and
offenders are split, with bounded work:

* check: a set is coherent when no two of its members have a direct similarity below
  `min_pair_sim` nor, after turn 2, a pass-2 score below `min_pair_score` (an S x S
  product; sets above CHECK_LIMIT are checked on a sample), and it is kept as it is when
  it also has at most `max_set_size` members. An oversize but coherent set is dense, not
  chained: it goes straight to the peel below;
* split, up to `max_rounds` rounds: re-run union-find on the set's own edges with the
  link threshold raised by `step` per round (by default the band up to `upper` is
  spread over the rounds; bridges are the weakest links, so they go first), and check
  each part again;
* a round that would leave more than half of a part as singletons does not split a
  chain, it shatters a dense part (hundreds of images at cosine ~0.9 all cross the
  raised threshold together), so that part is peeled instead of dropped;
* peel, for such parts and those still failing after the last round: parts larger than
  `BISECT_FACTOR * max_set_size` are first bisected (two far-apart seeds, each member to
  the nearer; deterministic, O(n d) per level), then each piece repeatedly gives up its
  medoid and the members most similar to it that are pairwise coherent (at most
  `max_set_size`, in-band members before near-duplicates above the band); every peel
  removes at least the medoid, so it ends.

Members left alone are dropped (a set of one makes no pair). Counters in GuardStats
measure how much chaining was found and undone. Components are found vectorised
(`acedata.unionfind.component_labels`), never by a Python loop over edges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from acedata.unionfind import component_labels, label_sets

BISECT_FACTOR = 4  # parts above this many times max_set_size are bisected before peeling
CHECK_LIMIT = 2048  # coherence of larger sets is checked on an evenly spaced sample of this many
STACK_MAX = 64  # sets up to this size are first checked in stacks of one size (see `_stacked_bad_counts`)
STACK_BYTES = 8 << 20  # gathered member rows per stack


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
        for k in _GUARD_FIELDS:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def items(self) -> list[tuple[str, int]]:
        return [(k, getattr(self, k)) for k in _GUARD_FIELDS]


_GUARD_FIELDS = tuple(f.name for f in fields(GuardStats))  # once, not per call (asdict deep-copies)


def _components(members: np.ndarray, src: np.ndarray, dst: np.ndarray, w: np.ndarray, t: float) -> list[np.ndarray]:
    """Connected components of `members` (sorted) using only edges with weight >= t (global ids)."""
    keep = w >= t
    a, b = np.searchsorted(members, src[keep]), np.searchsorted(members, dst[keep])
    return [members[g] for g in label_sets(component_labels(len(members), a, b))]


# member indices (S,) -> S x S pass-2 scores (NaN: unscored); a (G, S) stack of sets -> (G, S, S)
ScoreOf = Callable[[np.ndarray], np.ndarray]


def _bad_pairs(members: np.ndarray, emb: np.ndarray, cfg: GuardConfig, score_of: ScoreOf | None) -> np.ndarray:
    """S x S: True where two members are not coherent (embedding cosine, and pass-2 score if checked)."""
    x = emb[members]
    bad = x @ x.T < cfg.min_pair_sim
    if score_of is not None and cfg.min_pair_score is not None:
        sc = score_of(members)
        np.fill_diagonal(sc, np.inf)
        bad |= ~(sc >= cfg.min_pair_score)  # NaN counts as incoherent
    return bad


def _low_sims(rows: np.ndarray, t: float) -> np.ndarray:
    """(G, S, S): `x @ x.T < t` for each stacked set `x = rows[g]`, decided exactly as that
    per-set product decides it, from one einsum per diagonal of the whole stack (x_i . x_i+k
    for every i of every set) instead of one BLAS call per set (when the sets outnumber the
    diagonals). Two summation orders of a
    d-long product differ by at most 2 d u |x_i| |x_j| (u: unit roundoff), so only a set with
    a product within that of `t` could be decided differently: such sets are redone by `x @ x.T`."""
    g, s, d = rows.shape
    if g < s:  # fewer sets than diagonals: one product per set is fewer calls
        return np.stack([x @ x.T for x in rows]) < t
    eps = max(float(np.finfo(np.float32).eps), float(np.finfo(rows.dtype).eps))  # 2u
    sq = np.einsum("gnd,gnd->gn", rows, rows)  # the diagonal: squared norms
    margin = 2.02 * d * eps * np.abs(sq).max(axis=1, initial=0.0)  # twice the bound, with slack for sq's own error
    t32 = float(np.asarray(t, rows.dtype))  # `sims < t` compares in the rows' float type
    # every diagonal's products side by side, then one test and one scatter for all of them
    # (not three small numpy calls per diagonal)
    v = np.empty((g, s * (s + 1) // 2), sq.dtype)
    v[:, :s] = sq
    at = s
    for k in range(1, s):
        np.einsum("gnd,gnd->gn", rows[:, :s - k], rows[:, k:], out=v[:, at:at + s - k])
        at += s - k
    near = (np.abs(v.astype(np.float64) - t32) <= margin[:, None]).any(axis=1)
    a, b = _diagonal_index(s)
    low = np.empty((g, s, s), bool)
    low[:, a, b] = low[:, b, a] = v < t
    for q in np.flatnonzero(near).tolist():
        x = rows[q]
        low[q] = x @ x.T < t
    return low


@lru_cache(maxsize=128)
def _diagonal_index(s: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, i + k) for k = 0..s-1, diagonal after diagonal: the layout `_low_sims` fills."""
    i = np.arange(s)
    return np.concatenate([i[:s - k] for k in range(s)]), np.concatenate([i[k:] for k in range(s)])


def _stacked_bad_counts(sets: list[np.ndarray], emb: np.ndarray, cfg: GuardConfig,
                        score_of: ScoreOf | None, low_sims: dict | None = None,
                        sizes: np.ndarray | None = None) -> np.ndarray:
    """`_count_bad(_bad_pairs(...))` of every set of 2..STACK_MAX members, by index into `sets`
    (-1: a set not counted here).

    The sets of one size are stacked: one gather of their rows, and the comparisons, the
    pass-2 look-up and the counting over the whole stack instead of a dozen small numpy
    calls per set (thousands of sets of a few members per cluster: that overhead was the
    guard's cost). The similarity checks are the per-set ones exactly (`_low_sims`), so the
    counts are exactly the per-set counts. `low_sims` keeps, per (min_pair_sim, size), the
    sets checked and their `x @ x.T < min_pair_sim`: turn 2 mostly re-checks turn 1's sets as
    they are, found by array look-ups over a stack (no Python step per set)."""
    sizes = np.fromiter((len(m) for m in sets), np.int64, len(sets)) if sizes is None else sizes
    out = np.full(len(sets), -1, np.int64)
    check_scores = score_of is not None and cfg.min_pair_score is not None
    eligible = np.flatnonzero((sizes >= 2) & (sizes <= min(STACK_MAX, CHECK_LIMIT)))
    order = eligible[np.argsort(sizes[eligible], kind="stable")]  # by size, then by index
    cuts = np.flatnonzero(np.diff(sizes[order])) + 1
    for group in np.split(order, cuts) if len(order) else []:
        size = int(sizes[group[0]])
        step = max(1, STACK_BYTES // (size * emb.shape[1] * emb.dtype.itemsize))
        diag = np.arange(size)
        for c in range(0, len(group), step):
            part = group[c:c + step]
            stack = np.stack([sets[i] for i in part.tolist()])
            bad = np.empty((len(part), size, size), bool)
            known = _known_rows(low_sims, (cfg.min_pair_sim, size), stack)
            if known is not None:
                hit, at, store = known
                bad[hit] = store[2][at[hit]]
                new = np.flatnonzero(~hit)
            else:
                new = np.arange(len(part))
            if len(new):  # as _bad_pairs decides them, set by set
                bad[new] = _low_sims(emb[stack[new]], cfg.min_pair_sim)
                if low_sims is not None:
                    _remember(low_sims, (cfg.min_pair_sim, size), stack[new], bad[new])
            if check_scores:
                sc = score_of(stack)
                sc[:, diag, diag] = np.inf
                bad |= ~(sc >= cfg.min_pair_score)  # NaN counts as incoherent
            out[part] = (bad.sum(axis=(1, 2)) - bad[:, diag, diag].sum(axis=1)) // 2
    return out


def _known_rows(low_sims: dict | None, key: tuple, stack: np.ndarray):
    """(found, where, store) for the sets of `stack` (G, S) already in `low_sims[key]`, else None.
    A store holds its sets sorted by first member (disjoint sets: first members differ), so each
    set is found by one search and confirmed by comparing all its members."""
    store = low_sims.get(key) if low_sims is not None else None
    if store is None:
        return None
    first, rows, _ = store
    at = np.minimum(np.searchsorted(first, stack[:, 0]), len(first) - 1)
    hit = (rows[at] == stack).all(axis=1)
    return hit, at, store


def _remember(low_sims: dict, key: tuple, stack: np.ndarray, bad: np.ndarray) -> None:
    _, rows, low = low_sims.get(key, (np.zeros(0, np.int64), stack[:0], bad[:0]))
    rows, low = np.concatenate([rows, stack]), np.concatenate([low, bad])
    order = np.argsort(rows[:, 0], kind="stable")
    low_sims[key] = (rows[order, 0], rows[order], low[order])


def _bisect(members: np.ndarray, emb: np.ndarray, limit: int) -> list[np.ndarray]:
    """Pieces of at most `limit` members: split by the nearer of two far-apart seeds
    (the member least like the mean, then the member least like it), recursively."""
    out, stack = [], [members]
    while stack:
        part = stack.pop()
        if len(part) <= limit:
            out.append(part)
            continue
        x = emb[part]
        a = int(np.argmin(x @ x.sum(axis=0)))
        b = int(np.argmin(x @ x[a]))
        side = x @ x[a] >= x @ x[b]
        if side.all() or not side.any():  # identical vectors: halve by position
            side = np.arange(len(part)) < len(part) // 2
        stack += [part[~side], part[side]]
    out.sort(key=lambda p: int(p[0]))
    return out


def _count_bad(bad: np.ndarray) -> int:
    """Pairs i < j marked in a symmetric S x S matrix."""
    return int((bad.sum() - np.trace(bad)) // 2)


def _peel(members: np.ndarray, emb: np.ndarray, cfg: GuardConfig, score_of: ScoreOf | None,
          upper: float = 1.0) -> list[np.ndarray]:
    out = []
    for left in _bisect(members, emb, BISECT_FACTOR * cfg.max_set_size):
        out += _peel_piece(left, emb, cfg, score_of, upper)
    return out


def _peel_piece(left: np.ndarray, emb: np.ndarray, cfg: GuardConfig, score_of: ScoreOf | None,
                upper: float) -> list[np.ndarray]:
    out = []
    while len(left) > 1:
        x = emb[left]
        # the medoid under summed cosine similarity: argmax_i x_i . sum_j x_j (no S x S needed)
        seed = int(np.argmax(x @ x.sum(axis=0)))
        to_seed = x @ x[seed]
        cand = np.flatnonzero(to_seed >= cfg.min_pair_sim)
        # most similar first, but near-duplicates of the seed (above the band) last: a set
        # of the seed and its copies would make no in-band pair
        above = to_seed[cand] > upper
        cand = cand[np.lexsort((-to_seed[cand], above))]
        cand = np.concatenate([[seed], cand[cand != seed]])[: cfg.max_set_size]  # the seed first, kept while possible
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


def _group_edges(sets: list[np.ndarray], n: int, edges: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The edges sorted by the set holding them (both ends are in the same set), and where each set's start."""
    src, dst, w = edges
    label = np.full(n, -1, dtype=np.int64)
    for i, s in enumerate(sets):
        label[s] = i
    owner = label[src] if len(src) else np.zeros(0, np.int64)
    order = np.argsort(owner, kind="stable")
    src, dst, w, owner = src[order], dst[order], w[order], owner[order]
    return src, dst, w, np.searchsorted(owner, np.arange(len(sets) + 1))


@dataclass
class _Guard:
    """One guard pass's settings and counters, shared by the check, split and peel steps."""

    emb: np.ndarray
    cfg: GuardConfig
    score_of: ScoreOf | None
    stats: GuardStats

    def bad_count(self, members: np.ndarray) -> int:
        """Incoherent member pairs; above CHECK_LIMIT members, among an evenly spaced sample."""
        if len(members) > CHECK_LIMIT:
            members = members[np.linspace(0, len(members) - 1, CHECK_LIMIT).astype(np.int64)]
        return _count_bad(_bad_pairs(members, self.emb, self.cfg, self.score_of))

    def verdict(self, members: np.ndarray, count_before: bool, bad: int | None = None) -> str:
        """"ok", "big" (oversize but pairwise coherent: nothing chained, just dense) or "chained"
        (`bad`: the set's incoherent pairs when already counted)."""
        bad = self.bad_count(members) if bad is None else bad
        if count_before:
            self.stats.incoherent_pairs_before += bad
            self.stats.sets_oversize += len(members) > self.cfg.max_set_size
            self.stats.sets_incoherent += bad > 0
        if bad:
            return "chained"
        return "big" if len(members) > self.cfg.max_set_size else "ok"

    def split(self, members: np.ndarray, v: str, edges: tuple[np.ndarray, np.ndarray, np.ndarray],
              link_threshold: float, upper: float, out: list[np.ndarray]) -> list[np.ndarray]:
        """Re-link a failed set at rising thresholds; coherent parts go to `out`, the parts left
        (still chained after the last round, or dense) are returned for peeling."""
        cfg, stats = self.cfg, self.stats
        es, ed, ew = edges
        pending, to_peel = ([members], []) if v == "chained" else ([], [members])
        for r in range(1, cfg.max_rounds + 1):
            if not pending:
                break
            stats.split_rounds += 1
            step = cfg.step if cfg.step is not None else (upper - link_threshold) / (cfg.max_rounds + 1)
            t = link_threshold + step * r
            nxt = []
            for part in pending:
                mask = np.isin(es, part)
                comps = _components(part, es[mask], ed[mask], ew[mask], t)
                if 2 * sum(len(comp) < 2 for comp in comps) > len(part):
                    to_peel.append(part)  # shattered, not split: the part is dense, not chained
                    continue
                for comp in comps:
                    if len(comp) < 2:
                        stats.members_dropped += 1
                        continue
                    v = self.verdict(comp, False)
                    if v == "ok":
                        out.append(comp)
                    else:
                        (nxt if v == "chained" else to_peel).append(comp)
            pending = nxt
        return pending + to_peel

    def peel(self, part: np.ndarray, upper: float, out: list[np.ndarray]) -> None:
        self.stats.sets_peeled += 1
        kept = [c for c in _peel(part, self.emb, self.cfg, self.score_of, upper) if len(c) > 1]
        # sets kept whole or split were verified above; peeled ones are re-checked here
        self.stats.incoherent_pairs_after += sum(_count_bad(_bad_pairs(c, self.emb, self.cfg, self.score_of))
                                                 for c in kept)
        out.extend(kept)
        self.stats.members_dropped += len(part) - sum(len(c) for c in kept)


def guard_sets(
    sets: list[np.ndarray],
    emb: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    link_threshold: float,
    cfg: GuardConfig,
    upper: float = 1.0,
    score_of: ScoreOf | None = None,
    low_sims: dict | None = None,
) -> tuple[list[np.ndarray], GuardStats]:
    """Check every set (indices into `emb`, unit-norm rows) and split the offenders.

    `edges` are the (src, dst, weight) links that formed the sets, `link_threshold`
    the weight they were linked at; splitting raises it round by round towards `upper`.
    `score_of` gives pass-2 scores between members; with `cfg.min_pair_score` set, a
    pair scoring below it also makes a set incoherent (chaining through the scorer).
    `low_sims` (a dict shared by the guard passes over the same `emb`) saves the similarity
    checks of sets checked before.
    """
    stats = GuardStats()
    t0 = time.perf_counter()
    if not cfg.enabled:
        return [s for s in sets if len(s) > 1], stats
    src, dst, w, starts = _group_edges(sets, len(emb), edges)
    guard = _Guard(emb, cfg, score_of, stats)
    sizes = np.fromiter((len(m) for m in sets), np.int64, len(sets))
    counted = _stacked_bad_counts(sets, emb, cfg, score_of, low_sims, sizes)
    # the sets counted above: `verdict`'s counters and its "ok" for all of them at once
    live, done = sizes >= 2, counted >= 0
    stats.sets_checked += int(live.sum())
    stats.incoherent_pairs_before += int(counted[done].sum())
    stats.sets_oversize += int((done & (sizes > cfg.max_set_size)).sum())
    stats.sets_incoherent += int((counted > 0).sum())
    ok = done & (counted == 0) & (sizes <= cfg.max_set_size)
    out: list[np.ndarray] = [sets[i] for i in np.flatnonzero(ok).tolist()]
    for i in np.flatnonzero(live & ~ok).tolist():
        members = sets[i]
        if counted[i] >= 0:  # counted above: chained, or coherent but oversize
            v = "chained" if counted[i] > 0 else "big"
        else:
            v = guard.verdict(members, True)
        if v == "ok":
            out.append(members)
            continue
        mine = slice(starts[i], starts[i + 1])
        for part in guard.split(members, v, (src[mine], dst[mine], w[mine]), link_threshold, upper, out):
            guard.peel(part, upper, out)
    out.sort(key=lambda s: int(s[0]))
    stats.micros = int((time.perf_counter() - t0) * 1e6)
    return out, stats
