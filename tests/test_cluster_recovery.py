"""A worker killed at each point of a unit's commit leaves output that a rerun makes exact.

The cluster tests kill real Ray workers at whatever moment they are caught; these pin the
worst moments down deterministically: a worker process (forked, like a Ray worker) dies
with `os._exit` part-way through writing a shard, after its shards are renamed but before
the unit's fragment, and after the fragment but before the done-marker. Each time the
stage is then run again (as a retry or a resumed job would) and must hold exactly the
rows of a clean run, pass `validate`, and keep the other units' files untouched.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import cluster_stages

from acedata import runtime, shards
from acedata.pipeline import run_stages
from acedata.stage import RunContext
from acedata.stages.ingest import IngestConfig


@pytest.fixture(scope="module")
def images_table(tmp_path_factory) -> str:
    from acedata.demo_data import build

    d = tmp_path_factory.mktemp("recovery")
    build(str(d / "corpus"), variants=2, seed=1, odd=False)
    run_stages([IngestConfig(name="ingest", sources=[str(d / "corpus")], files_per_unit=8)], str(d / "run"),
               executor="local")
    return str(d / "run" / "ingest" / "images")


def make_stage(images: str, out: str) -> cluster_stages.ColorStats:
    cfg = cluster_stages.ColorStatsConfig(name="stats", rows_per_unit=6)
    return cluster_stages.ColorStats(cfg, RunContext(out, f"{out}/stats", {"images": [images]}))


def rows(stage) -> list:
    t = shards.read_table(stage.ctx.out("embeddings"), columns=["image_id", "embedding"])
    return sorted(zip(t.column("image_id").to_pylist(), t.column("embedding").to_pylist()))


def _die_in_unit(images: str, out: str, unit_index: int, where: str) -> None:
    """Child process: run one unit and die (exit 137, as SIGKILL would) at `where`."""
    stage = make_stage(images, out)
    unit = stage.plan()[unit_index]
    real_atomic, real_write = shards.write_bytes_atomic, pq.ParquetWriter.write_table

    def atomic(fs, path, data):
        if (where == "before_fragment" and "/_units/" in path) or (where == "before_done" and "/_done/" in path):
            os._exit(137)
        real_atomic(fs, path, data)

    def write_table(self, table, *a, **kw):
        real_write(self, table.slice(0, max(1, table.num_rows // 2)), *a, **kw)
        os._exit(137)  # half a shard on disk, under its temporary name

    shards.write_bytes_atomic = atomic
    runtime.shards.write_bytes_atomic = atomic
    if where == "mid_shard":
        pq.ParquetWriter.write_table = write_table
    runtime.execute_unit(stage, unit)
    os._exit(0)  # not reached when the kill point was hit


@pytest.mark.parametrize("where", ["mid_shard", "before_fragment", "before_done"])
def test_unit_killed_while_committing_is_redone_exactly(images_table, tmp_path, where):
    clean = make_stage(images_table, str(tmp_path / "clean"))
    runtime.run_stage(clean, executor="local")
    expected = rows(clean)

    out = str(tmp_path / "run")
    stage = make_stage(images_table, out)
    units = stage.plan()
    assert len(units) >= 3
    for u in units[:1]:  # one unit committed before the crash: it must be kept as it is
        runtime.execute_unit(stage, u)
    kept = shards.unit_fragment(stage.ctx.out("embeddings"), units[0].id)

    child = multiprocessing.get_context("fork").Process(target=_die_in_unit, args=(images_table, out, 1, where))
    child.start()
    child.join(60)
    assert child.exitcode == 137, "the worker did not die where it was meant to"
    assert units[1].id not in runtime.done_units(out + "/stats")
    left = os.listdir(stage.ctx.out("embeddings"))
    if where == "mid_shard":
        assert any(n.startswith(".tmp-") for n in left)  # debris a reader never lists
    else:
        assert any(n.startswith(units[1].id) for n in left)  # a half-committed unit's shard

    summary = runtime.run_stage(make_stage(images_table, out), executor="local")
    assert rows(stage) == expected
    assert summary["counts"]["embeddings"] == len(expected)
    assert shards.validate(stage.ctx.out("embeddings")) == []
    assert shards.unit_fragment(stage.ctx.out("embeddings"), units[0].id) == kept
