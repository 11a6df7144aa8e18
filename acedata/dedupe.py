"""Later copies of rows in a table written by many units, decided on one process.

Identical content can come out of two units (a synthesizer drawing the same mask for two
look-alike photos in different units), and a content-addressed table must still show each
`image_id` once. Stages decide it in waves on workers (`acedata.copies`), never on the
driver; this module is the same decision in one process, for small tables and as the
reference the distributed one is tested against. It only reads: the key and `source_uri`
columns of every shard, units in id order, so the result does not depend on scheduling.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from acedata import shards


def later_copies(table_dir: str, key: str = "image_id",
                 rank: Callable[[str, str, int], Any] | None = None) -> list[dict[str, Any]]:
    """`{"source_uri", key}` of every row but the smallest-ranked of those sharing its `key`.

    `rank(source_uri, unit id, row in unit)`; by default (unit id, row): the first unit's copy wins."""
    rank = rank or (lambda uri, unit, row: (unit, row))
    copies: dict[str, list[tuple[Any, str]]] = {}
    for unit in sorted(shards.committed_units(table_dir)):
        row = 0
        for s in shards.unit_fragment(table_dir, unit)["shards"]:
            t = shards.open_parquet(posixpath.join(table_dir.rstrip("/"), s["file"])).read(columns=["source_uri", key])
            for uri, k in zip(t.column("source_uri").to_pylist(), t.column(key).to_pylist()):
                copies.setdefault(k, []).append((rank(uri, unit, row), uri))
                row += 1
    later: list[dict[str, Any]] = []
    for k, found in copies.items():
        later += [{"source_uri": uri, key: k} for _, uri in sorted(found, key=lambda x: x[0])[1:]]
    return later
