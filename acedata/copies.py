"""Which stored copy of an image is kept, decided on workers in two waves (no rows on the driver).

Two units may each store a copy of one image (ingest: the same file in two sources or units;
synthesize: the same mask drawn for two photos). Committed shards are never rewritten, so the
stage lists every copy but one in its `duplicates` table and readers skip them (`acedata.kept`).
Deciding which copy stays is a group-by image_id, run as two waves after the units that wrote
the images (`Stage.next_wave`):

1. shuffle units (`copies-sNNNNN`) each read the `image_id`/`source_uri` columns of some
   committed units' image shards, plus those units' own `duplicates` rows, and write them to
   hash buckets by image_id (`acedata.shuffle`);
2. decide units (`cross-unit-bNNNNN`, `acedata.kept.CROSS_UNIT`) each read one bucket and list,
   for every image_id stored more than once, every copy but the one of smallest rank; the rows
   are ordinary unit output of the `duplicates` table, committed like any other unit's.

The rank is the stage's rule (ingest: the source order key; synthesize: the photo a copy was
drawn from) followed by (unit id, row in the unit): a total order on the copies, so the
decision depends neither on bucket counts nor on how rows were grouped into shuffle units.
The driver only names units; its memory grows with their number, never with rows.
"""

from __future__ import annotations

import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from acedata import shards, shuffle
from acedata.kept import CROSS_UNIT, row_key
from acedata.schemas import DUPLICATES
from acedata.stage import UnitResult, WorkUnit

# Rows one decide unit holds (about 100 bytes each) and rows one shuffle unit reads. Every
# shuffle unit writes up to one file per bucket, so fewer, larger shuffle units keep the
# scratch file count (shuffle units x buckets) small at scale. Module constants, read on the
# driver only (unit payloads carry the numbers), so tests can shrink them on any executor.
ROWS_PER_BUCKET = 500_000
ROWS_PER_SHUFFLE = 500_000

SCRATCH = "_shuffle/copies"
COPY_ROWS = pa.schema([("image_id", pa.string()), ("source_uri", pa.string()), ("unit", pa.string()),
                       ("row", pa.int64()), ("listed", pa.bool_())])

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
    return [WorkUnit(f"{CROSS_UNIT}-b{b:05d}", {"copies": "decide", "bucket": b}) for b in range(buckets)]


def run(unit: WorkUnit, stage_dir: str, images_dir: str, dup_dir: str, rank: Rank) -> UnitResult:
    """A shuffle or decide unit, on a worker."""
    p = unit.payload
    if p["copies"] == "shuffle":
        rows = _unit_rows(images_dir, dup_dir, p["units"])
        shuffle.write_buckets(rows, "image_id", p["buckets"], scratch(stage_dir), unit.id)
        return UnitResult({}, {"copies_shuffled": rows.num_rows})
    later = decide(shuffle.read_bucket(scratch(stage_dir), p["bucket"], schema=COPY_ROWS), rank)
    return UnitResult({"duplicates": later}, {"cross_unit_duplicates": later.num_rows})


def _unit_rows(images_dir: str, dup_dir: str, units: list[str]) -> pa.Table:
    """(image_id, source_uri, unit, row, listed) of the given units' committed rows: stored
    images (listed=False) and the rows each unit itself listed as duplicates (listed=True)."""
    parts = []
    for table, listed in ((images_dir, False), (dup_dir, True)):
        # these units' fragments only: listing `_units/` would cost every shuffle unit O(all units)
        fs, d = shards.resolve(table)
        infos = fs.get_file_info([posixpath.join(d, shards.UNITS_DIR, f"{u}.json") for u in units])
        for u, info in zip(units, infos):
            if info.type == pafs.FileType.NotFound:  # a unit that wrote no such table
                continue
            row = 0
            for s in shards.read_json(fs, info.path)["shards"]:
                t = shards.open_parquet(posixpath.join(table.rstrip("/"), s["file"])).read(
                    columns=["image_id", "source_uri"])
                n = t.num_rows
                parts.append(pa.table({"image_id": t.column("image_id"), "source_uri": t.column("source_uri"),
                                       "unit": pa.array([u] * n, pa.string()),
                                       "row": pa.array(range(row, row + n), pa.int64()),
                                       "listed": pa.array([listed] * n, pa.bool_())}, COPY_ROWS))
                row += n
    return pa.concat_tables(parts) if parts else COPY_ROWS.empty_table()


def decide(part: pa.Table, rank: Rank) -> pa.Table:
    """The `duplicates` rows of one bucket: every stored copy of an image_id but the smallest-ranked.

    Also checks what the table as a whole must hold: no row listed twice."""
    ids = part.column("image_id").to_pylist()
    uris = part.column("source_uri").to_pylist()
    units = part.column("unit").to_pylist()
    rows = part.column("row").to_pylist()
    listed = part.column("listed").to_pylist()
    copies: dict[str, list[int]] = defaultdict(list)
    for i, is_listed in enumerate(listed):
        if not is_listed:
            copies[ids[i]].append(i)
    later: list[tuple[str, Any, int]] = []
    for image_id, members in copies.items():
        ranked = sorted(members, key=lambda i: rank(uris[i], units[i], rows[i]))
        later.extend((image_id, rank(uris[i], units[i], rows[i]), i) for i in ranked[1:])
    later.sort(key=lambda x: (x[0], x[1]))
    names = Counter(row_key(uris[i], ids[i]) for i in [x[2] for x in later] + [i for i, b in enumerate(listed) if b])
    twice = [k for k, c in names.items() if c > 1]
    if twice:
        raise RuntimeError(f"duplicates table lists a source_uri twice: {twice[0].split(chr(0))[0]}")
    return pa.table({"source_uri": [uris[x[2]] for x in later], "image_id": [x[0] for x in later]}, DUPLICATES)


def cleanup(stage_dir: str) -> None:
    """Remove the stage's scratch buckets (`_shuffle/`, every wave's) once all units committed."""
    shuffle.delete(posixpath.join(stage_dir, posixpath.dirname(SCRATCH)))
