"""The embeddings check as units (`acedata.embeddings_input.EmbeddingsCheck`): the same verdicts as
the serial scan it replaced, on both executors, with the ids bucketed on workers, not the driver."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acedata import embeddings_input, runtime, shuffle
from acedata.errors import UserError


def _write(path, ids, d=8, seed=0, row_group_size=None, **bad) -> None:
    v = np.random.default_rng(seed).normal(size=(len(ids), d)).astype(np.float16)
    for (i, j), x in bad.get("at", {}).items():
        v[i, j] = x
    col = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), d)
    pq.write_table(pa.table({"image_id": ids, "embedding": col}), path, row_group_size=row_group_size)


def _table(tmp_path, name="t", n_shards=4, rows=30):
    d = tmp_path / name
    d.mkdir()
    for s in range(n_shards):
        _write(d / f"s{s}.parquet", [f"{name}-{s}-{k}" for k in range(rows)], seed=s, row_group_size=7)
    return d


@pytest.fixture
def small_units(monkeypatch):
    """Units of ~10 rows (whole row groups of 7), buckets of ~10 ids: many of each on a tiny table."""
    monkeypatch.setattr(embeddings_input, "UNIT_ROWS", 10)


def _expected(tmp_path):
    """Each defect and the exact line the serial scan printed for it."""
    out = {}
    d = _table(tmp_path, "dup")
    _write(d / "s2.parquet", ["dup-2-0", "dup-0-3", "dup-2-2", "dup-1-5"], seed=9)  # two repeats: 0-3 is met first
    out["repeat"] = (d, (f"embeddings: image_id 'dup-0-3' appears more than once (again in {d}/s2.parquet); "
                        "give each image one vector"))
    d = _table(tmp_path, "nan")
    _write(d / "s3.parquet", [f"n{k}" for k in range(20)], row_group_size=7, at={(15, 2): np.nan, (17, 0): np.inf})
    out["nan"] = (d, (f"embeddings shard {d}/s3.parquet: 2 vectors hold NaN or Inf (e.g. image_id 'n15'); "
                     "fix or drop them where the table was made"))
    d = _table(tmp_path, "dims")
    _write(d / "s1.parquet", ["x", "y"], d=16)
    out["dims"] = (d, f"embeddings of different dimensions: {d}/s0.parquet has 8, {d}/s1.parquet has 16")
    d = _table(tmp_path, "noid")
    pq.write_table(pa.table({"image_id": ["a", None], "embedding": pa.array([[1.0] * 8] * 2)}), d / "s9.parquet")
    out["null_id"] = (d, f"embeddings shard {d}/s9.parquet: a row has no image_id")
    d = tmp_path / "empty"
    d.mkdir()
    pq.write_table(pa.table({"image_id": pa.array([], pa.string()),
                             "embedding": pa.array([], pa.list_(pa.float32()))}), d / "a.parquet")
    out["empty"] = (d, f"embeddings {[str(d)]} hold no rows")
    return out


def test_good_table_many_units(tmp_path, small_units):
    d = _table(tmp_path)
    assert embeddings_input.check([str(d)]) == {"rows": 120, "dim": 8}


def test_each_defect_same_line_local(tmp_path, small_units):
    for name, (path, line) in _expected(tmp_path).items():
        with pytest.raises(UserError) as e:
            embeddings_input.check([str(path)])
        assert str(e.value) == line, name


def test_ray_same_verdicts(tmp_path, small_units, ray_local):
    d = _table(tmp_path)
    scratch = tmp_path / "run" / "_scratch"
    assert embeddings_input.check([str(d)], "ray", str(scratch)) == {"rows": 120, "dim": 8}
    for name, (path, line) in _expected(tmp_path).items():
        with pytest.raises(UserError) as e:  # not a RayTaskError: units record defects, the driver raises
            embeddings_input.check([str(path)], "ray", str(scratch))
        assert str(e.value) == line, name
    assert not scratch.exists()  # the check's scratch is gone, and the folder it made for it


def test_driver_keeps_counts_not_ids(tmp_path, small_units, monkeypatch):
    """The ids travel through hash buckets between units; the driver sees per-unit counts only."""
    d = _table(tmp_path)
    seen = {}
    real_run_stage, real_read = runtime.run_stage, shuffle.read_bucket

    def run_stage(stage, executor):
        seen["config"] = stage.config.model_dump(mode="json")
        out = real_run_stage(stage, executor=executor)
        seen["done"] = runtime.done_units(stage.ctx.stage_dir)  # before the scratch is removed
        return out

    def read_bucket(root, k, **kw):
        t = real_read(root, k, **kw)
        seen.setdefault("bucket_rows", []).append(t.num_rows)
        return t

    monkeypatch.setattr(runtime, "run_stage", run_stage)
    monkeypatch.setattr(shuffle, "read_bucket", read_bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert embeddings_input.check([str(d)]) == {"rows": 120, "dim": 8}
    cfg, done = seen["config"], seen["done"]
    assert "dup-" not in json.dumps(cfg) and "t-0-" not in json.dumps(cfg)  # units name shards, not rows
    assert len(cfg["units"]) == 4 * 3  # 30-row shards of 7-row groups: units of 14, 14 and 2 rows
    assert cfg["buckets"] == 12
    scan = {k: v for k, v in done.items() if k.startswith("scan-")}
    ids = {k: v for k, v in done.items() if k.startswith("ids-")}
    assert len(scan) == 12 and len(ids) == 12
    assert all(set(c) <= {"rows", "dim", "ids"} for c in done.values())  # numbers, never ids
    assert sum(c["rows"] for c in scan.values()) == sum(c["ids"] for c in ids.values()) == 120
    assert len(seen["bucket_rows"]) == 12 and max(seen["bucket_rows"]) < 120  # each unit: one bucket's ids
    assert os.listdir(tmp) == []  # the local scratch is removed
