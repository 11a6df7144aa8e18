"""Checking a table against its manifest: every listed shard present, intact (sha256), readable,
with the stated rows and the table's schema, and no Parquet file that the manifest does not list.
Reads through `acedata.shards` (its `resolve` is the one filesystem hook)."""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import shards
from acedata.schemas import SCHEMA_VERSION, TABLES


def validate_table(table_dir: str, expected_schema: pa.Schema | None = None) -> list[str]:
    """Check a table against its manifest and schema; returns the problems found."""
    problems: list[str] = []
    manifest = shards.read_manifest(table_dir)
    if manifest is None:
        return [f"{table_dir}: no {shards.MANIFEST} (not a finished acedata table)"]
    fs, d = shards.resolve(table_dir)
    if expected_schema is None and manifest.get("table") in TABLES:
        expected_schema = TABLES[manifest["table"]]
    if expected_schema is None and manifest.get("schema"):
        expected = manifest["schema"]
    else:
        expected = shards.schema_to_json(expected_schema) if expected_schema is not None else None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema version {manifest.get('schema_version')} != {SCHEMA_VERSION}")
    total = 0
    for s in manifest["shards"]:
        path = posixpath.join(d, s["file"])
        if not shards.exists(fs, path):
            problems.append(f"{s['file']}: listed in the manifest but missing")
            continue
        digest = shards.sha256_file(fs, path)
        if digest != s["sha256"]:
            problems.append(f"{s['file']}: sha256 mismatch (file changed or corrupt)")
            continue
        try:
            pf = pq.ParquetFile(fs.open_input_file(path))
        except Exception as e:  # noqa: BLE001 - any parse failure is a finding
            problems.append(f"{s['file']}: unreadable Parquet ({e})")
            continue
        if pf.metadata.num_rows != s["rows"]:
            problems.append(f"{s['file']}: {pf.metadata.num_rows} rows, manifest says {s['rows']}")
        total += pf.metadata.num_rows
        if expected is not None and shards.schema_to_json(pf.schema_arrow) != expected:
            problems.append(f"{s['file']}: schema differs from the table's schema")
    if total != manifest["rows"] and not problems:
        problems.append(f"row total {total} != manifest rows {manifest['rows']}")
    listed = {s["file"] for s in manifest["shards"]}
    for i in fs.get_file_info(pafs.FileSelector(d)):
        name = posixpath.basename(i.path)
        if name.endswith(".parquet") and not name.startswith((".", "_")) and name not in listed:
            problems.append(f"{name}: Parquet file not listed in the manifest")
    return problems
