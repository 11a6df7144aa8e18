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

Scale mode (`--index-rows 100000,1000000`): a table of N rows with 8-byte images (the index's size is
what grows), built once per N (time of `ensure_index`, inline and as map/reduce units on the local
executor); then, each in a fresh process, the previous reader (the whole index in memory plus a dict
id -> position, reproduced below as `OldIndexReader`) and the partitioned one: open time and RSS,
and lookups of random ids (`info` of one id; where the rows of 10 ids, and of all of them at once,
are: the index part of `rows`), ids per second.

    .venv/bin/python bench/image_reader.py --index-rows 100000,1000000
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acedata import image_index, shards
from acedata.image_index import ImageReader
from acedata.schemas import IMAGES, conform


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
    image_index.ensure_index(path)  # what the runtime does after a stage: the partitioned index
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


class OldIndexReader:
    """The previous ImageReader's index: every index row of the table in memory, a dict id -> position
    (the rows themselves are then read as today, so only the index part is reproduced)."""

    def __init__(self, table: str) -> None:
        from acedata.image_index import _read_index, index_name
        from acedata.kept import dropped_uris, keep_mask

        fs, d = shards.resolve(table)
        manifest = shards.read_manifest(table)
        parts = [_read_index(fs, os.path.join(d, image_index.INDEX_DIR, index_name(s["file"], s["sha256"])))
                 for s in manifest["shards"]]
        index = pa.concat_tables(parts)
        dropped = dropped_uris([table])
        if dropped:
            mask = keep_mask(index.column("source_uri"), index.column("image_id"), dropped)
            index = index if mask is None else index.filter(mask)
        self._pos: dict[str, int] = {}
        for i, image_id in enumerate(index.column("image_id").to_pylist()):
            self._pos.setdefault(image_id, i)
        self._group = index.column("row_group").to_numpy()
        self._row = index.column("row").to_numpy()
        self._meta = index.select(["width", "height", "kind", "shard"])

    def info(self, image_id: str) -> dict:
        p = self._pos[image_id]
        return {c: self._meta.column(c)[p].as_py() for c in ("width", "height", "kind")}

    def where(self, ids: list[str]) -> list[tuple]:
        return [(self._meta.column("shard")[p].as_py(), int(self._group[p]), int(self._row[p]))
                for p in (self._pos[i] for i in ids)]


def make_index_table(path: str, n: int, per_shard: int = 65536) -> None:
    """N rows, 8-byte images, sha256-like ids; per-shard index files as units write them."""
    for k, lo in enumerate(range(0, n, per_shard)):
        ids = [hashlib.sha256(i.to_bytes(8, "big")).hexdigest() for i in range(lo, min(n, lo + per_shard))]
        m = len(ids)
        t = pa.table({"image_id": ids, "source_uri": [f"bench://{lo + i}" for i in range(m)],
                      "width": pa.array(np.full(m, 64, np.int32)), "height": pa.array(np.full(m, 48, np.int32)),
                      "format": ["PNG"] * m, "image": pa.array([{"bytes": b"12345678", "path": None}] * m,
                                                                IMAGES.field("image").type),
                      "kind": ["image"] * m})
        w = shards.ShardWriter(path, IMAGES, unit=f"u{k:05d}", max_rows=per_shard)
        w.write(conform(t, IMAGES))
        image_index.write_index(path, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(path, IMAGES, table="images")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def child(kind: str, table: str, k: int, seed: int) -> dict:
    """In a fresh process: open one reader, then look up `k` random ids."""
    manifest = shards.read_manifest(table)
    n = manifest["rows"]
    rng = random.Random(seed)
    ids = [hashlib.sha256(rng.randrange(n).to_bytes(8, "big")).hexdigest() for _ in range(k)]
    base = _rss_mb()
    t0 = time.perf_counter()
    reader = OldIndexReader(table) if kind == "old" else ImageReader([table])
    t_open = time.perf_counter() - t0
    rss_open = _rss_mb() - base
    t0 = time.perf_counter()
    for i in ids[: k // 2]:
        reader.info(i)
    t_info = time.perf_counter() - t0
    batches = [ids[i: i + 10] for i in range(k // 2, k, 10)]
    where = reader.where if kind == "old" else reader._lookup  # the index part of rows(): where each id is
    t0 = time.perf_counter()
    for b in batches:
        where(b)
    t_rows = time.perf_counter() - t0
    t0 = time.perf_counter()
    where(ids)
    t_all = time.perf_counter() - t0
    out = {"open_s": t_open, "rss_open_mb": rss_open, "rss_end_mb": _rss_mb() - base,
           "info_ids_per_s": (k // 2) / t_info, "rows10_ids_per_s": (k - k // 2) / t_rows, "all_ids_per_s": k / t_all}
    if kind == "new":
        out["index_rows_read"] = reader.index_rows_read
    return out


def scale_main(root: str, sizes: list[int], k: int) -> None:
    from acedata import image_index_build

    for n in sizes:
        path = os.path.join(root, f"t{n}", "images")
        t0 = time.perf_counter()
        make_index_table(path, n)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        image_index.ensure_index(path)
        t_inline = time.perf_counter() - t0
        inline_dir = image_index.parts_dir(path)
        saved = os.path.join(root, "inline-parts")
        shutil.move(inline_dir, saved)
        old_limit = image_index_build.INLINE_MAX_ROWS
        image_index_build.INLINE_MAX_ROWS = 0  # the same table, built by map/reduce units (local executor)
        t0 = time.perf_counter()
        image_index.ensure_index(path)
        t_dist = time.perf_counter() - t0
        image_index_build.INLINE_MAX_ROWS = old_limit
        same = all(filecmp.cmp(os.path.join(saved, f), os.path.join(inline_dir, f), shallow=False)
                   for f in os.listdir(saved))
        shutil.rmtree(saved)
        print(f"\n[{n} index rows] table written in {t_make:.1f} s; partitioned index built inline in "
              f"{t_inline:.1f} s, by map/reduce units (local executor) in {t_dist:.1f} s; same bytes: {same}")
        for kind in ("old", "new"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--table", path, "--ids", str(k)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            extra = f"; index rows read {r['index_rows_read']}" if "index_rows_read" in r else ""
            print(f"  {kind}: open {r['open_s']:7.3f} s, RSS +{r['rss_open_mb']:7.1f} MB after open "
                  f"(+{r['rss_end_mb']:.1f} MB after lookups); "
                  f"info {r['info_ids_per_s']:7.0f} ids/s, lookup of 10 {r['rows10_ids_per_s']:7.0f} ids/s, "
                  f"of {k}: {r['all_ids_per_s']:8.0f} ids/s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--side", type=int, default=64, help="image side in pixels (noise JPEG)")
    ap.add_argument("--ids", type=int, default=1000, help="random ids fetched")
    ap.add_argument("--calls", type=int, default=50, help="calls the ids are split into for the many-calls case")
    ap.add_argument("--repeat", type=int, default=7, help="best of this many interleaved runs")
    ap.add_argument("--layout", choices=["both", "ingest", "compacted"], default="both")
    ap.add_argument("--keep", help="write the tables here and keep them")
    ap.add_argument("--index-rows", help="scale mode: comma-separated table sizes (rows), e.g. 100000,1000000")
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.table, a.ids, 1)))
        return
    root = a.keep or tempfile.mkdtemp(prefix="bench-image-reader-")
    try:
        if a.index_rows:
            scale_main(root, [int(x) for x in a.index_rows.split(",")], a.ids)
            return
        layouts = ["ingest", "compacted"] if a.layout == "both" else [a.layout]
        for layout in layouts:
            run_layout(root, layout, a.images, a.side, a.ids, a.calls, a.repeat)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
