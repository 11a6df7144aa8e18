"""Benchmark: fetching image bytes by id — the image index + row-group reader vs the old whole-shard read.

Generates an images table of N distinct JPEG images (noise, so zstd cannot shrink them) written by
acedata's ShardWriter with its per-shard image index, in two layouts:

- `ingest`: one shard per 64-image unit (what `ingest` writes with `files_per_unit: 64`);
- `compacted`: 256 MB shards / 32 MB row groups scaled down by the image size (about 213 images
  per row group, as with 150 KB photos), the layout of a compacted or re-sharded table.

Then it fetches 1k random ids (seeded) three ways and checks both readers return the same bytes:
opening (old: the `image_id` column of every shard; new: the index files), one call for all ids,
and many small calls (the pattern of per-set scorers, the review server, per-unit workers).
The baseline is the old `acedata.lookup.ImageStore` logic, reproduced below, in the same process.

    .venv/bin/python bench/image_reader.py                    # 20k images of 64x64
    .venv/bin/python bench/image_reader.py --images 50000 --side 96 --keep DIR
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acedata import image_index, shards
from acedata.image_index import ImageReader
from acedata.schemas import IMAGES


class OldStore:
    """The pre-index lookup.ImageStore: index from every shard's image_id column, whole-shard reads."""

    def __init__(self, tables: list[str]) -> None:
        self._where: dict[str, tuple[str, int]] = {}
        for t in tables:
            for shard in shards.list_shards(t):
                ids = shards.open_parquet(shard).read(columns=["image_id"]).column("image_id").to_pylist()
                for i, image_id in enumerate(ids):
                    self._where.setdefault(image_id, (shard, i))

    def image_bytes(self, image_ids: list[str]) -> dict[str, bytes]:
        by_shard: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for image_id in set(image_ids):
            if image_id in self._where:
                shard, row = self._where[image_id]
                by_shard[shard].append((row, image_id))
        out: dict[str, bytes] = {}
        for shard, wanted in by_shard.items():
            table = shards.open_parquet(shard).read(columns=["image_id", "image"])
            rows = table.take(pa.array([r for r, _ in wanted]))
            for (_, image_id), row in zip(wanted, rows.to_pylist()):
                out[image_id] = row["image"]["bytes"]
        return out


def make_table(path: str, n: int, side: int, layout: str, seed: int = 0) -> tuple[list[str], float]:
    """Write the table (with its index); returns the ids and the mean image size in bytes."""
    import hashlib

    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, ids, total = [], [], 0
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        image_id = hashlib.sha256(data).hexdigest()
        total += len(data)
        ids.append(image_id)
        rows.append({"image_id": image_id, "source_uri": f"bench://{i}", "width": side, "height": side,
                     "format": "JPEG", "image": {"bytes": data, "path": None}, "kind": "image"})
    mean = total / n
    table = pa.Table.from_pylist(rows, IMAGES)
    if layout == "ingest":
        units = [(f"u{k:06d}", table.slice(s, 64), {}) for k, s in enumerate(range(0, n, 64))]
    else:
        scale = mean / 150_000  # as if every image were a 150 KB photo
        kw = {"max_bytes": int((256 << 20) * scale), "row_group_bytes": int((32 << 20) * scale)}
        units = [("all", table, kw)]
    for unit, part, kw in units:
        w = shards.ShardWriter(path, IMAGES, unit=unit, **kw)
        w.write(part)
        image_index.write_index(path, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(path, IMAGES, table="images")
    image_index.ensure_index(path)  # what the runtime does after a stage: the merged index file
    return ids, mean


def _pair(old_fn, new_fn, repeat: int = 3) -> tuple[float, float, object, object]:
    """Best-of-`repeat` seconds of both, interleaved (the machine is shared: load drifts)."""
    t_old = t_new = float("inf")
    out_old = out_new = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out_old = old_fn()
        t1 = time.perf_counter()
        out_new = new_fn()
        t2 = time.perf_counter()
        t_old, t_new = min(t_old, t1 - t0), min(t_new, t2 - t1)
    return t_old, t_new, out_old, out_new


def run_layout(root: str, layout: str, n: int, side: int, k: int, calls: int, repeat: int) -> dict[str, float]:
    path = os.path.join(root, layout)
    ids, mean = make_table(path, n, side, layout)
    manifest = shards.read_manifest(path)
    groups = sum(shards.open_parquet(s).metadata.num_row_groups for s in shards.list_shards(path))
    # The reader's LRU (256 MB) scaled like the shards, as if every image were a 150 KB photo.
    lru = int((256 << 20) * mean / 150_000)
    wanted = random.Random(1).sample(ids, k)
    t_old_open, t_new_open, old, new = _pair(lambda: OldStore([path]), lambda: ImageReader([path], cache_bytes=lru),
                                             repeat)
    assert new.scanned_shards == 0
    cold = [ImageReader([path], cache_bytes=lru) for _ in range(2 * repeat)]  # a cold LRU per timed call
    t_old_one, t_new_one, got_old, got_new = _pair(lambda: old.image_bytes(wanted),
                                                   lambda: cold.pop().image_bytes(wanted), repeat)
    assert got_old == got_new and len(got_new) == k
    step = max(1, k // calls)
    chunks = [wanted[i : i + step] for i in range(0, k, step)]

    def many(store) -> int:
        return sum(len(store.image_bytes(c)) for c in chunks)

    readers = []

    def many_new() -> int:
        readers.append(cold.pop())
        return many(readers[-1])

    t_old_many, t_new_many, _, _ = _pair(lambda: many(old), many_new, repeat)
    print(f"\n[{layout}] {n} images, mean {mean / 1000:.1f} KB, {len(manifest['shards'])} shards, {groups} row groups; "
          f"{k} random ids; reader LRU {lru / 1e6:.1f} MB")
    rows = [("open", t_old_open, t_new_open, ""),
            (f"1 call x {k}", t_old_one, t_new_one, ""),
            ("open + 1 call", t_old_open + t_old_one, t_new_open + t_new_one, ""),
            (f"{len(chunks)} calls x {step}", t_old_many, t_new_many,
             f"   (row groups read: {readers[-1].row_groups_read}; table has {groups})")]
    for name, a, b, note in rows:
        print(f"  {name:<16} old {a:8.3f} s   new {b:8.3f} s   ratio old/new {a / b:6.2f}{note}")
    return {"open": t_old_open / t_new_open, "one": t_old_one / t_new_one, "many": t_old_many / t_new_many}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--side", type=int, default=64, help="image side in pixels (noise JPEG)")
    ap.add_argument("--ids", type=int, default=1000, help="random ids fetched")
    ap.add_argument("--calls", type=int, default=50, help="calls the ids are split into for the many-calls case")
    ap.add_argument("--repeat", type=int, default=7, help="best of this many interleaved runs")
    ap.add_argument("--layout", choices=["both", "ingest", "compacted"], default="both")
    ap.add_argument("--keep", help="write the tables here and keep them")
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="bench-image-reader-")
    try:
        layouts = ["ingest", "compacted"] if a.layout == "both" else [a.layout]
        for layout in layouts:
            run_layout(root, layout, a.images, a.side, a.ids, a.calls, a.repeat)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
