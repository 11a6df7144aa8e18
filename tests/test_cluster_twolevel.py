"""Two-level k-means (`acedata.mining.twolevel`), used above `two_level_min_k`: on well-separated
blobs it finds the same partition as flat k-means (up to relabelling); its output depends on
content and config only (two unit sizes, local vs Ray); a rerun after a crash in the fine
training wave keeps the committed units and equals a clean run; the driver reads no embedding
rows (only the coarse sample's candidates)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from driver_reads import DriverReads

from acedata import shards
from acedata.mining import sample, twolevel
from acedata.pipeline import run_stages
from acedata.stages.cluster import ClusterConfig

BLOBS, PER, DIM = 40, 150, 32


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> str:
    """40 tight, far-apart blobs of 150 float16 vectors in 3 shards of 500-row groups, rows shuffled."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(BLOBS, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.repeat(centers, PER, axis=0) + 0.01 * rng.normal(size=(BLOBS * PER, DIM))
    label = np.repeat(np.arange(BLOBS), PER)
    order = rng.permutation(len(x))
    d = tmp_path_factory.mktemp("blobs") / "emb"
    d.mkdir()
    for s, rows in enumerate(np.array_split(order, 3)):
        pq.write_table(pa.table({"image_id": [f"b{label[i]:03d}-{i:05d}" for i in rows],
                                 "embedding": pa.array(x[rows].astype(np.float16).tolist(), pa.list_(pa.float16(), DIM))}),
                       str(d / f"part-{s}.parquet"), row_group_size=500)
    return str(d)


def _cfg(emb: str, rows_per_unit: int = 1000, two: bool = True, **kw) -> ClusterConfig:
    kw.setdefault("k", BLOBS)
    return ClusterConfig(name="cluster", niter=10, nredo=3, rows_per_unit=rows_per_unit, gpu=False,
                         two_level_min_k=8 if two else None, inputs={"embeddings": emb}, **kw)


def _clusters(run: str) -> pa.Table:
    return shards.read_table(os.path.join(run, "cluster", "clusters")).sort_by("image_id")


def test_same_partition_as_flat(tmp_path, blobs):
    """k = 2 per blob (k = blobs trips plain k-means' random init, flat or not): both split every
    blob in two and never put two blobs in one cluster, so both give the blob partition once
    clusters are merged by blob."""
    k = 2 * BLOBS
    two = run_stages([_cfg(blobs, k=k)], str(tmp_path / "two"), executor="local")["stages"][0]
    flat = run_stages([_cfg(blobs, two=False, k=k)], str(tmp_path / "flat"), executor="local")["stages"][0]
    assert "two_level" in two["kmeans"] and "two_level" not in flat["kmeans"]
    assert two["kmeans"]["k"] == k and two["kmeans"]["two_level"]["coarse_k"] == 9
    a, b = _clusters(str(tmp_path / "two")), _clusters(str(tmp_path / "flat"))
    truth = [i.split("-")[0] for i in a.column("image_id").to_pylist()]
    for t in (a, b):
        cid = t.column("cluster_id").to_pylist()
        blob_of = dict(zip(cid, truth))
        assert len(set(zip(truth, cid))) == len(set(cid)) == k  # no cluster mixes blobs; none empty
        assert len(set(blob_of.values())) == BLOBS
    assert two["cluster_sizes"]["nonempty"] == k
    members = shards.read_table(os.path.join(tmp_path / "two", "cluster", "members"))
    assert members.num_rows >= BLOBS * PER
    for d in (sample.SCRATCH, twolevel.ROUTE):  # scratch removed
        assert not os.path.exists(tmp_path / "two" / "cluster" / d)


def test_fine_counts_sum_to_k():
    rows = np.array([0, 5, 1, 1000, 3, 0, 200])
    k2 = twolevel.fine_counts(rows, 50)
    assert k2.sum() == 50 and (k2[rows == 0] == 0).all() and (k2[rows > 0] >= 1).all()
    assert k2.argmax() == 3
    assert twolevel.fine_counts(np.array([1, 1, 1, 0]), 2).tolist() == [1, 1, 1, 0]  # k < cells: one each


def test_unit_sizes_and_ray_give_the_same_output(tmp_path, blobs, ray_local):
    # few points per centroid: the route units keep ~40% of the rows as fine-sample candidates
    kw = {"k": 300, "max_points_per_centroid": 4, "min_points_per_centroid": 2, "border_margin": 0.05}
    runs = [("a", 1000, "local"), ("b", 3000, "local"), ("c", 500, "ray")]
    out = {}
    for name, rpu, ex in runs:
        out[name] = run_stages([_cfg(blobs, rpu, **kw)], str(tmp_path / name), executor=ex)["stages"][0]
    assert out["a"]["kmeans"]["k"] == 300 and "two_level" in out["a"]["kmeans"]
    assert twolevel.candidate_threshold(BLOBS * PER, 300, 4) is not None
    ref = _clusters(str(tmp_path / "a"))
    assert ref.column("cluster_id2").null_count < ref.num_rows  # some border points
    for name in ("b", "c"):
        assert _clusters(str(tmp_path / name)).equals(ref), name
        assert out[name]["cluster_sizes"] == out["a"]["cluster_sizes"]


def test_rerun_after_a_crash_in_the_fine_wave(tmp_path, blobs, monkeypatch):
    calls: list[str] = []
    crashed: list[str] = []
    train = twolevel.train_cells

    def crashy(unit, *a, **kw):
        calls.append(unit.id)
        if len(calls) == 3 and not crashed:
            crashed.append(unit.id)
            raise RuntimeError("worker died")
        return train(unit, *a, **kw)

    monkeypatch.setattr(twolevel, "train_cells", crashy)
    cfg = _cfg(blobs, 300, k=200, max_points_per_centroid=8, min_points_per_centroid=2)
    run = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="worker died"):
        run_stages([cfg], run, executor="local")
    first = list(calls)
    calls.clear()
    run_stages([cfg], run, executor="local")
    assert len(first) == 3 and not set(first[:2]) & set(calls) and first[2] in calls
    clean = str(tmp_path / "clean")
    run_stages([cfg], clean, executor="local")
    for t in ("clusters", "members"):
        a = shards.read_table(os.path.join(run, "cluster", t)).sort_by([("image_id", "ascending"),
                                                                         ("cluster_id", "ascending")])
        b = shards.read_table(os.path.join(clean, "cluster", t)).sort_by([("image_id", "ascending"),
                                                                           ("cluster_id", "ascending")])
        assert a.equals(b)


def test_driver_reads_no_embedding_rows(tmp_path, blobs, monkeypatch):
    """While plan / next_wave / finish run, a Parquet row read outside the coarse sample's scratch
    raises: route candidates and fine centroids stay on workers."""
    reads = DriverReads(monkeypatch)
    fine_loads = []
    fine_init = twolevel.Fine.__init__

    def spy(self, *a, **kw):
        fine_loads.append(reads.depth)
        return fine_init(self, *a, **kw)

    monkeypatch.setattr(twolevel.Fine, "__init__", spy)
    out = run_stages([_cfg(blobs)], str(tmp_path / "run"), executor="local")["stages"][0]
    assert out["kmeans"]["k"] == BLOBS and fine_loads and not any(fine_loads)  # fine centroids: workers only
