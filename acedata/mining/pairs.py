"""Pairs out of final sets: enumeration, the band check on every pair, a deterministic cap.

A set's members are coherent as a group, but coherence is checked against a looser floor
(`min_pair_sim`) and near-duplicates may sit in a set with their neighbours; so every
enumerated pair is checked against the turn-1 band on its own cosine and the pass-2 band
on its own score before it can be written, and the per-set cap samples among the pairs
that pass (keyed by the set's content, so reruns pick the same pairs).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j for a set of n, row-major (cached: sets repeat their sizes)."""
    i, j = np.triu_indices(n, 1)
    i.flags.writeable = j.flags.writeable = False
    return i, j


PAIR_CHUNK_BYTES = 2 << 20  # gathered rows per step of `pair_dots`: cache-sized (32 MB steps ran ~4x slower)


def pair_dots(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x[a[k]] . x[b[k]] for every k (float32), by the same per-pair einsum in cache-sized steps;
    the step length does not change a bit of the result (each product is one row's)."""
    out = np.empty(len(a), np.float32)
    step = max(1, PAIR_CHUNK_BYTES // (x.dtype.itemsize * max(1, x.shape[1])))
    for s in range(0, len(a), step):
        out[s:s + step] = np.einsum("nd,nd->n", x[a[s:s + step]], x[b[s:s + step]])
    return out


@lru_cache(maxsize=256)
def _diagonals(n: int) -> tuple[np.ndarray, ...]:
    """For each offset k = 1..n-1, where the pairs (i, i + k) sit in `upper_pairs(n)`'s row-major order."""
    out = []
    for k in range(1, n):
        i = np.arange(n - k)
        out.append(i * n - i * (i + 1) // 2 + k - 1)
    return tuple(out)


def set_pair_dots(x: np.ndarray, sets: list[np.ndarray]) -> np.ndarray:
    """`pair_dots` over every set's `upper_pairs` (rows of `x`; sets in order, pairs row-major),
    bit for bit, without gathering two rows per pair: the sets of one size are gathered once as
    a (G, S, d) stack, and the pairs (i, i + k) of all of them are one einsum over the stack's
    slices [:, :S-k] and [:, k:] (the same per-pair product over d as `pair_dots`). Sizes with
    fewer sets than diagonals go through `pair_dots` together (fewer calls that way)."""
    sizes = np.array([len(m) for m in sets], np.int64)
    start = np.concatenate([[0], np.cumsum(sizes * (sizes - 1) // 2)])
    out = np.empty(int(start[-1]), np.float32)
    by_size: dict[int, list[int]] = {}
    for k, n in enumerate(sizes.tolist()):
        if n >= 2:
            by_size.setdefault(n, []).append(k)
    # sizes with fewer sets than diagonals: their pairs gathered and multiplied at once (pair_dots)
    few = sorted(k for n, idx in by_size.items() if len(idx) < n - 1 for k in idx)
    if few:
        local = [upper_pairs(int(sizes[k])) for k in few]
        got = pair_dots(x, np.concatenate([sets[k][i] for k, (i, _) in zip(few, local)]),
                        np.concatenate([sets[k][j] for k, (_, j) in zip(few, local)]))
        out[np.concatenate([np.arange(start[k], start[k + 1]) for k in few])] = got
    for n, idx in by_size.items():
        if len(idx) < n - 1:
            continue
        diagonals = _diagonals(n)
        step = max(1, PAIR_CHUNK_BYTES // max(1, n * x.shape[1] * x.dtype.itemsize))
        for c in range(0, len(idx), step):
            part = idx[c:c + step]
            rows = x[np.stack([sets[k] for k in part])]
            got = np.empty((len(part), n * (n - 1) // 2), np.float32)
            for k, where in enumerate(diagonals, start=1):
                got[:, where] = np.einsum("gnd,gnd->gn", rows[:, :n - k], rows[:, k:])
            out[start[part][:, None] + np.arange(got.shape[1])] = got
    return out


def set_key(ids: list[str]) -> str:
    """A stable identity for a set of image ids (order-free)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def set_id(ids: list[str]) -> int:
    return int(set_key(ids)[:15], 16)  # fits int64


def sample_pairs(size: int, cap: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) arrays of all i < j pairs of a set of `size`, or of `cap` of them drawn
    deterministically from `key` (row-major order either way)."""
    total = size * (size - 1) // 2
    if total <= cap:
        return upper_pairs(size)
    rng = np.random.default_rng(int(key[:16], 16))
    flat = np.sort(rng.choice(total, size=cap, replace=False))
    # invert the row-major upper-triangle numbering: row i starts at i*size - i*(i+1)/2
    i = np.arange(size, dtype=np.int64)
    starts = i * size - i * (i + 1) // 2
    rows = np.searchsorted(starts, flat, side="right") - 1
    cols = flat - starts[rows] + rows + 1
    return rows, cols


def in_band_pairs(
    x: np.ndarray,
    pass2: np.ndarray,
    band: tuple[float, float],
    pass2_band: tuple[float, float],
    cap: int,
    key: str,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pairs (i < j, positions in the set) whose cosine lies in `band` and pass-2 score in
    `pass2_band`, at most `cap` of them drawn deterministically from `key`.

    `x`: the members' unit-norm rows; `pass2`: their S x S pass-2 scores (NaN: unscored).
    `allowed` (a mask over `upper_pairs(S)`) may veto pairs another unit writes (border pairs), before the cap.
    Returns (i, j, cosine, pairs that failed a band, pairs vetoed by `allowed`).
    """
    i, j = upper_pairs(len(x))
    sims = np.einsum("nd,nd->n", x[i], x[j])
    score = pass2[i, j]
    ok = (sims >= band[0]) & (sims <= band[1]) & (score >= pass2_band[0]) & (score <= pass2_band[1])
    out_of_band = int(len(ok) - ok.sum())
    vetoed = 0
    if allowed is not None:
        vetoed = int((ok & ~allowed).sum())
        ok &= allowed
    keep = np.flatnonzero(ok)
    if len(keep) > cap:
        rng = np.random.default_rng(int(key[:16], 16))
        keep = np.sort(rng.choice(keep, size=cap, replace=False))
    return i[keep], j[keep], sims[keep].astype(np.float32), out_of_band, vetoed


def enumerate_sets(
    x: np.ndarray,
    sets: list[tuple[np.ndarray, np.ndarray, int, str]],
    home: np.ndarray,
    other: np.ndarray,
    band: tuple[float, float],
    pass2_band: tuple[float, float],
    cap: int,
    scores_are_sims: bool = False,
) -> tuple[dict[str, np.ndarray], int, int]:
    """`in_band_pairs` for many sets at once, with border ownership: the same pairs, without
    per-set calls. `sets`: (members as rows of `x`, their pass-2 matrix, the cluster mined in,
    set key). Returns flat arrays (`a`, `b` rows of `x`, `sim`, `score`, `set`: index into
    `sets`), pairs that failed a band, and border pairs another cluster writes.

    `scores_are_sims`: the pass-2 scores are these very cosines (the `siglip` scorer computes
    them by `pair_dots` over the same rows), so they are taken as they are, not recomputed."""
    from acedata.mining.partition import owned_here

    if not sets:
        z = np.zeros(0, np.int64)
        return {"a": z, "b": z, "sim": np.zeros(0, np.float32), "score": np.zeros(0, np.float32), "set": z}, 0, 0
    local = [upper_pairs(len(m)) for m, _, _, _ in sets]
    a = np.concatenate([m[i] for (m, _, _, _), (i, _) in zip(sets, local)])
    b = np.concatenate([m[j] for (m, _, _, _), (_, j) in zip(sets, local)])
    score = np.concatenate([p2[i, j] for (_, p2, _, _), (i, j) in zip(sets, local)])
    counts = np.array([len(i) for i, _ in local])
    owner = np.repeat(np.arange(len(sets)), counts)
    here = np.array([h for _, _, h, _ in sets])[owner]
    # the per-pair products in_band_pairs computes
    sims = score.astype(np.float32) if scores_are_sims and x.dtype == np.float32 else \
        set_pair_dots(x, [m for m, _, _, _ in sets])
    ok = (sims >= band[0]) & (sims <= band[1]) & (score >= pass2_band[0]) & (score <= pass2_band[1])
    out_of_band = int(len(ok) - ok.sum())
    owned = owned_here(here, home[a], other[a], home[b], other[b])  # type: ignore[arg-type]
    vetoed = int((ok & ~owned).sum())
    ok &= owned
    per_set = np.bincount(owner[ok], minlength=len(sets))
    for k in np.flatnonzero(per_set > cap).tolist():  # the cap, as in_band_pairs draws it
        start = int(counts[:k].sum())
        keep = np.flatnonzero(ok[start:start + counts[k]])
        rng = np.random.default_rng(int(sets[k][3][:16], 16))
        chosen = np.zeros(counts[k], bool)
        chosen[np.sort(rng.choice(keep, size=cap, replace=False))] = True
        ok[start:start + counts[k]] = chosen
    sel = np.flatnonzero(ok)
    return {"a": a[sel], "b": b[sel], "sim": sims[sel], "score": score[sel].astype(np.float32),
            "set": owner[sel]}, out_of_band, vetoed
