"""Spherical (cosine) k-means with FAISS: train on a bounded sample, assign in batches.

faiss-gpu is used when it is installed and sees a GPU (`gpu="auto"`), else faiss-cpu.
Training samples at most `max_points_per_centroid * k` vectors, as FAISS itself does,
but we draw the sample ourselves (seeded) so the driver never loads more than that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from acedata.errors import UserError
from acedata.mining.vectors import normalize


def faiss_gpus() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the GPU symbols
        return 0


def use_gpu(gpu: str | bool) -> bool:
    if gpu == "auto":
        return faiss_gpus() > 0
    if gpu in (True, "true", "yes") and faiss_gpus() == 0:
        raise UserError("cluster: gpu: true but faiss sees no GPU (install faiss-gpu or set gpu: auto)")
    return bool(gpu in (True, "true", "yes"))


@contextmanager
def faiss_threads(n: float) -> Iterator[None]:
    """FAISS (and the OpenMP BLAS it calls) at `n` threads (at least one) inside the block, the
    caller's count after it. A unit takes the CPUs its resources ask for, as in a Ray worker (Ray
    sets OMP_NUM_THREADS to num_cpus): on a busy machine idle OpenMP threads spin, several times
    the CPU of one thread. Results do not depend on the thread count (FAISS splits rows or
    centroids, never one sum)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32, unit norm
    objective: float  # sum of inner products at the last iteration (higher is better)
    train_points: int
    gpu: bool


def train_spherical(
    sample: np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    gpu: str | bool = "auto",
    max_points_per_centroid: int = 256,
    nredo: int = 1,
) -> KMeansResult:
    """Train k unit-norm centroids on (already sampled) unit-norm rows."""
    import faiss

    x = np.ascontiguousarray(sample, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise UserError("cluster: no vectors to train on")
    k = min(k, n)  # a k above the number of points cannot be trained
    on_gpu = use_gpu(gpu)
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        gpu=on_gpu,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
        nredo=nredo,  # best of several seeded runs (escapes poor local optima on small k)
        verbose=False,
    )
    km.train(x)
    obj = float(km.obj[-1]) if len(km.obj) else float("nan")
    return KMeansResult(np.ascontiguousarray(km.centroids, dtype=np.float32), obj, n, on_gpu)


def derive_k(n: int, target_cluster_size: int, max_k: int | None = None) -> int:
    """k from the number of vectors: clusters of about `target_cluster_size` points.

    The pair stage's similarity work is sum(n_c^2) ~ N * target, so a fixed k either
    wastes FLOPs (few large clusters) or cuts groups apart (many tiny ones)."""
    k = max(1, round(n / max(1, target_cluster_size)))
    return min(k, max_k) if max_k else k


def sample_size(k: int, max_points_per_centroid: int, min_points_per_centroid: int = 39,
                max_train_points: int | None = None) -> int:
    """Training points: k * max_points_per_centroid, capped at max_train_points but never
    below k * min_points_per_centroid (FAISS warns below 39 per centroid). Training costs
    niter * sample * k * d, so an uncapped 256 * k grows as k^2."""
    want = k * max_points_per_centroid
    if max_train_points is not None:
        want = min(want, max(max_train_points, k * min_points_per_centroid))
    return want


def assign(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by inner product: (cluster_id int32, cosine similarity float32)."""
    ids, sims = assign_top2(x, centroids, gpu)
    return ids[:, 0].copy(), sims[:, 0].copy()


def assign_top2(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The two nearest centroids by inner product: ((n, 2) int32 ids, (n, 2) float32 cosines);
    with one centroid the second column is -1 / -inf."""
    return _top2(_flat_index(centroids, gpu), x, len(centroids))


def assign_top2_stored(stored: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`assign_top2(normalize(stored), ...)` without a float32 copy of every row (`search_stored`)."""
    index = _flat_index(centroids, gpu)
    return search_stored(stored, lambda x: _top2(index, x, len(centroids)), 2)


SEARCH_BYTES = 32 << 20  # float32 queries per FAISS search of `search_stored`


def search_blocks(n: int, d: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) over n queries of dim d, ~SEARCH_BYTES of float32 each, whose FAISS flat
    searches return bit for bit what one search over all n rows does. FAISS (CPU) takes a search's
    inner products from BLAS in blocks of `distance_compute_blas_query_bs` rows counted from its
    first row, or without BLAS (other rounding) when the search is small (nx * d below
    `distance_compute_blas_threshold` since faiss 1.14.2; before, nx below it: 20 rows, under one
    block). So ranges start at multiples of that block and hold enough rows for BLAS; a shorter
    tail joins the range before."""
    import faiss

    bs = max(1, int(faiss.cvar.distance_compute_blas_query_bs))
    small = int(faiss.cvar.distance_compute_blas_threshold)
    d = max(1, d)
    step = bs * max(1, SEARCH_BYTES // (4 * d * bs), -(-small // (d * bs)))
    out = [(a, min(n, a + step)) for a in range(0, n, step)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < step:
        out[-2:] = [(out[-2][0], n)]
    return out


def search_stored(stored: np.ndarray, search, width: int,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`search(normalize(stored))` (or of `normalize(stored, rows)`), whose results are (m, width)
    ids and sims, over `search_blocks` of the rows: the same bits, with one block's float32 copy in
    memory instead of every row's."""
    n = len(stored) if rows is None else len(rows)
    blocks = search_blocks(n, stored.shape[1])
    if len(blocks) <= 1:
        return search(normalize(stored) if rows is None else normalize(stored, rows))
    ids = np.empty((n, width), np.int32)
    sims = np.empty((n, width), np.float32)
    for a, b in blocks:
        ids[a:b], sims[a:b] = search(normalize(stored[a:b]) if rows is None else normalize(stored, rows[a:b]))
    return ids, sims


def _flat_index(centroids: np.ndarray, gpu: bool):
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def _top2(index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), min(2, k))
    if ids.shape[1] == 1:
        ids = np.concatenate([ids, np.full_like(ids, -1)], axis=1)
        sims = np.concatenate([sims, np.full_like(sims, -np.inf)], axis=1)
    return ids.astype(np.int32), sims.astype(np.float32)


def border_second(ids: np.ndarray, sims: np.ndarray, margin: float | None) -> np.ndarray:
    """Second cluster per point where it is within `margin` cosine of the first, else -1."""
    if margin is None:
        return np.full(len(ids), -1, dtype=np.int32)
    near = (ids[:, 1] >= 0) & (sims[:, 1] >= sims[:, 0] - margin)
    return np.where(near, ids[:, 1], -1).astype(np.int32)


def size_stats(sizes: np.ndarray, k: int) -> dict[str, float | int]:
    """Cluster-size statistics for a stage summary (`sizes` = members per cluster id)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    full = np.zeros(k, dtype=np.int64)
    full[: len(sizes)] = sizes[:k]
    nonempty = full[full > 0]
    if len(nonempty) == 0:
        return {"k": k, "nonempty": 0}
    return {
        "k": k,
        "nonempty": len(nonempty),
        "empty": int(k - len(nonempty)),
        "singletons": int((nonempty == 1).sum()),
        "min": int(nonempty.min()),
        "median": float(np.median(nonempty)),
        "mean": round(float(nonempty.mean()), 2),
        "p99": float(np.percentile(nonempty, 99)),
        "max": int(nonempty.max()),
    }
