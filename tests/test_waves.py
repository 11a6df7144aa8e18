"""Stages in waves (`Stage.next_wave`) and the worker-side shuffle (`acedata.shuffle`).

A group-by the driver never sees row by row: wave 0 units hash-partition (key, value)
rows, wave 1 units each sum one bucket. Checked against an in-memory reference on both
executors, across bucket counts, and after a crash in the second wave.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pytest

from acedata import runtime, shards, shuffle
from acedata.config import StageConfig
from acedata.stage import RunContext, Stage, UnitResult, WorkUnit

SUMS = pa.schema([("key", pa.string()), ("total", pa.int64()), ("rows", pa.int64())])
ROWS = pa.schema([("key", pa.string()), ("value", pa.int64())])


class GroupSumConfig(StageConfig):
    buckets: int = 4
    crash_file: str | None = None  # a wave-1 unit fails while this file exists


class GroupSum(Stage):
    """Sum `value` per `key` over rows spread across the plan's units."""

    kind = "test_group_sum"
    Config = GroupSumConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"sums": SUMS}

    def scratch(self) -> str:
        return posixpath.join(self.ctx.stage_dir, "_shuffle")

    def plan(self) -> list[WorkUnit]:
        rng = np.random.default_rng(0)
        keys = [f"k{int(i)}" for i in rng.integers(0, 37, 600)]
        values = rng.integers(0, 1000, 600).tolist()
        return [WorkUnit(f"in-{u}", {"keys": keys[u::3], "values": values[u::3]}) for u in range(3)]

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        if wave > 0:
            return []
        assert counts["rows_in"] == 600  # the finished wave's counts reach the driver
        return [WorkUnit(f"sum-{b:03d}", {"bucket": b}) for b in range(self.config.buckets)]

    def process(self, unit: WorkUnit) -> UnitResult:
        _log_execution(self.ctx.stage_dir, unit.id)
        if "keys" in unit.payload:
            rows = pa.table({"key": unit.payload["keys"], "value": unit.payload["values"]}, ROWS)
            shuffle.write_buckets(rows, "key", self.config.buckets, self.scratch(), unit.id)
            return UnitResult({}, {"rows_in": rows.num_rows})
        if self.config.crash_file and os.path.exists(self.config.crash_file):
            raise RuntimeError("injected crash in wave 1")
        part = shuffle.read_bucket(self.scratch(), unit.payload["bucket"], schema=ROWS)
        sums: Counter[str] = Counter()
        n: Counter[str] = Counter()
        for k, v in zip(part.column("key").to_pylist(), part.column("value").to_pylist()):
            sums[k] += v
            n[k] += 1
        keys = sorted(sums)
        table = pa.table({"key": keys, "total": [sums[k] for k in keys], "rows": [n[k] for k in keys]}, SUMS)
        return UnitResult({"sums": table}, {"rows_out": part.num_rows})

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        shuffle.delete(self.scratch())
        return {}


def _log_execution(stage_dir: str, unit_id: str) -> None:
    with open(posixpath.join(stage_dir, "_executions.log"), "a") as f:
        f.write(unit_id + "\n")


def _executions(stage_dir: str) -> list[str]:
    with open(posixpath.join(stage_dir, "_executions.log")) as f:
        return f.read().split()


def _reference() -> dict[str, tuple[int, int]]:
    units = GroupSum(GroupSumConfig(), RunContext("", "", {})).plan()
    sums: Counter[str] = Counter()
    n: Counter[str] = Counter()
    for u in units:
        for k, v in zip(u.payload["keys"], u.payload["values"]):
            sums[k] += v
            n[k] += 1
    return {k: (sums[k], n[k]) for k in sums}


def _run(tmp_path, executor: str, **config: Any) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    stage_dir = str(tmp_path / f"{executor}-{config.get('buckets', 4)}")
    os.makedirs(stage_dir, exist_ok=True)
    stage = GroupSum(GroupSumConfig(**config), RunContext(str(tmp_path), stage_dir, {}))
    summary = runtime.run_stage(stage, executor)
    t = shards.read_table(stage.ctx.out("sums"))
    got = {k: (s, n) for k, s, n in zip(t.column("key").to_pylist(), t.column("total").to_pylist(),
                                        t.column("rows").to_pylist())}
    return summary, got


@pytest.mark.parametrize("buckets", [1, 4, 50])
def test_two_waves_equal_the_in_memory_group_by(tmp_path, buckets):
    summary, got = _run(tmp_path, "local", buckets=buckets)
    assert got == _reference()
    assert summary["units"] == 3 + buckets
    assert summary["counts"]["rows_in"] == summary["counts"]["rows_out"] == 600
    assert not os.path.exists(tmp_path / f"local-{buckets}" / "_shuffle")  # scratch gone after finish


def test_waves_on_ray(tmp_path, ray_local):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    _, got = _run(tmp_path, "ray", buckets=8)
    assert got == _reference()


def test_crash_in_second_wave_resumes_without_redoing_the_first(tmp_path):
    crash = tmp_path / "crash"
    crash.write_text("")
    with pytest.raises(RuntimeError, match="injected crash"):
        _run(tmp_path, "local", crash_file=str(crash))
    stage_dir = str(tmp_path / "local-4")
    first = _executions(stage_dir)
    assert sorted(first[:3]) == ["in-0", "in-1", "in-2"]
    crash.unlink()
    _, got = _run(tmp_path, "local", crash_file=str(crash))
    assert got == _reference()
    rerun = _executions(stage_dir)[len(first):]
    assert not [u for u in rerun if u.startswith("in-")]  # committed wave-0 units are not redone
    assert sorted(rerun) == [f"sum-{b:03d}" for b in range(4)]


def test_progress_total_grows_with_each_wave(tmp_path):
    seen: list[tuple[int, int]] = []
    stage_dir = str(tmp_path / "p")
    os.makedirs(stage_dir)
    stage = GroupSum(GroupSumConfig(buckets=5), RunContext(str(tmp_path), stage_dir, {}))
    runtime.run_stage(stage, "local", progress=lambda done, total, counts: seen.append((done, total)))
    assert seen[0] == (0, 3) and seen[-1] == (8, 8)
    assert all(d <= t for d, t in seen)


def test_bucket_of_is_stable_and_input_shape_free():
    keys = [f"img-{i:06d}" for i in range(1000)]
    b = shuffle.bucket_of(keys, 16)
    assert np.array_equal(b, shuffle.bucket_of(pa.chunked_array([keys[:300], keys[300:]]), 16))
    assert np.array_equal(b, shuffle.bucket_of(np.array(keys, dtype=object), 16))
    assert b.min() >= 0 and b.max() == 15
    assert np.bincount(b, minlength=16).min() > 30  # spread over every bucket
    # pinned: a bucket must not move between machines, processes or library upgrades unnoticed
    assert shuffle.bucket_of(["img-000000", "img-000001", "t2i:abc"], 1000).tolist() == [425, 106, 891]
    assert shuffle.bucket_of(np.array([3, 5], np.int32), 7).tolist() == [4, 2]


def test_bucket_count_bounds():
    assert shuffle.bucket_count(0, 100) == 1
    assert shuffle.bucket_count(1001, 100) == 11
    assert shuffle.bucket_count(10**12, 1, max_buckets=500) == 500


def test_one_file_per_writer_reads_each_bucket_in_writer_order(tmp_path):
    root = str(tmp_path / "s")
    rows = pa.table({"key": [f"k{i}" for i in range(50)], "value": list(range(50))}, schema=ROWS)
    parts = np.array([(7 * i) % 9 for i in range(50)])  # buckets 0..8; bucket 9 and up stay empty
    assert shuffle.write_parts(rows, parts, root, "w-b") == 9
    assert shuffle.write_parts(rows.slice(0, 10), parts[:10], root, "w-a") == 9
    assert shuffle.write_parts(rows.slice(0, 0), parts[:0], root, "w-c") == 0  # no file
    assert sorted(os.listdir(root)) == ["w-a.shuf", "w-b.shuf"]  # not one file per bucket
    for b in range(9):
        got = shuffle.read_bucket(root, b)
        mine = [i for i in range(50) if parts[i] == b]
        want = [i for i in mine if i < 10] + mine  # writer w-a first, rows in their order
        assert got.column("value").to_pylist() == want
        assert shuffle.read_bucket(root, b, columns=["key"]).column_names == ["key"]
    assert shuffle.read_bucket(root, 9, schema=ROWS).num_rows == 0
    assert shuffle.read_bucket(str(tmp_path / "none"), 0, schema=ROWS, columns=["value"]).column_names == ["value"]
    with pytest.raises(ValueError):
        shuffle.read_bucket(root, 40)


def test_a_bucket_written_in_the_older_layout_is_still_read(tmp_path):
    """Scratch of a run interrupted before the one-file layout: `b00003/<writer>.parquet`, read in
    writer-name order with the new files."""
    import pyarrow.parquet as pq

    root = str(tmp_path / "s")
    shuffle.write_parts(pa.table({"key": ["n"], "value": [1]}, schema=ROWS), np.array([3]), root, "u-1")
    os.makedirs(shuffle.bucket_dir(root, 3))
    pq.write_table(pa.table({"key": ["o"], "value": [0]}, schema=ROWS),
                   posixpath.join(shuffle.bucket_dir(root, 3), "u-0.parquet"))
    assert shuffle.read_bucket(root, 3).column("key").to_pylist() == ["o", "n"]
    assert shuffle.read_bucket(root, 2, schema=ROWS).num_rows == 0


def test_a_cut_short_shuffle_file_is_refused(tmp_path):
    root = str(tmp_path / "s")
    shuffle.write_parts(pa.table({"key": ["a", "b"], "value": [1, 2]}, schema=ROWS), np.array([0, 1]), root, "w")
    path = posixpath.join(root, "w" + shuffle.SUFFIX)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    with pytest.raises(ValueError, match="not a whole shuffle file"):
        shuffle.read_bucket(root, 0)
