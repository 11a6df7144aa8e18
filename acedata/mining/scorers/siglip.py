"""`siglip`: the cosine of the embeddings already computed (no extra work).

The simplest scorer, and the one to copy for a new one: an Options model (here none),
`@register_scorer`, and `score_set` returning a score for every member pair.
"""

from __future__ import annotations

import numpy as np

from acedata.mining.pairs import set_pair_dots, upper_pairs
from acedata.mining.scorers.base import PairScores, Scorer, register_scorer


@register_scorer
class SiglipScorer(Scorer):
    name = "siglip"
    default_band = (0.0, 1.0)
    cosine_scores = True  # score_sets computes them with pairs.set_pair_dots (= pair_dots)

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        i, j = upper_pairs(len(emb))
        x = np.asarray(emb, dtype=np.float32)
        return PairScores(i, j, np.einsum("nd,nd->n", x[i], x[j]).astype(np.float32))

    def score_sets(self, emb: np.ndarray, sets: list[np.ndarray], images_of=None) -> list[PairScores]:
        """All sets' member pairs in a few large einsums (the same per-pair products as `score_set`)."""
        x = np.asarray(emb, dtype=np.float32)
        local = [upper_pairs(len(m)) for m in sets]
        score = set_pair_dots(x, sets)
        bounds = np.cumsum([len(i) for i, _ in local])[:-1]
        return [PairScores(i, j, sc) for (i, j), sc in zip(local, np.split(score, bounds))]

    def score_sets_flat(self, emb: np.ndarray, sets: list[np.ndarray], images_of=None):
        """`score_sets` laid end to end, never split into per-set arrays (the caller joins them again)."""
        x = np.asarray(emb, dtype=np.float32)
        local = [upper_pairs(len(m)) for m in sets]
        n = np.array([len(i) for i, _ in local], np.int64)
        if not local:
            z = np.zeros(0, np.int64)
            return z, z, np.zeros(0, np.float32), n
        return (np.concatenate([i for i, _ in local]).astype(np.int64, copy=False),
                np.concatenate([j for _, j in local]).astype(np.int64, copy=False), set_pair_dots(x, sets), n)
