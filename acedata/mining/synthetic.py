"""Generated embeddings with a known answer, for tests and benchmarks.

Each point is  a*coarse + b*fine + e*noise  (random near-orthogonal directions in d
dimensions, then unit-normalised): members of one fine group have cosine ~ a^2 + b^2,
members of different fine groups in one coarse cluster ~ a^2, other points ~ 0.
Near-duplicates copy a member with tiny noise (cosine ~ 1); bridges sit halfway between
two fine groups of one coarse cluster (cosine ~ a^2 + b^2/sqrt(2) to both) and belong
to no group, so a pair with a bridge is always wrong. Singletons have a fine direction of
their own (no true partner). Loose groups (`loose_fraction` of the fine groups) have a
weaker fine component (`loose_b2`), so their members sit near the bottom of the band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Generated:
    x: np.ndarray  # (n, d) float32, unit norm
    ids: list[str]
    fine: np.ndarray  # fine group per point; -1 for bridges
    coarse: np.ndarray
    dup_of: np.ndarray  # index of the original for near-duplicates, else -1

    def true_pairs(self) -> set[tuple[str, str]]:
        """Unordered same-group pairs, without (original, near-duplicate) pairs."""
        out = set()
        by_group: dict[int, list[int]] = {}
        for i, g in enumerate(self.fine.tolist()):
            if g >= 0:
                by_group.setdefault(g, []).append(i)
        for members in by_group.values():
            for ai, a in enumerate(members):
                for b in members[ai + 1 :]:
                    if self.dup_of[a] == b or self.dup_of[b] == a:
                        continue
                    out.add(tuple(sorted((self.ids[a], self.ids[b]))))
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def generate(
    n_coarse: int = 8,
    fine_per_coarse: int = 4,
    group_size: int = 8,
    d: int = 128,
    a2: float = 0.45,
    b2: float = 0.4,
    near_dups: int = 8,
    bridges: int = 8,
    seed: int = 0,
    singletons: int = 0,
    loose_fraction: float = 0.0,
    loose_b2: float | None = None,
) -> Generated:
    rng = np.random.default_rng(seed)
    e2 = 1.0 - a2 - b2
    coarse_dirs = _unit(rng.standard_normal((n_coarse, d)))
    fine_dirs = _unit(rng.standard_normal((n_coarse * fine_per_coarse, d)))
    n_groups = n_coarse * fine_per_coarse
    loose = set(rng.choice(n_groups, size=int(loose_fraction * n_groups), replace=False).tolist())
    xs, fine, coarse = [], [], []
    for c in range(n_coarse):
        for f in range(fine_per_coarse):
            g = c * fine_per_coarse + f
            noise = _unit(rng.standard_normal((group_size, d)))
            bg = loose_b2 if g in loose and loose_b2 is not None else b2
            xs.append(np.sqrt(a2) * coarse_dirs[c] + np.sqrt(bg) * fine_dirs[g] + np.sqrt(1.0 - a2 - bg) * noise)
            fine += [g] * group_size
            coarse += [c] * group_size
    x = np.concatenate(xs)
    fine_a, coarse_a = np.array(fine), np.array(coarse)
    dup_of = np.full(len(x), -1)
    extra, extra_fine, extra_coarse, extra_dup = [], [], [], []
    for i in rng.choice(len(x), size=near_dups, replace=False):
        extra.append(x[i] + 0.01 * rng.standard_normal(d))
        extra_fine.append(fine_a[i])
        extra_coarse.append(coarse_a[i])
        extra_dup.append(i)
    for _ in range(bridges):
        c = int(rng.integers(n_coarse))
        g1, g2 = rng.choice(fine_per_coarse, size=2, replace=False) + c * fine_per_coarse
        mid = _unit(fine_dirs[g1] + fine_dirs[g2])
        noise = _unit(rng.standard_normal(d))
        extra.append(np.sqrt(a2) * coarse_dirs[c] + np.sqrt(b2) * mid + np.sqrt(e2) * noise)
        extra_fine.append(-1)
        extra_coarse.append(c)
        extra_dup.append(-1)
    for k in range(singletons):
        c = int(rng.integers(n_coarse))
        own = _unit(rng.standard_normal(d))
        extra.append(np.sqrt(a2) * coarse_dirs[c] + np.sqrt(b2) * own + np.sqrt(e2) * _unit(rng.standard_normal(d)))
        extra_fine.append(n_groups + k)  # a group of one
        extra_coarse.append(c)
        extra_dup.append(-1)
    if extra:
        x = np.concatenate([x, np.array(extra)])
        fine_a = np.concatenate([fine_a, extra_fine])
        coarse_a = np.concatenate([coarse_a, extra_coarse])
        dup_of = np.concatenate([dup_of, extra_dup])
    return _shuffled(rng, x, fine_a, coarse_a, dup_of)


def _shuffled(rng: np.random.Generator, x: np.ndarray, fine: np.ndarray, coarse: np.ndarray,
              dup_of: np.ndarray) -> Generated:
    """The rows in a random order (no structure in the row order), duplicate links renumbered."""
    perm = rng.permutation(len(x))
    inv = np.argsort(perm)
    x, fine, coarse = x[perm], fine[perm], coarse[perm]
    dup_of = np.where(dup_of[perm] >= 0, inv[np.maximum(dup_of[perm], 0)], -1)
    ids = [f"img{i:07d}" for i in range(len(x))]
    return Generated(_unit(x).astype(np.float32), ids, fine, coarse, dup_of)


def bulk(n: int, d: int, n_coarse: int, group_size: int = 8, seed: int = 0, chunk: int = 65_536) -> np.ndarray:
    """Many unit vectors with the same structure (fine groups of `group_size` consecutive rows
    spread over `n_coarse` coarse directions), float16, generated chunk by chunk; no truth kept."""
    rng = np.random.default_rng(seed)
    coarse = _unit(rng.standard_normal((n_coarse, d))).astype(np.float32)
    out = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        groups = np.arange(s, s + m) // group_size
        uniq, inv = np.unique(groups, return_inverse=True)
        fine = _unit(np.random.default_rng([seed, int(uniq[0])]).standard_normal((len(uniq), d)).astype(np.float32))
        noise = _unit(rng.standard_normal((m, d)).astype(np.float32))
        out[s : s + m] = _unit(np.sqrt(0.45) * coarse[groups % n_coarse] + np.sqrt(0.4) * fine[inv]
                               + np.sqrt(0.15) * noise)
    return out
