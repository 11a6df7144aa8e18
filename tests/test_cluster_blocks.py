"""Cluster units read and search their vectors a block at a time (memory: one block, not the unit):
the same values and the same bits as reading and searching the unit whole."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from acedata.mining import kmeans, twolevel, vectors
from acedata.mining.kmeans import assign_top2, assign_top2_stored, search_blocks, search_stored


def _unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float16)


def test_blocks_start_on_faiss_blocks_and_stay_on_blas(monkeypatch):
    bs = faiss.cvar.distance_compute_blas_query_bs
    small = faiss.cvar.distance_compute_blas_threshold
    monkeypatch.setattr(kmeans, "SEARCH_BYTES", 1)  # the smallest blocks FAISS allows
    for n, d in [(0, 64), (5, 64), (bs, 64), (3 * bs + 10, 64), (10 * bs, 8), (7 * bs - 1, 768)]:
        blocks = search_blocks(n, d)
        assert [a for a, _ in blocks] == list(np.cumsum([0] + [b - a for a, b in blocks])[:-1])  # contiguous
        assert sum(b - a for a, b in blocks) == n
        assert all(a % bs == 0 for a, _ in blocks)
        if len(blocks) > 1:  # more than one search: each one large enough for BLAS
            assert all((b - a) * d >= small for a, b in blocks)


def test_search_stored_gives_the_bits_of_one_search(monkeypatch):
    monkeypatch.setattr(kmeans, "SEARCH_BYTES", 1)
    bs = faiss.cvar.distance_compute_blas_query_bs
    stored = _unit_rows(3 * bs + 37, 64)
    rng = np.random.default_rng(1)
    cents = vectors.normalize(rng.standard_normal((40, 64)).astype(np.float32))
    assert len(search_blocks(len(stored), 64)) == 3
    ids, sims = assign_top2(vectors.normalize(stored), cents)
    got_ids, got_sims = assign_top2_stored(stored, cents)
    assert np.array_equal(ids, got_ids) and np.array_equal(sims.view(np.int32), got_sims.view(np.int32))
    # a subset of rows, as a two-level cell searches them
    rows = np.sort(rng.choice(len(stored), 2 * bs + 5, replace=False))
    ids, sims = twolevel.nearest(vectors.normalize(stored)[rows], cents, 3)
    got_ids, got_sims = search_stored(stored, lambda x: twolevel.nearest(x, cents, 3), 3, rows)
    assert np.array_equal(ids, got_ids) and np.array_equal(sims.view(np.int32), got_sims.view(np.int32))


def test_read_vectors_batches_cross_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "READ_ROWS", 300)  # batches straddle the 1,000-row groups
    x = _unit_rows(3500, 16)
    t = pa.table({"image_id": [f"i{i}" for i in range(len(x))],
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)})
    path = str(tmp_path / "emb.parquet")
    pq.write_table(t, path, row_group_size=1000)
    payload = {"shard": path, "groups": [1, 2, 3]}
    for dtype in ("float16", np.float32):
        ids, got = vectors.read_vectors(payload, ["image_id"], dtype)
        want = vectors.to_matrix(vectors.read_unit(payload, ["embedding"]).column("embedding"), dtype)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert ids.column("image_id").to_pylist() == [f"i{i}" for i in range(1000, 3500)]
