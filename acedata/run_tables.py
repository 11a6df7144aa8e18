"""Where a run's tables are: the tables of a run directory (from `_run.json` and the stage
folders), its stages' summaries, the LCU dataset behind a path, and the run's funnel from
inputs to LCU rows. Reads manifests, markers and metadata columns shard by shard, never image
bytes."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from acedata import funnel_counts, shards, storage
from acedata.errors import UserError
from acedata.storage import join

LCU_TABLES = ("lcu", "lcu_validation")


@dataclass
class Dataset:
    files: list[str]  # LCU Parquet shards
    tables: list[str]  # the LCU table dirs they came from
    run_dir: str | None  # the run that made them, when known (for the funnel)


def _is_table(path: str) -> bool:
    return storage.is_file(join(path, shards.MANIFEST))


def _is_run(path: str) -> bool:
    if storage.is_file(join(path, "_run.json")):
        return True
    return any(storage.is_file(join(path, d, "_SUCCESS.json")) for d in _subdirs(path))


def _subdirs(path: str) -> list[str]:
    return storage.subdirs(path)


def run_tables(run_dir: str) -> dict[str, list[str]]:
    """Table name -> table dirs of a run: `_run.json` when present, else the stage folders."""
    tables: dict[str, list[str]] = {}
    run_file = join(run_dir, "_run.json")
    if storage.is_file(run_file):
        listed = storage.read_json(run_file).get("tables", {})
        for name, paths in listed.items():
            tables[name] = [p for p in paths if _is_table(p)]
    for stage in _stage_dirs(run_dir):  # stages finished after the last _run.json was written
        for t in _subdirs(stage):
            path = join(stage, t)
            if _is_table(path) and path not in tables.get(t, []):
                tables.setdefault(t, []).append(path)
    return tables


def _stage_dirs(run_dir: str) -> list[str]:
    dirs = [join(run_dir, d) for d in _subdirs(run_dir)]
    return [d for d in dirs if any(_is_table(join(d, t)) for t in _subdirs(d))]


def stage_summaries(run_dir: str) -> list[dict[str, Any]]:
    """Per-stage summaries (kind, counts, seconds) in run order, from `_SUCCESS.json` markers."""
    out = []
    for d in _stage_dirs(run_dir):
        marker = join(d, "_SUCCESS.json")
        if storage.is_file(marker):
            body = storage.read_json(marker)
            out.append({"name": posixpath.basename(d), "finished": body.get("finished", 0), **body["summary"],
                        "config": body.get("config")})
    return sorted(out, key=lambda s: s["finished"])


def resolve_dataset(path: str) -> Dataset:
    """An LCU table dir, a dataset folder holding `lcu/`, a run dir, or a folder of Parquet files."""
    path = storage.absolute(path.rstrip("/"))
    if not storage.exists_uri(path):
        raise UserError(f"{path} does not exist; give an LCU table folder or a run folder")
    tables: list[str] = []
    run_dir: str | None = None
    if storage.is_file(path) or _is_table(path):
        tables = [path]
        up = posixpath.dirname(posixpath.dirname(path))
        run_dir = up if _is_run(up) else None
    elif any(_is_table(join(path, t)) for t in LCU_TABLES):
        tables = [join(path, t) for t in LCU_TABLES if _is_table(join(path, t))]
        up = posixpath.dirname(path)
        run_dir = up if _is_run(up) else None
    elif _is_run(path):
        run_dir = path
        found = run_tables(path)
        tables = [p for t in LCU_TABLES for p in found.get(t, [])]
    else:
        tables = [path]
    files = [f for t in tables for f in shards.list_shards(t)]
    if not files and run_dir is None:
        raise UserError(f"no LCU shards under {path} (expected lcu/_manifest.json or *.parquet files)")
    return Dataset(files, tables, run_dir)


def _rows(paths: list[str]) -> int:
    return sum(shards.count_rows(p) for p in paths)


def funnel(run_dir: str, executor: str = "local", address: str | None = None) -> dict[str, Any]:
    """inputs -> quarantined by reason -> embedded -> clustered -> paired -> synthesized -> labelled -> LCU.

    Counts come from stage summaries, manifests and per-shard partials (`acedata.funnel_counts`,
    in-process or one Ray task per shard with `executor="ray"`): the driver never holds rows."""
    tables = run_tables(run_dir)
    summaries = stage_summaries(run_dir)
    ingest = [s for s in summaries if s.get("stage") == "ingest"]
    steps: list[dict[str, Any]] = []
    if ingest:
        steps.append({"step": "inputs", "count": sum(int(s["counts"].get("inputs", 0)) for s in ingest)})
        steps.append({"step": "ingested", "count": sum(int(s["counts"].get("images", 0)) for s in ingest)})
        steps.append({"step": "duplicates", "count": sum(int(s["counts"].get("duplicates", 0)) for s in ingest)})
    got = funnel_counts.table_counts(tables, summaries, executor, address)
    quarantined = got["quarantined"]
    steps.append({"step": "quarantined", "count": sum(q["count"] for q in quarantined)})
    steps.append({"step": "embedded", "count": _rows(tables.get("embeddings", []))})
    steps.append({"step": "clustered", "count": _rows(tables.get("clusters", []))})
    steps.append({"step": "paired", "count": got["mined"]})
    steps.append({"step": "synthesized", "count": got["synth"]})
    steps.append({"step": "labelled", "count": got["labelled"]})
    steps.append({"step": "captioned", "count": got["captioned"]})
    steps.append({"step": "lcu_rows", "count": sum(_rows(tables.get(t, [])) for t in LCU_TABLES)})
    return {
        "run": run_dir,
        "steps": steps,
        "quarantined": quarantined,
        "approximate": got["approximate"],  # step -> how it was estimated (HyperLogLog), when not exact
        "stages": [{"name": s["name"], "stage": s.get("stage"), "counts": s.get("counts", {}),
                    "seconds": s.get("seconds")} for s in summaries],
    }
