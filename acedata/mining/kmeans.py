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
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), min(2, len(centroids)))
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
