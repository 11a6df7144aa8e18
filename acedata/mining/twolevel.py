"""Two-level (hierarchical) spherical k-means for large k: nothing on the driver grows with N or k*dim.

Flat k-means trains k centroids on ~256*k points on the driver (cost ~ k^2 * dim, memory
~ 256*k*dim). Above a threshold the cluster stage instead:

1. trains k1 ~ sqrt(k) coarse centroids on the driver, on the bounded sample of
   `acedata.mining.sample` (as flat training does, with k1 for k);
2. routes every row to its nearest coarse cell in a wave (`write_route`): each unit saves its
   per-cell row counts and, as scratch, its rows whose seeded id hash (`sample.hash_keys`) is
   below one threshold fixed by (N, k, config), sorted by cell;
3. splits k over the cells in proportion to their rows (`fine_counts`) and trains each cell's
   fine centroids in a wave of units over contiguous cell ranges (`train_cells`): a cell's
   sample is its `sample_size(k2)` smallest keys among those candidates, an id listed twice
   taking its last copy in scan order; a unit saves its cells' centroids as one .npy;
4. assigns rows (`Fine.top2`): the `search_cells` nearest coarse cells, then the two nearest
   fine centroids among those cells' (loaded one cell range at a time). Cluster ids are global
   fine ids (cell offsets + local ids), so `members` and `pair` are unchanged.

Every step is a function of the rows' content and the config: candidates by id hash, cells
and fine centroids trained per cell, never of unit sizes or worker counts.
"""

from __future__ import annotations

import math
import posixpath
from functools import partial

import numpy as np
import pyarrow as pa

from acedata import shards, storage
from acedata.mining import sample
from acedata.mining.kmeans import sample_size, search_stored, train_spherical
from acedata.mining.members import from_bytes, to_bytes
from acedata.mining.vectors import normalize
from acedata.stage import WorkUnit

ROUTE = "_route"  # scratch: route units' candidates (Parquet) and per-cell counts (_counts/*.npy)
FINE = "_fine"  # fine centroids, one .npy per fine unit: the assign units read them
COARSE = "coarse.npy"
COARSE_INFO = "coarse.json"  # written before COARSE: N, k, k1, dim, models
PLAN = "twolevel.json"  # written last: per-cell fine counts and the fine units' cell ranges
BLAS_MIN = 20  # FAISS searches fewer queries without BLAS (other rounding): pad to keep one path


def coarse_k(k: int, cap: int) -> int:
    return max(1, min(cap, k, round(math.sqrt(k))))


def fine_counts(rows: np.ndarray, k: int) -> np.ndarray:
    """Fine centroids per cell, about k * rows_c / N, summing to k (when k >= non-empty cells): every
    non-empty cell at least one, the remainder by largest fraction (ties to the lower cell), a
    surplus from those ones taken from the cells with the most; empty cells none."""
    rows = np.asarray(rows, np.int64)
    exact = k * rows / max(1, rows.sum())
    out = np.floor(exact).astype(np.int64)
    out[(rows > 0) & (out == 0)] = 1
    left = k - int(out.sum())
    if left > 0:
        frac = np.where(rows > 0, exact - np.floor(exact), -1.0)
        out[np.argsort(-frac, kind="stable")[:left]] += 1
    while left < 0 and out.max() > 1:  # at most one step per tiny cell
        out[int(np.argmax(out))] -= 1
        left += 1
    return out


def candidate_threshold(n: int, k: int, points_per_centroid: int) -> int | None:
    """Keys below this are fine-sample candidates: about twice the k * points_per_centroid needed."""
    return sample.threshold(k * points_per_centroid, n, sample.FIRST_FACTOR)


def route_dir(stage_dir: str) -> str:
    return posixpath.join(stage_dir, ROUTE)


def nearest(x: np.ndarray, centroids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m nearest centroids by inner product ((n, m) ids, -1 past the centroids; sims)."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    q = np.ascontiguousarray(x, dtype=np.float32)
    n = len(q)
    if n < BLAS_MIN:  # a row's result must not depend on how many rows share its batch
        q = np.concatenate([q, np.zeros((BLAS_MIN - n, q.shape[1]), np.float32)])
    sims, ids = index.search(q, min(m, len(centroids)))
    ids, sims = ids[:n].astype(np.int32), sims[:n].astype(np.float32)
    if ids.shape[1] < m:
        ids = np.concatenate([ids, np.full((n, m - ids.shape[1]), -1, np.int32)], axis=1)
        sims = np.concatenate([sims, np.full((n, m - sims.shape[1]), -np.inf, np.float32)], axis=1)
    return ids, sims


def write_route(unit: WorkUnit, stage_dir: str, ids: pa.Array, stored: np.ndarray, coarse: np.ndarray) -> None:
    """On a worker: the unit's per-cell counts and its candidates (sorted by cell, key), as scratch
    rewritten whole by a retry."""
    p = unit.payload["route"]
    cell = search_stored(stored, partial(nearest, centroids=coarse, m=1), 1)[0][:, 0]
    d = route_dir(stage_dir)
    storage.save_npy(posixpath.join(d, "_counts", f"{unit.id}.npy"), np.bincount(cell, minlength=len(coarse)))
    keys = sample.hash_keys(ids.to_pylist(), p["seed"])
    below = p["below"]
    take = np.arange(len(keys)) if below is None else np.flatnonzero(keys < np.uint64(int(below)))
    take = take[np.lexsort((take, keys[take], cell[take]))]  # by cell, key, then scan order
    out = pa.table({"cell": pa.array(cell[take], pa.int32()), "key": pa.array(keys[take], pa.uint64()),
                    "image_id": ids.take(pa.array(take, pa.int64())),
                    "embedding": to_bytes(stored[take])},
                   metadata={b"dtype": stored.dtype.name.encode()})
    storage.write_parquet(posixpath.join(d, f"{unit.id}.parquet"), out, compression="none", row_group_size=4096)


def cell_rows(route_files: list[str]) -> np.ndarray:
    """Rows per cell, summed over the route units' counts (memory O(k1))."""
    total = None
    for f in route_files:
        c = storage.load_npy(f)
        total = c.astype(np.int64) if total is None else total + c
    return total


def fine_units(k2: np.ndarray, cfg, points_per_unit: int) -> list[WorkUnit]:
    """Units over contiguous cell ranges, each about `points_per_unit` sample points."""
    units, lo, pts = [], None, 0
    want = [sample_size(int(m), cfg.max_points_per_centroid, cfg.min_points_per_centroid, cfg.max_train_points)
            if m else 0 for m in k2]
    for c in range(len(k2)):
        if lo is not None and pts + want[c] > points_per_unit and pts > 0:
            units.append((lo, c - 1))
            lo, pts = None, 0
        lo = c if lo is None else lo
        pts += want[c]
    if lo is not None:
        units.append((lo, len(k2) - 1))
    return [WorkUnit(f"fine-c{a:06d}", {"fine": {"lo": a, "hi": b, "k2": [int(m) for m in k2[a:b + 1]],
                                                 "want": want[a:b + 1], "seed": cfg.seed, "niter": cfg.niter,
                                                 "mppc": cfg.max_points_per_centroid, "nredo": cfg.nredo}})
            for a, b in units]


def read_cells(route: str, lo: int, hi: int) -> tuple[pa.Table, np.ndarray]:
    """Candidates of cells lo..hi from every route file, in file (= scan) order, and their vectors
    as stored (`cell_sample` normalizes the few it picks). Only row groups whose cell range meets
    [lo, hi] are read."""
    parts, dtype = [], "float32"
    files = shards.list_shards(route) if storage.exists_uri(route) else []
    for f in files:
        pf = shards.open_parquet(f)
        dtype = pf.schema_arrow.metadata[b"dtype"].decode()
        t = shards.read_between(pf, "cell", lo, hi)
        if t is not None:
            parts.append(t)
    if not parts:
        return pa.table({"cell": pa.array([], pa.int32()), "key": pa.array([], pa.uint64()),
                         "image_id": pa.array([], pa.string())}), np.zeros((0, 0), np.float32)
    t = pa.concat_tables(parts)
    emb = t.column("embedding").combine_chunks()
    dim = emb.type.byte_width // np.dtype(dtype).itemsize
    schema = pa.schema([], metadata={b"acedata.vector": f"{dtype},{dim}".encode()})
    return t.drop_columns(["embedding"]), from_bytes(emb, schema)


def cell_sample(t: pa.Table, x: np.ndarray, cell: int, want: int) -> np.ndarray:
    """A cell's training sample (unit-norm float32; `x` as stored): its `want` smallest keys, an id
    listed twice once (its last copy in scan order), ties by scan order."""
    rows = np.flatnonzero(t.column("cell").to_numpy() == cell)
    ids = t.column("image_id").take(pa.array(rows)).to_pylist()
    last = {i: r for i, r in zip(ids, rows.tolist())}  # later copies overwrite
    rows = np.array(sorted(last.values()), np.int64)
    keys = t.column("key").to_numpy()[rows]
    return normalize(x, rows[np.lexsort((rows, keys))[:want]])


def train_cells(unit: WorkUnit, stage_dir: str, coarse: np.ndarray, gpu: bool) -> int:
    """On a worker: fine centroids of cells lo..hi, k2 per cell (padded by repeating the last one
    where a cell has fewer sample points; a cell without any takes its coarse centroid), as one .npy."""
    p = unit.payload["fine"]
    t, x = read_cells(route_dir(stage_dir), p["lo"], p["hi"])
    out = []
    for i, (k2, want) in enumerate(zip(p["k2"], p["want"])):
        if not k2:
            continue
        c = p["lo"] + i
        xs = cell_sample(t, x, c, want) if len(x) else np.zeros((0, coarse.shape[1]), np.float32)
        if len(xs):
            cents = train_spherical(xs, k2, p["niter"], p["seed"] + c, gpu, p["mppc"], p["nredo"]).centroids
        else:
            cents = coarse[c:c + 1]
        if len(cents) < k2:
            cents = np.concatenate([cents, np.repeat(cents[-1:], k2 - len(cents), axis=0)])
        out.append(cents.astype(np.float32))
    cents = np.concatenate(out) if out else np.zeros((0, coarse.shape[1]), np.float32)
    storage.save_npy(posixpath.join(stage_dir, FINE, f"{unit.id}.npy"), cents)
    return len(cents)


class Fine:
    """An assign unit's view of the fine centroids: coarse centroids, per-cell offsets, and the
    fine files loaded one at a time (cells visited in order: each file once per unit)."""

    def __init__(self, stage_dir: str) -> None:
        self.stage_dir = stage_dir
        plan = storage.read_json(posixpath.join(stage_dir, PLAN))
        self.coarse = storage.load_npy(posixpath.join(stage_dir, COARSE))
        self.k2 = np.asarray(plan["k2"], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.k2)])
        self.file_of = np.zeros(len(self.k2), np.int64)
        self.units = plan["units"]  # [unit id, lo, hi]
        for j, (_, lo, hi) in enumerate(self.units):
            self.file_of[lo:hi + 1] = j
        self.search_cells = plan["search_cells"]
        self._loaded: tuple[int, np.ndarray] | None = None

    def _cell(self, c: int) -> np.ndarray:
        j = int(self.file_of[c])
        if self._loaded is None or self._loaded[0] != j:
            uid = self.units[j][0]
            self._loaded = (j, storage.load_npy(posixpath.join(self.stage_dir, FINE, f"{uid}.npy")))
        lo = self.units[j][1]
        a = self.offsets[c] - self.offsets[lo]
        return self._loaded[1][a:a + self.k2[c]]

    def top2(self, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n, 2) global fine ids, (n, 2) cosines) of the rows `stored` (normalized here, a block
        at a time: `search_stored`), as `kmeans.assign_top2` over all fine centroids of each
        row's `search_cells` nearest coarse cells."""
        n, m = len(stored), self.search_cells
        cells = search_stored(stored, partial(nearest, centroids=self.coarse, m=m), m)[0]
        best = np.full((n, 2), -1, np.int32)
        sims = np.full((n, 2), -np.inf, np.float32)
        # rows grouped by cell with one stable sort (a scan per cell costs n * search_cells * k1):
        # cells ascending, each cell's rows ascending (a row lists a cell at most once)
        flat = cells.ravel()
        at = np.flatnonzero(flat >= 0)
        at = at[np.argsort(flat[at], kind="stable")]
        starts = np.flatnonzero(np.diff(flat[at], prepend=-1))
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(at)]):
            c = int(flat[at[a]])
            if not self.k2[c]:
                continue
            rows = at[a:b] // cells.shape[1]
            cents = self._cell(c)
            ids, s = search_stored(stored, partial(nearest, centroids=cents, m=2), 2, rows)
            ids = np.where(ids >= 0, ids + self.offsets[c], -1).astype(np.int32)
            both_i = np.concatenate([best[rows], ids], axis=1)
            both_s = np.concatenate([sims[rows], s], axis=1)
            order = np.argsort(-both_s, axis=1, kind="stable")[:, :2]  # ties: cells visited earlier first
            best[rows] = np.take_along_axis(both_i, order, axis=1)
            sims[rows] = np.take_along_axis(both_s, order, axis=1)
        return best, sims
