"""Cluster's training sample drawn on workers (`acedata.mining.sample`): the waves give exactly
the single-process reference (`sample_rows`) at any unit size, the driver reads only the
candidate scratch (never an embeddings row), a short wave is followed by a wider one, and a
rerun after a crash in the sample wave keeps the units that had committed."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from driver_reads import DriverReads

from acedata import shards
from acedata.mining import sample
from acedata.pipeline import run_stages
from acedata.stages import cluster
from acedata.stages.cluster import ClusterConfig

N, DIM = 20_000, 64


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> str:
    """20k x 64 float16 vectors in 4 shards of 1000-row groups; 300 ids stored twice (another
    vector in a later shard: the last copy is the one sampled); a `model` column, partly null."""
    rng = np.random.default_rng(5)
    d = tmp_path_factory.mktemp("emb") / "emb"
    d.mkdir()
    ids = [f"img{i:06d}" for i in range(N)]
    again = [ids[i] for i in rng.choice(N // 2, 300, replace=False)]  # copies of first-half ids ...
    for s, rows in enumerate(np.array_split(np.arange(N), 4)):
        names = [ids[i] for i in rows] + (again if s == 3 else [])  # ... stored again in the last shard
        x = rng.normal(size=(len(names), DIM)).astype(np.float16)
        model = ["m-a" if s < 2 else "m-b"] * len(names)
        model[0] = None
        pq.write_table(pa.table({"image_id": names, "embedding": pa.array(x.tolist(), pa.list_(pa.float16(), DIM)),
                                 "model": model}), str(d / f"part-{s}.parquet"), row_group_size=1000)
    return str(d)


def _cfg(emb: str, want: int, rows_per_unit: int) -> ClusterConfig:
    return ClusterConfig(name="cluster", k=4, niter=2, max_points_per_centroid=10**9, min_points_per_centroid=1,
                         max_train_points=want, rows_per_unit=rows_per_unit, gpu=False, border_margin=None,
                         inputs={"embeddings": emb})


def _trained_on(monkeypatch) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    train = cluster.train_spherical

    def spy(x, *a, **kw):
        seen.append(np.array(x))
        return train(x, *a, **kw)

    monkeypatch.setattr(cluster, "train_spherical", spy)
    return seen


@pytest.mark.parametrize("want,rows_per_unit", [(500, 1000), (3000, 2500), (3000, 60_000), (19_000, 1000),
                                                (50_000, 7000)])
def test_waves_equal_the_reference(tmp_path, emb, monkeypatch, want, rows_per_unit):
    """The sample handed to k-means equals `sample_rows` bit for bit (small and large samples,
    one wave of all rows when want >= N, several unit sizes), as do the models recorded."""
    seen = _trained_on(monkeypatch)
    out = run_stages([_cfg(emb, want, rows_per_unit)], str(tmp_path / "run"), executor="local")["stages"][0]
    models: set[str] = set()
    ref = sample.sample_rows([emb], want, 0, models)
    assert len(seen) == 1 and seen[0].shape == ref.shape and np.array_equal(seen[0], ref)
    assert len(ref) <= want and (want < N or len(ref) == N)  # an id stored twice is one point
    assert out["kmeans"]["embedding_models"] == sorted(models) == ["m-a", "m-b"]
    assert out["kmeans"]["vectors"] == N + 300
    assert not os.path.exists(tmp_path / "run" / "cluster" / sample.SCRATCH)  # scratch removed
    assert set(out["counts"]) == {"inputs", "border_points", "clusters", "members"}  # sample units count nothing


def test_short_wave_is_followed_by_a_wider_one(tmp_path, emb, monkeypatch):
    """A first threshold that lets through fewer than `want` rows: another wave (new unit ids),
    the same sample."""
    monkeypatch.setattr(sample, "FIRST_FACTOR", 0.25)
    planned: list[str] = []
    units = sample.sample_units

    def spy(*a, **kw):
        got = units(*a, **kw)
        planned.extend(u.id for u in got)
        return got

    monkeypatch.setattr(sample, "sample_units", spy)
    seen = _trained_on(monkeypatch)
    run_stages([_cfg(emb, 2000, 5000)], str(tmp_path / "run"), executor="local")
    assert {i.split("-")[0] for i in planned} == {"sample0", "sample1"}
    assert np.array_equal(seen[0], sample.sample_rows([emb], 2000, 0))


def test_driver_reads_only_candidates(tmp_path, emb, monkeypatch):
    """While plan / next_wave run, a Parquet row read outside the sample scratch raises (footers
    stay readable); the rows the driver reads are the candidates, about 2 * want of N."""
    reads = DriverReads(monkeypatch)
    table_read = pq.read_table

    def no_rows(*a, **kw):
        if reads.driver:
            raise AssertionError("the driver read rows (read_table)")
        return table_read(*a, **kw)

    monkeypatch.setattr(pq, "read_table", no_rows)
    seen = _trained_on(monkeypatch)
    run_stages([_cfg(emb, 1000, 3000)], str(tmp_path / "run"), executor="local")
    assert np.array_equal(seen[0], sample.sample_rows([emb], 1000, 0))
    # candidate columns once, then the vectors of the candidate files: ~2 * want twice, far below N
    assert 1000 < reads.rows < 6000


def test_rerun_after_a_crash_in_the_sample_wave(tmp_path, emb, monkeypatch):
    """Units committed before the crash are not redone; the output equals a clean run's."""
    calls: list[str] = []
    crashed: list[str] = []
    write = sample.write_candidates

    def crashy(unit, stage_dir):
        calls.append(unit.id)
        if len(calls) == 4 and not crashed:
            crashed.append(unit.id)
            raise RuntimeError("worker died")
        return write(unit, stage_dir)

    monkeypatch.setattr(sample, "write_candidates", crashy)
    run = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="worker died"):
        run_stages([_cfg(emb, 1000, 3000)], run, executor="local")
    first = list(calls)
    calls.clear()
    run_stages([_cfg(emb, 1000, 3000)], run, executor="local")
    assert not set(first[:3]) & set(calls) and first[3] in calls
    clean = str(tmp_path / "clean")
    run_stages([_cfg(emb, 1000, 3000)], clean, executor="local")
    for t in ("clusters", "members"):
        a = shards.read_table(os.path.join(run, "cluster", t)).sort_by("image_id")
        b = shards.read_table(os.path.join(clean, "cluster", t)).sort_by("image_id")
        assert a.equals(b)
