"""Stages for the cluster tests, shipped to the cluster with `acedata submit --plugin`.

`color_stats` computes a real per-image colour histogram (8 bins per RGB channel,
L1-normalised) from an images table into an `embeddings` table; `color_stats_actor`
does the same in an actor pool (the path model stages take). Each attempt at a unit
writes a trace file (pid, node, job, GPU ids) before it works and then pauses, so a
test can see where units run and kill or stop them mid-stage.

These are test fixtures: production stage code never imports Ray; the trace reads the
Ray runtime context only to tell nodes and jobs apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

import numpy as np
import pyarrow as pa

from acedata import shards
from acedata.config import StageConfig
from acedata.images import open_rgb
from acedata.kept import Kept
from acedata.schemas import embeddings_schema
from acedata.stage import Stage, UnitResult, WorkUnit, register

BINS = 8
DIM = 3 * BINS
MODEL = "color-histogram-8"


class ColorStatsConfig(StageConfig):
    rows_per_unit: int = 4
    pause_s: float = 0.0  # per unit, after the trace is written
    trace_dir: str | None = None


def _trace(cfg: ColorStatsConfig, unit: str, event: str) -> None:
    if not cfg.trace_dir:
        return
    import ray

    ctx = ray.get_runtime_context()
    body = {
        "unit": unit, "event": event, "pid": os.getpid(), "node_id": ctx.get_node_id(),
        "job_id": ctx.get_job_id(), "gpu_ids": ray.get_gpu_ids(), "t": time.time(),
    }
    os.makedirs(cfg.trace_dir, exist_ok=True)
    path = os.path.join(cfg.trace_dir, f"{unit}.{event}.{uuid.uuid4().hex[:8]}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(body, f)
    os.replace(path + ".tmp", path)


def histogram(data: bytes) -> np.ndarray:
    rgb = np.asarray(open_rgb(data))
    h = np.concatenate([np.bincount(rgb[..., c].ravel() >> 5, minlength=BINS) for c in range(3)]).astype(np.float64)
    return (h / h.sum()).astype(np.float16)


@register
class ColorStats(Stage):
    kind = "color_stats"
    Config = ColorStatsConfig
    outputs = {"embeddings": embeddings_schema(DIM)}

    def plan(self) -> list[WorkUnit]:
        units = []
        for table in self.ctx.input("images"):
            for shard in shards.list_shards(table):
                n = shards.open_parquet(shard).metadata.num_rows
                for start in range(0, n, self.config.rows_per_unit):
                    uid = hashlib.sha1(f"{os.path.basename(shard)}:{start}".encode()).hexdigest()[:12]
                    units.append(WorkUnit(f"cs-{uid}", {"shard": shard, "start": start,
                                                         "rows": self.config.rows_per_unit}))
        return units

    def process(self, unit: WorkUnit) -> UnitResult:
        _trace(self.config, unit.id, "start")
        time.sleep(self.config.pause_s)
        p = unit.payload
        table = shards.open_parquet(p["shard"]).read(columns=["image_id", "source_uri", "image"])
        # copies that ingest listed as duplicates are skipped, as every images reader does
        table = Kept(self.ctx.input("images")).filter(p["shard"], table.slice(p["start"], p["rows"]), p["start"])
        rows = [{"image_id": r["image_id"], "embedding": histogram(r["image"]["bytes"]).tolist(), "model": MODEL}
                for r in table.to_pylist()]
        return UnitResult({"embeddings": pa.Table.from_pylist(rows, self.outputs["embeddings"])})


class ColorStatsActorConfig(ColorStatsConfig):
    pass  # its own class: the pipeline finds a stage's kind by its Config class


@register
class ColorStatsActor(ColorStats):
    kind = "color_stats_actor"
    Config = ColorStatsActorConfig
    uses_model = True

    def setup(self) -> None:
        _trace(self.config, "setup", "actor")
