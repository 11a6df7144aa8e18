"""Helpers for the commit-protocol tests (local disk and S3): a demo images table, a small real
stage over it (cluster_stages.ColorStats), its rows, and a child process that runs one unit and
dies (exit 137, as SIGKILL would) at a chosen step of the commit."""

from __future__ import annotations

import os

import cluster_stages
import pyarrow.parquet as pq

from acedata import runtime, shards
from acedata.stage import RunContext

KILL_POINTS = ["mid_shard", "before_fragment", "before_done"]


def ingested_images(corpus_dir: str, out: str, seed: int) -> str:
    """The demo corpus (2 variants per group) built under `corpus_dir` and ingested locally (no Ray)
    into `out` (a path or URI); returns the images table."""
    from acedata.demo_data import build
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig

    build(corpus_dir, variants=2, seed=seed, odd=False)
    run_stages([IngestConfig(name="ingest", sources=[corpus_dir], files_per_unit=8)], out, executor="local")
    return f"{out}/ingest/images"


def color_stage(images: str, out: str) -> cluster_stages.ColorStats:
    cfg = cluster_stages.ColorStatsConfig(name="stats", rows_per_unit=6)
    return cluster_stages.ColorStats(cfg, RunContext(out, f"{out}/stats", {"images": [images]}))


def stage_rows(stage) -> list:
    t = shards.read_table(stage.ctx.out("embeddings"), columns=["image_id", "embedding"])
    return sorted(zip(t.column("image_id").to_pylist(), t.column("embedding").to_pylist()))


def die_in_unit(images: str, out: str, unit_index: int, where: str, env: dict[str, str] | None = None) -> None:
    """Child process: run one unit and die at `where` (one of KILL_POINTS)."""
    os.environ.update(env or {})
    stage = color_stage(images, out)
    unit = stage.plan()[unit_index]
    real_atomic, real_write = shards.write_bytes_atomic, pq.ParquetWriter.write_table

    def atomic(fs, path, data):
        if (where == "before_fragment" and "/_units/" in path) or (where == "before_done" and "/_done/" in path):
            os._exit(137)
        real_atomic(fs, path, data)

    def write_table(self, table, *a, **kw):
        real_write(self, table.slice(0, max(1, table.num_rows // 2)), *a, **kw)
        os._exit(137)  # half a shard written (locally under its temporary name; on S3 an upload never completed)

    shards.write_bytes_atomic = atomic  # the runtime commits through this module too
    if where == "mid_shard":
        pq.ParquetWriter.write_table = write_table
    runtime.execute_unit(stage, unit)
    os._exit(0)  # not reached when the kill point was hit
