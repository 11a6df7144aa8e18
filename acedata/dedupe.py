"""Find the later copies of rows in a table written by many units: the first unit's copy wins.

Identical content can come out of two units (a synthesizer drawing the same mask for two
look-alike photos in different units), and a content-addressed table must still show each
`image_id` once. Committed shards are never rewritten: a stage's `finish` (driver, after
every unit committed) lists the later copies in its `duplicates` table and readers skip
them (`acedata.kept`). This module only reads: the key and `source_uri` columns of every
shard, units in id order, so the result does not depend on scheduling.
"""

from __future__ import annotations

import posixpath
from typing import Any

from acedata import shards


def later_copies(table_dir: str, key: str = "image_id") -> list[dict[str, Any]]:
    """`{"source_uri", key}` of every row whose `key` an earlier unit (or earlier row) already holds."""
    seen: set[str] = set()
    later: list[dict[str, Any]] = []
    for unit in sorted(shards.committed_units(table_dir)):
        for s in shards.unit_fragment(table_dir, unit)["shards"]:
            t = shards.open_parquet(posixpath.join(table_dir.rstrip("/"), s["file"])).read(columns=["source_uri", key])
            for uri, k in zip(t.column("source_uri").to_pylist(), t.column(key).to_pylist()):
                if k in seen:
                    later.append({"source_uri": uri, key: k})
                seen.add(k)
    return later
