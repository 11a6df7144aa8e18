"""Which stored copy of an image is kept, decided on workers in three waves (no rows on the driver).

Two units may each store a copy of one image (ingest: the same file in two sources or units;
synthesize: the same mask drawn for two photos). Committed shards are never rewritten, so the
stage lists every copy but one in its `duplicates` table and readers skip them (`acedata.kept`).
Deciding which copy stays is a group-by image_id; listing the losers so that a reader of one
images shard finds its own rows cheaply is a group-by the unit that stored them. Three waves
after the units that wrote the images (`Stage.next_wave`):

1. shuffle units (`copies-sNNNNN`) each read the `image_id`/`source_uri` columns of some
   committed units' image shards, with each row's place (unit, shard part, row), and write
   them to hash buckets by image_id (`acedata.shuffle`);
2. decide units (`copies-dNNNNN`) each read one bucket and pick, for every image_id stored more
   than once, every copy but the one of smallest rank; they write those rows to buckets by
   the unit that stored the copy;
3. index units (`cross-unit-nNNNNN-iNNNNN`, `acedata.kept.CROSS_UNIT`, n the bucket count)
   each read one such bucket and commit it, sorted by place, as ordinary unit output of the
   `duplicates` table: a reader of a shard of unit U reads only unit `...-i<bucket of U>`.

The rank is the stage's rule (ingest: the source order key; synthesize: the photo a copy was
drawn from) followed by (unit id, row in the unit): a total order on the copies, so the
decision depends neither on bucket counts nor on how rows were grouped into shuffle units.
A listed copy is named by its place, not by (source_uri, image_id): the same file read twice
has one uri and one id in both copies. The driver only names units; its memory grows with
their number, never with rows.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from acedata import shards, shuffle
from acedata.kept import CROSS_UNIT
from acedata.schemas import DUPLICATES
from acedata.stage import UnitResult, WorkUnit

# Rows one decide unit holds (about 100 bytes each) and rows one shuffle unit reads. Every
# decide unit reads one piece per shuffle unit (acedata/shuffle.py), so fewer, larger shuffle
# units keep the reads (shuffle units x buckets) few at scale. Module constants, read on the
# driver only (unit payloads carry the numbers), so tests can shrink them on any executor.
ROWS_PER_BUCKET = 500_000
ROWS_PER_SHUFFLE = 500_000

SCRATCH = "_shuffle/copies"
INDEX = "_shuffle/copies-index"  # the losing copies, by the unit that stored them
# row: in the unit (the rank's tie-break); part, part_row: the copy's shard and row in it
COPY_ROWS = pa.schema([("image_id", pa.string()), ("source_uri", pa.string()), ("unit", pa.string()),
                       ("row", pa.int64()), ("part", pa.int32()), ("part_row", pa.int64())])

# The stage's rule: (source_uri, unit id, row in unit) -> a sortable rank; smallest is kept.
Rank = Callable[[str, str, int], Any]


def scratch(stage_dir: str) -> str:
    return posixpath.join(stage_dir, SCRATCH)


def is_copies_unit(unit: WorkUnit) -> bool:
    return "copies" in unit.payload


def bucket_count(rows: int) -> int:
    return shuffle.bucket_count(rows, ROWS_PER_BUCKET)


def shuffle_units(writers: list[str], stored_rows: int, buckets: int) -> list[WorkUnit]:
    """Units that bucket the rows `writers` (committed unit ids) stored; [] when no image can
    have two stored copies (fewer than two writers, or no rows)."""
    if len(writers) < 2 or stored_rows <= 0:
        return []
    per = max(1, ROWS_PER_SHUFFLE * len(writers) // stored_rows)  # writers per unit, by their mean rows
    ids = sorted(writers)
    return [WorkUnit(f"copies-s{k:05d}", {"copies": "shuffle", "units": ids[i : i + per], "buckets": buckets})
            for k, i in enumerate(range(0, len(ids), per))]


def decide_units(buckets: int) -> list[WorkUnit]:
    return [WorkUnit(f"copies-d{b:05d}", {"copies": "decide", "bucket": b, "buckets": buckets})
            for b in range(buckets)]


def index_units(buckets: int, decided: int) -> list[WorkUnit]:
    """Units that commit the decided rows, one per bucket of storing units; [] when none was decided.

    The bucket count is in every id, so a reader finds its unit's bucket from the names alone."""
    if decided <= 0:
        return []
    return [WorkUnit(index_unit(buckets, b), {"copies": "index", "bucket": b}) for b in range(buckets)]


def index_unit(buckets: int, bucket: int) -> str:
    return f"{CROSS_UNIT}-n{buckets:05d}-i{bucket:05d}"


def run(unit: WorkUnit, stage_dir: str, images_dir: str, rank: Rank) -> UnitResult:
    """A shuffle, decide or index unit, on a worker."""
    p = unit.payload
    if p["copies"] == "shuffle":
        rows = _unit_rows(images_dir, p["units"])
        shuffle.write_buckets(rows, "image_id", p["buckets"], scratch(stage_dir), unit.id)
        return UnitResult({}, {"copies_shuffled": rows.num_rows})
    if p["copies"] == "decide":
        later = decide(shuffle.read_bucket(scratch(stage_dir), p["bucket"], schema=COPY_ROWS), rank)
        shuffle.write_buckets(later, "unit", p["buckets"], posixpath.join(stage_dir, INDEX), unit.id)
        return UnitResult({}, {"copies_decided": later.num_rows})
    rows = shuffle.read_bucket(posixpath.join(stage_dir, INDEX), p["bucket"], schema=DUPLICATES)
    rows = rows.sort_by([("unit", "ascending"), ("part", "ascending"), ("row", "ascending")])
    return UnitResult({"duplicates": rows}, {"cross_unit_duplicates": rows.num_rows})


def _unit_rows(images_dir: str, units: list[str]) -> pa.Table:
    """(image_id, source_uri, unit, row, part, part_row) of the given units' stored images."""
    parts = []
    # these units' fragments only: listing `_units/` would cost every shuffle unit O(all units)
    fs, d = shards.resolve(images_dir)
    infos = fs.get_file_info([posixpath.join(d, shards.UNITS_DIR, f"{u}.json") for u in units])
    for u, info in zip(units, infos):
        if info.type == pafs.FileType.NotFound:  # a unit that wrote no such table
            continue
        row = 0
        for s in shards.read_json(fs, info.path)["shards"]:
            t = shards.open_parquet(posixpath.join(images_dir.rstrip("/"), s["file"])).read(
                columns=["image_id", "source_uri"])
            n = t.num_rows
            place = shards.shard_place(s["file"])
            parts.append(pa.table({"image_id": t.column("image_id"), "source_uri": t.column("source_uri"),
                                   "unit": pa.array([u] * n, pa.string()),
                                   "row": pa.array(range(row, row + n), pa.int64()),
                                   "part": pa.array([place[1]] * n, pa.int32()),
                                   "part_row": pa.array(range(n), pa.int64())}, COPY_ROWS))
            row += n
    return pa.concat_tables(parts) if parts else COPY_ROWS.empty_table()


def decide(part: pa.Table, rank: Rank) -> pa.Table:
    """The `duplicates` rows of one bucket: every stored copy of an image_id but the smallest-ranked,
    each with its place. Also checks that no stored row is listed twice."""
    ids = part.column("image_id").to_pylist()
    uris = part.column("source_uri").to_pylist()
    units = part.column("unit").to_pylist()
    rows = part.column("row").to_pylist()
    copies: dict[str, list[int]] = defaultdict(list)
    for i, image_id in enumerate(ids):
        copies[image_id].append(i)
    later: list[tuple[str, Any, int]] = []
    for image_id, members in copies.items():
        ranked = sorted(members, key=lambda i: rank(uris[i], units[i], rows[i]))
        later.extend((image_id, rank(uris[i], units[i], rows[i]), i) for i in ranked[1:])
    later.sort(key=lambda x: (x[0], x[1]))
    pick = pa.array([x[2] for x in later], pa.int64())
    out = pa.table({"source_uri": part.column("source_uri").take(pick), "image_id": part.column("image_id").take(pick),
                    "unit": part.column("unit").take(pick), "part": part.column("part").take(pick),
                    "row": part.column("part_row").take(pick)}, DUPLICATES)
    if len(set(zip(units, rows))) != len(units):  # a unit's rows shuffled twice
        raise RuntimeError("copies: a stored row reached the decision twice")
    return out


def cleanup(stage_dir: str) -> None:
    """Remove the stage's scratch buckets (`_shuffle/`, every wave's, the index's) once all units committed."""
    shuffle.delete(posixpath.join(stage_dir, posixpath.dirname(SCRATCH)))
