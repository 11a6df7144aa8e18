"""Waves 0 and 1: read each input shard once and meet pairs with their images on workers.

Wave 0 (`scan`, one unit per input shard) hash-partitions pairs, instructions and reviews by
pair id, the images tables' index rows (id, size; never bytes) by image id, and writes one
request per (image id, pair id) a pair or caption needs. Wave 1 (`images`, one unit per
image bucket) answers the requests of its bucket from the index rows of the same bucket and
sends the answers back by pair id. Each row keeps its input order (`src`, `row`), so a
later reduce can keep the first copy of a duplicated id, as a single reader would.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from acedata import image_index, shards, shuffle
from acedata.assemble import fetch
from acedata.assemble.records import (
    IMAGE_ANSWERS,
    IMAGE_REQUESTS,
    IMAGE_SIZES,
    INSTR_COLUMNS,
    INSTR_ROWS,
    PAIR_COLUMNS,
    PAIR_ROWS,
    REVIEW_ROWS,
    T2I_PREFIX,
)
from acedata.image_index_files import duplicate_shards
from acedata.schemas import REVIEWS, conform

INPUTS = ("pairs", "instructions", "reviews", "images", "duplicates")


def shard_payloads(what: str, tables: list[str]) -> list[dict[str, Any]]:
    """One wave-0 payload per shard of `tables` (table order, then manifest order); for
    "duplicates", per shard of each images table's `duplicates` listing."""
    if what == "duplicates":
        return [{"what": what, "table": table, "file": d["file"], "src": (t << 32) | j}
                for t, table in enumerate(tables) for j, d in enumerate(duplicate_shards(table))]
    out = []
    for t, table in enumerate(tables):
        manifest = shards.read_manifest(table) if what == "images" else None
        infos = manifest["shards"] if manifest else None
        for s, uri in enumerate(shards.list_shards(table)):
            p = {"what": what, "uri": uri, "src": (t << 32) | s}
            if infos is not None:  # where the shard's index file is (named by the shard's digest)
                p |= {"table": table, "file": infos[s]["file"], "sha256": infos[s]["sha256"], "rows": infos[s]["rows"]}
            out.append(p)
    return out


def _ordered(t: pa.Table, key: pa.Array | pa.ChunkedArray, src: int) -> pa.Table:
    n = t.num_rows
    return t.add_column(0, "key", key).add_column(1, "src", pa.array(np.full(n, src, np.int64))) \
        .add_column(2, "row", pa.array(np.arange(n, dtype=np.int64)))


def scan(p: dict[str, Any], scratch: str, n_pair: int, n_img: int, writer: str) -> dict[str, int]:
    """Partition one input shard into the scratch buckets; returns counts."""
    what = p["what"]
    if what == "images":
        t = _index_rows(p)
        rows = _ordered(t.select(["width", "height"]), t.column("image_id"), p["src"])
        shuffle.write_buckets(conform(rows, IMAGE_SIZES), "key", n_img, _d(scratch, "imgidx"), writer)
        fetch.scan_places(t, p["src"] >> 32, p["src"] & 0xFFFFFFFF, scratch, n_img, writer)
        return {"scan_images": t.num_rows}
    if what == "duplicates":
        return {"scan_duplicates": fetch.scan_duplicates(p["table"], p["src"] >> 32, p["file"], scratch, n_img, writer)}
    if what == "reviews":
        t = conform(shards.open_parquet(p["uri"]).read(), REVIEWS)
        shuffle.write_buckets(conform(t.add_column(0, "key", t.column("pair_id")), REVIEW_ROWS), "key", n_pair,
                              _d(scratch, "reviews"), writer)
        return {"scan_reviews": t.num_rows}
    if what == "pairs":
        t = shards.open_parquet(p["uri"]).read(columns=PAIR_COLUMNS)
        shuffle.write_buckets(conform(_ordered(t, t.column("pair_id"), p["src"]), PAIR_ROWS), "key", n_pair,
                              _d(scratch, "pairs"), writer)
        requests = _pair_requests(t.select(["pair_id", "source_id", "target_id", "mask_id", "extra_input_ids"]))
    else:
        t = shards.open_parquet(p["uri"]).read(columns=INSTR_COLUMNS)
        shuffle.write_buckets(conform(_ordered(t, t.column("pair_id"), p["src"]), INSTR_ROWS), "key", n_pair,
                              _d(scratch, "instr"), writer)
        caps = sorted({pid for pid in t.column("pair_id").to_pylist() if pid.startswith(T2I_PREFIX)})
        requests = [(pid[len(T2I_PREFIX):], pid) for pid in caps]
    req = pa.table({"key": [i for i, _ in requests], "pair_id": [q for _, q in requests]}, schema=IMAGE_REQUESTS)
    shuffle.write_buckets(req, "key", n_img, _d(scratch, "imgreq"), writer)
    return {f"scan_{what}": t.num_rows}


def _pair_requests(t: pa.Table) -> list[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for r in t.to_pylist():
        for i in [r["source_id"], r["target_id"], r["mask_id"], *(r["extra_input_ids"] or [])]:
            if i is not None:
                out.add((i, r["pair_id"]))
    return sorted(out)


def _index_rows(p: dict[str, Any]) -> pa.Table:
    """The index rows of one images shard (`image_index`): its index file when that holds the
    shard's rows (as the reader's `shard_index` takes it), else built from its metadata columns."""
    if "file" in p:
        fs, d = shards.resolve(p["table"])
        path = posixpath.join(d, image_index.INDEX_DIR, image_index.index_name(p["file"], p["sha256"]))
        if shards.exists(fs, path):
            with fs.open_input_file(path) as f:
                t = pq.ParquetFile(f).read()
            if t.num_rows == p["rows"]:
                return t
    return image_index.build_shard_index(shards.open_parquet(p["uri"]), p.get("file") or posixpath.basename(p["uri"]))


def answer(bucket: int, scratch: str, n_pair: int, writer: str) -> dict[str, int]:
    """Wave 1: each image request of this bucket -> found or not, with the first copy's size."""
    idx = shuffle.read_bucket(_d(scratch, "imgidx"), bucket, schema=IMAGE_SIZES)
    sizes: dict[str, tuple[int, int, int | None, int | None]] = {}
    for i, s, r, w, h in zip(*(idx.column(c).to_pylist() for c in ("key", "src", "row", "width", "height"))):
        if i not in sizes or (s, r) < sizes[i][:2]:
            sizes[i] = (s, r, w, h)
    req = shuffle.read_bucket(_d(scratch, "imgreq"), bucket, schema=IMAGE_REQUESTS)
    wanted = sorted(set(zip(req.column("pair_id").to_pylist(), req.column("key").to_pylist())))
    hit = [sizes.get(i) for _, i in wanted]
    out = pa.table({"key": [q for q, _ in wanted], "image_id": [i for _, i in wanted],
                    "found": [x is not None for x in hit], "width": [x[2] if x else None for x in hit],
                    "height": [x[3] if x else None for x in hit]}, schema=IMAGE_ANSWERS)
    shuffle.write_buckets(out, "key", n_pair, _d(scratch, "imgans"), writer)
    return {"image_requests": len(wanted), "images_missing": hit.count(None)}


def _d(scratch: str, name: str) -> str:
    return posixpath.join(scratch, name)
