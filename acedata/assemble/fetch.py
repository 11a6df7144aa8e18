"""Image bytes for the build wave, by a join on workers instead of random reads per output unit.

An output unit's ~500-5,000 rows need images from all over the images tables (the rows are in
shuffled order). Read through the shared reader, each unit reads every row group that holds one
of them — row groups of 32 MB, or every group of a small-row table — so the reads per unit grew
with the table (10^7 generated rows: every unit read all 153 image row groups, ~3 CPU s per 5,000
rows; the in-memory index each worker built held 2.9 GB). Here every image row group is read
once, by one unit:

    label   each sample also requests its images (and masks) for its output bucket, by image id
    locate  one unit per image bucket: the requests meet that bucket's index rows (written by the
            scan wave from each shard's index file) and the sibling `duplicates` listings, and the
            row the shared reader would serve — per table the first row by (shard, row group, row)
            not listed as a duplicate (`finish_partition`, `first_kept`: the index's own rule),
            the first table holding the id — is sent to its shard
    read    one unit per image shard: reads the row groups its requests name, a few at a time,
            and sends each image's bytes to the output buckets that asked for it
    build   reads its samples and its images' bytes (rows.py)

Each wave's unit reads about the same rows at any table size, so the cost per row stays flat. The
scratch holds each requested image once per output bucket that uses it.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acedata import image_index, shards, shuffle
from acedata.image_index_files import DUP_SCHEMA, MAP_SCHEMA, finish_partition, read_duplicates, to_part
from acedata.image_index_parts import first_kept

# key: image id; split: index into the run's split names; out: output bucket of that split
FETCH_REQUESTS = pa.schema([pa.field("key", pa.string()), pa.field("split", pa.int32()), pa.field("out", pa.int32())])
# a table's index rows as the scan wave writes them (key: image id; tab: table index)
PLACES = pa.schema([pa.field("key", pa.string()), pa.field("tab", pa.int32()), *MAP_SCHEMA])
DUPLICATES = pa.schema([pa.field("key", pa.string()), pa.field("tab", pa.int32()),
                        *DUP_SCHEMA])
# requests with the served row's place, bucketed by image shard (global ordinal)
LOCATED = pa.schema([pa.field("row_group", pa.int32()), pa.field("row", pa.int32()), pa.field("image_id", pa.string()),
                     pa.field("split", pa.int32()), pa.field("out", pa.int32())])
IMAGE_BYTES = pa.schema([pa.field("image_id", pa.string()), pa.field("bytes", pa.binary())])
# a read unit holds this much of the shard at once, plus the bytes it sends (each image once per
# output bucket that asked for it: ~3 in the generated runs)
GROUPS_PER_READ = 4
READ_BYTES = 64 << 20


def _d(scratch: str, name: str) -> str:
    return posixpath.join(scratch, name)


def bytes_dir(scratch: str, split: str) -> str:
    return _d(scratch, f"bytes-{split}")


def scan_places(index: pa.Table, tab: int, shard: int, scratch: str, n_img: int, writer: str) -> None:
    """Scan wave: one images shard's index rows (`image_index` schema), keyed by image id."""
    rows = to_part(index, shard)
    rows = rows.add_column(0, "key", rows.column("image_id")).add_column(
        1, "tab", pa.array(np.full(rows.num_rows, tab, np.int32)))
    shuffle.write_buckets(rows.cast(PLACES), "key", n_img, _d(scratch, "imgplace"), writer)


def scan_duplicates(table: str, tab: int, file: str, scratch: str, n_img: int, writer: str) -> int:
    """Scan wave: one shard of an images table's `duplicates` listing, keyed by image id."""
    t = read_duplicates(table, [file])
    t = t.add_column(0, "key", t.column("image_id")).add_column(1, "tab", pa.array(np.full(t.num_rows, tab, np.int32)))
    shuffle.write_buckets(t.cast(DUPLICATES), "key", n_img, _d(scratch, "imgdups"), writer)
    return t.num_rows


def request(image_ids: list[str], split: int, outs: list[int], scratch: str, n_img: int, writer: str) -> None:
    """Label wave: (image id, split, output bucket) requests, keyed by image id."""
    t = pa.table({"key": image_ids, "split": pa.array(np.full(len(image_ids), split, np.int32)),
                  "out": pa.array(outs, pa.int32())}, schema=FETCH_REQUESTS)
    shuffle.write_buckets(t, "key", n_img, _d(scratch, "fetchreq"), writer)


def locate(b: int, scratch: str, shard_offsets: list[int], writer: str) -> dict[str, int]:
    """Locate wave: each distinct request of image bucket `b` -> the served row, sent to its shard."""
    req = shuffle.read_bucket(_d(scratch, "fetchreq"), b, schema=FETCH_REQUESTS)
    if not req.num_rows:
        return {}
    req = req.group_by(["key", "split", "out"]).aggregate([])  # each image once per output bucket
    wanted = pc.unique(req.column("key"))
    places = shuffle.read_bucket(_d(scratch, "imgplace"), b, schema=PLACES)
    places = places.filter(pc.is_in(places.column("key"), value_set=wanted))
    dups = shuffle.read_bucket(_d(scratch, "imgdups"), b, schema=DUPLICATES)
    served: dict[str, tuple[int, int, int]] = {}  # image id -> (global shard, row group, row)
    for tab in range(len(shard_offsets)):  # tables in order: the first holding a kept row wins
        rows = places.filter(pc.equal(places.column("tab"), tab))
        if not rows.num_rows:
            continue
        d = dups.filter(pc.equal(dups.column("tab"), tab))
        kept = first_kept(finish_partition(rows.drop_columns(["key", "tab"]), d.drop_columns(["key", "tab"])), None)
        for i, s, g, r in zip(*(kept.column(c).to_pylist() for c in ("image_id", "shard", "row_group", "row"))):
            if i not in served:
                served[i] = (shard_offsets[tab] + s, g, r)
    keys, splits, outs = (req.column(c).to_pylist() for c in ("key", "split", "out"))
    absent = sorted({i for i in keys if i not in served})
    if absent:  # the plan found every image it kept; only a changed table or listing gets here
        raise image_index.UnknownImages(absent, "the images tables (changed since planning?)")
    at = [served[i] for i in keys]
    t = pa.table({"row_group": [a[1] for a in at], "row": [a[2] for a in at], "image_id": keys,
                  "split": splits, "out": outs}, schema=LOCATED)
    shuffle.write_parts(t, np.array([a[0] for a in at], np.int64), _d(scratch, "fetchloc"), writer)
    return {}


def read(k: int, uri: str, scratch: str, splits: list[str], writer: str) -> dict[str, int]:
    """Read wave: the requested rows of image shard `k`, each row group read once."""
    t = shuffle.read_bucket(_d(scratch, "fetchloc"), k, schema=LOCATED)
    if not t.num_rows:
        return {}
    t = t.sort_by([("row_group", "ascending"), ("row", "ascending"), ("split", "ascending"), ("out", "ascending")])
    groups = np.unique(t.column("row_group").to_numpy())
    pf = shards.open_parquet(uri)
    g_col = t.column("row_group").to_numpy()
    for n, batch in enumerate(_batches(pf, groups.tolist())):
        data = pf.read_row_groups(batch, columns=["image_id", "image"], use_threads=False)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in batch])
        first = dict(zip(batch, starts[:-1].tolist()))
        sel = t.filter(pa.array(np.isin(g_col, batch)))
        pos = np.array([first[g] + r for g, r in zip(sel.column("row_group").to_pylist(), sel.column("row").to_pylist())],
                       np.int64)
        got = data.take(pa.array(pos))
        if not got.column("image_id").equals(sel.column("image_id")):
            raise RuntimeError(f"{uri}: rows changed since the images were indexed; plan again")
        out = pa.table({"image_id": sel.column("image_id"), "bytes": pc.struct_field(got.column("image"), "bytes")},
                       schema=IMAGE_BYTES)
        split_of = sel.column("split").to_numpy()
        buckets = sel.column("out").to_numpy().astype(np.int64)
        for s, name in enumerate(splits):
            mine = split_of == s
            if mine.any():
                shuffle.write_parts(out.filter(pa.array(mine)), buckets[mine], bytes_dir(scratch, name),
                                    f"{writer}-{n:05d}")
    return {}


def _batches(pf: Any, groups: list[int]) -> list[list[int]]:
    """Row groups to read together: at most GROUPS_PER_READ of them and READ_BYTES (stored size),
    at least one."""
    out: list[list[int]] = []
    size = 0
    for g in groups:
        b = pf.metadata.row_group(g).total_byte_size
        if not out or len(out[-1]) >= GROUPS_PER_READ or size + b > READ_BYTES:
            out.append([])
            size = 0
        out[-1].append(g)
        size += b
    return out


def fetched(scratch: str, split: str, b: int) -> dict[str, bytes]:
    """Build wave: image id -> bytes of output bucket `b` of `split`."""
    t = shuffle.read_bucket(bytes_dir(scratch, split), b, schema=IMAGE_BYTES)
    return dict(zip(t.column("image_id").to_pylist(), t.column("bytes").to_pylist()))


def payloads(tables: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """The read wave's payloads (one per image shard, tables in order) and each table's first ordinal."""
    out, offsets = [], []
    for table in tables:
        offsets.append(len(out))
        out += [{"uri": uri} for uri in shards.list_shards(table)]
    return out, offsets
