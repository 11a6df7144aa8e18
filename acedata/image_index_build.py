"""Building a table's partitioned image index, `.index/_parts-<digest>/` (see `acedata.image_index`).

After a stage that writes an images table, the runtime calls `ensure_index` on the driver. A small
table (at most `INLINE_MAX_ROWS` rows and `INLINE_MAX_SHARDS` shards) is built there in one pass,
its memory bounded by those constants. A larger one runs as two waves of units on the stage's
executor (`IndexBuild`, through `runtime.run_stage`, so local and Ray alike):

- map: each unit reads a group of shards' index files (written by the units that wrote the
  shards; built from a shard's metadata columns where missing) or a group of the `duplicates`
  table's shards, and writes the rows to P buckets by image_id (`shuffle.write_buckets`);
- reduce: one unit per partition reads its bucket of both, flags the listed duplicates, sorts and
  writes the partition file.

Scratch and done-markers live in `.index/_build-<digest>/`, so a build that dies resumes where it
stopped. The driver reads the manifests, names units and writes `_index.json` (P and the rows
per partition) last: its memory grows with shards and partitions, never rows. Both ways write
the same bytes: `finish_partition` sorts a partition's rows by a total order.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from acedata import ids, run_settings, shards, shuffle
from acedata.config import Resources, StageConfig
from acedata.image_index_files import (
    BUILD_PREFIX,
    DUP_SCHEMA,
    INDEX_DIR,
    MAP_SCHEMA,
    PARTS_META,
    PARTS_PREFIX,
    PARTS_VERSION,
    _index_files,
    duplicate_shards,
    finish_partition,
    index_name,
    part_file,
    partition_count,
    parts_name,
    read_duplicates,
    to_part,
    write_partition,
)
from acedata.image_index_write import shard_index, write_index
from acedata.stage import RunContext, Stage, UnitResult, WorkUnit

# Above either, the index is built by units on the executor (tests shrink these).
INLINE_MAX_ROWS = 2_000_000
INLINE_MAX_SHARDS = 2_000
# A map unit's share: about this many index rows, at most this many shards.
MAP_ROWS = 2_000_000
MAP_SHARDS = 512


def parts_dir(table_dir: str) -> str | None:
    """The URI of the table's current partitioned index folder (None without a manifest); it is
    usable exactly when its `_index.json` exists."""
    manifest = shards.read_manifest(table_dir)
    if manifest is None:
        return None
    return posixpath.join(table_dir, INDEX_DIR, parts_name(manifest["shards"], duplicate_shards(table_dir)))


def _shard_rows(table_dir: str, infos: list[tuple[int, dict[str, Any]]], have: set[str] | None) -> pa.Table:
    """Partition rows (`MAP_SCHEMA`) of the listed shards: (position in the manifest, shard info)."""
    parts = [to_part(shard_index(table_dir, s, have)[0], k) for k, s in infos]
    return pa.concat_tables(parts) if parts else MAP_SCHEMA.empty_table()


def _write_meta(fs: pafs.FileSystem, d: str, part_rows: list[int]) -> None:
    meta = {"version": PARTS_VERSION, "partitions": len(part_rows), "rows": sum(part_rows), "part_rows": part_rows}
    shards.write_bytes_atomic(fs, posixpath.join(d, PARTS_META), json.dumps(meta).encode())


def build_inline(table_dir: str, manifest: dict[str, Any], out_dir: str, partitions: int) -> list[int]:
    """Every partition on the driver, in one pass (small tables); returns the rows per partition."""
    fs, out = shards.resolve(out_dir)
    _, d = shards.resolve(table_dir)
    have = _index_files(fs, posixpath.join(d, INDEX_DIR))
    rows = _shard_rows(table_dir, list(enumerate(manifest["shards"])), have)
    dup = read_duplicates(table_dir)
    rb = shuffle.bucket_of(rows.column("image_id"), partitions) if rows.num_rows else np.zeros(0, np.int64)
    db = shuffle.bucket_of(dup.column("image_id"), partitions) if dup.num_rows else np.zeros(0, np.int64)
    fs.create_dir(out, recursive=True)
    part_rows = []
    for k in range(partitions):
        t = finish_partition(rows.filter(pa.array(rb == k)), dup.filter(pa.array(db == k)))
        write_partition(fs, posixpath.join(out, part_file(k)), t)
        part_rows.append(t.num_rows)
    return part_rows


class IndexBuildConfig(StageConfig):
    table: str  # the images table (path or URI)
    parts: str  # the partitioned index's folder name, `_parts-<digest>`
    partitions: int


class IndexBuild(Stage):
    """The distributed build: map units bucket index rows and duplicates by image_id, reduce units
    write one partition each. Internal: run by `ensure_index`, never named in a pipeline spec."""

    kind = "image-index"
    Config = IndexBuildConfig
    outputs: dict[str, pa.Schema] = {}
    config: IndexBuildConfig

    def _scratch(self, side: str) -> str:
        return posixpath.join(self.ctx.stage_dir, "scratch", side)

    def plan(self) -> list[WorkUnit]:
        manifest = shards.read_manifest(self.config.table)
        units = []
        for n, group in enumerate(_groups(list(enumerate(manifest["shards"])))):
            units.append(WorkUnit(f"map-i{n:05d}", {"shards": [[k, s] for k, s in group]}))
        dups = duplicate_shards(self.config.table)
        for n, group in enumerate(_groups(list(enumerate(dups)))):
            units.append(WorkUnit(f"map-d{n:05d}", {"duplicates": [s["file"] for _, s in group]}))
        return units

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        if wave == 0:
            return [WorkUnit(f"reduce-{k:05d}", {"part": k}) for k in range(self.config.partitions)]
        return []

    def process(self, unit: WorkUnit) -> UnitResult:
        p, n = unit.payload, self.config.partitions
        if "shards" in p:
            rows = _shard_rows(self.config.table, [(k, s) for k, s in p["shards"]], None)
            shuffle.write_buckets(rows, "image_id", n, self._scratch("index"), unit.id)
            return UnitResult({}, {"index_rows": rows.num_rows})
        if "duplicates" in p:
            dup = read_duplicates(self.config.table, p["duplicates"])
            shuffle.write_buckets(dup, "image_id", n, self._scratch("duplicates"), unit.id)
            return UnitResult({}, {"duplicate_rows": dup.num_rows})
        k = p["part"]
        rows = shuffle.read_bucket(self._scratch("index"), k, schema=MAP_SCHEMA)
        dup = shuffle.read_bucket(self._scratch("duplicates"), k, schema=DUP_SCHEMA)
        t = finish_partition(rows, dup)
        fs, d = shards.resolve(posixpath.join(self.config.table, INDEX_DIR, self.config.parts))
        fs.create_dir(d, recursive=True)
        write_partition(fs, posixpath.join(d, part_file(k)), t)  # the same bytes if a retry writes it again
        return UnitResult({}, {"rows": t.num_rows})


def _groups(items: list[tuple[int, dict[str, Any]]]) -> list[list[tuple[int, dict[str, Any]]]]:
    """Consecutive shards, about `MAP_ROWS` rows and at most `MAP_SHARDS` shards a group."""
    out: list[list[tuple[int, dict[str, Any]]]] = []
    rows = 0
    for item in items:
        if not out or len(out[-1]) >= MAP_SHARDS or rows + item[1]["rows"] > MAP_ROWS:
            out.append([])
            rows = 0
        out[-1].append(item)
        rows += item[1]["rows"]
    return out


def build_distributed(table_dir: str, name: str, partitions: int, executor: str, concurrency: int) -> list[int]:
    """Run `IndexBuild` on `executor`; returns the rows per partition (from the reduce units' markers)."""
    from acedata import runtime  # late: the runtime imports the image index

    build = posixpath.join(table_dir, INDEX_DIR, BUILD_PREFIX + name.removeprefix(PARTS_PREFIX))
    cfg = IndexBuildConfig(name="image-index", table=table_dir, parts=name, partitions=partitions,
                           resources=Resources(concurrency=max(1, concurrency)))
    scheme = run_settings.table_scheme(table_dir) or ids.DEFAULT  # the indexed table's, not the default's
    runtime.run_stage(IndexBuild(cfg, RunContext(table_dir, build, {}, scheme)), executor=executor)
    done = runtime.done_units(build)
    return [int(done[f"reduce-{k:05d}"]["rows"]) for k in range(partitions)]


def ensure_index(table_dir: str, executor: str = "local", concurrency: int = 2) -> dict[str, int]:
    """Build the table's partitioned index unless it exists, and drop index files and folders the
    manifest no longer names (a superseded shard's, an older index's, a finished build's scratch).
    Runs on the driver after a stage; large tables are built by units on `executor`."""
    manifest = shards.read_manifest(table_dir)
    if manifest is None:
        return {"written": 0, "removed": 0}
    fs, d = shards.resolve(table_dir)
    idx_dir = posixpath.join(d, INDEX_DIR)
    name = parts_name(manifest["shards"], duplicate_shards(table_dir))
    out = posixpath.join(idx_dir, name)
    written = 0
    if not shards.exists(fs, posixpath.join(out, PARTS_META)):
        n = partition_count(manifest["rows"])
        if manifest["rows"] <= INLINE_MAX_ROWS and len(manifest["shards"]) <= INLINE_MAX_SHARDS:
            written += write_index(table_dir, manifest["shards"], whole_table=True)  # fill gaps: units that died early
            part_rows = build_inline(table_dir, manifest, posixpath.join(table_dir, INDEX_DIR, name), n)
        else:
            part_rows = build_distributed(table_dir, name, n, executor, concurrency)
        _write_meta(fs, out, part_rows)  # last: the index exists from here on
        written += 1
    keep = {index_name(s["file"], s["sha256"]) for s in manifest["shards"]} | {name}
    removed = 0
    if shards.exists(fs, idx_dir):
        for info in fs.get_file_info(pafs.FileSelector(idx_dir)):
            base = posixpath.basename(info.path)
            if base in keep or base.startswith("."):  # hidden: a file still being written
                continue
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
            removed += 1
    return {"written": written, "removed": removed}
