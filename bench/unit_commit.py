"""Commit time per unit in a table folder that already holds N committed units (issue 12).

Each timed unit does what `runtime.execute_unit` does to a table: clear earlier attempts,
write a small shard, commit its fragment, then forget its attempt markers (where they exist).
Usage: python bench/unit_commit.py [N ...]   (default 100 2000)
"""

from __future__ import annotations

import sys
import tempfile
import time

import pyarrow as pa

from acedata import shards

SCHEMA = pa.schema([("x", pa.int64())])
ROWS = pa.table({"x": list(range(10))}, SCHEMA)


def unit(table: str, uid: str) -> None:
    shards.clear_attempts(table, uid)
    w = shards.ShardWriter(table, SCHEMA, unit=uid)
    w.write(ROWS)
    w.commit()
    if hasattr(shards, "drop_markers"):
        shards.drop_markers(table, uid)


def main(sizes: list[int], timed: int = 200) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            table = f"{d}/t"
            for i in range(n):
                unit(table, f"u{i:06d}")
            t0 = time.perf_counter()
            for i in range(timed):
                unit(table, f"new{i:06d}")
            per = (time.perf_counter() - t0) / timed
            print(f"committed units {n:6d}: {per * 1e3:.2f} ms per unit commit ({timed} timed)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 2000])
