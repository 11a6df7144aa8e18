"""Resume keys: a stage is redone exactly when something that shapes its output changed.

A stage's key hashes
- its output-affecting config (`acedata.config.output_config`: run-only fields such as
  `name`, `description`, `resources` and thread counts are left out),
- its kind and its code's declared `version`,
- a digest of every input table it is given: the content recorded in the table's
  `_manifest.json` (each shard's sha256) when there is one, else the sha256 of the
  table's Parquet files. Tables made by earlier stages of the run always have a manifest,
  so keys chain: when an upstream stage's output changes, every stage reading it reruns;
  when an upstream stage reran but wrote identical rows, nothing downstream does.
- `Stage.input_digest()`: content read from outside tables (ingest's sources).

Trusting a manifest is a choice: a shard replaced behind a manifest's back is caught by
`acedata validate` (sha256 mismatch), not by resume; reading every byte of a large table at
each run start would cost as much as the stage itself.
"""

from __future__ import annotations

import hashlib
import json

from acedata import shards
from acedata.config import output_config
from acedata.stage import Stage


def table_digest(path: str) -> str:
    """Content digest of a table: its manifest's shard digests, else the bytes of its files."""
    h = hashlib.sha256()
    manifest = shards.read_manifest(path) if not path.endswith(".parquet") else None
    if manifest is not None:
        listing = sorted((s["sha256"], s["rows"]) for s in manifest["shards"])
        h.update(json.dumps({"schema": manifest.get("schema"), "shards": listing}).encode())
        return h.hexdigest()
    try:
        files = shards.list_shards(path)
    except FileNotFoundError:
        return "missing"
    for f in sorted(shards.sha256_file(*shards.resolve(f)) for f in files):
        h.update(f.encode())
    return h.hexdigest()


def stage_key(stage: Stage) -> str:
    """The resume key of a stage bound to its inputs (see the module doc)."""
    body = {
        "kind": stage.kind,
        "version": stage.version,
        "config": output_config(stage.config),
        "inputs": {t: [table_digest(p) for p in paths] for t, paths in sorted(stage.ctx.inputs.items())},
        "external": stage.input_digest(),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]
