"""Keep one row per key in a table written by many units: the copy in the first unit wins.

Identical content can come out of two units (a synthesizer drawing the same mask for two
look-alike photos in different units), and a content-addressed table must still hold each
`image_id` once. This runs in a stage's `finish` (driver, after every unit committed):

1. read only the key column of every shard, units in id order, and note the later copies
   (deterministic: unit ids and row order do not depend on scheduling);
2. for each shard holding later copies, write the kept rows under a new, write-once name
   `<shard>-dedup.parquet`, then swap the unit's fragment to list it (one atomic write: the
   commit point), then delete the superseded shard.

A crash before the swap leaves an unlisted `-dedup` file that the rerun writes again with the
same content; a crash after it leaves the superseded shard, which the rerun deletes. Cost is
proportional to the shards that hold duplicates, not to the table.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from acedata import shards

SUFFIX = "-dedup.parquet"


def drop_later_copies(table_dir: str, key: str = "image_id") -> int:
    """Remove rows whose `key` an earlier unit (or earlier row) already wrote; returns how many."""
    fs, d = shards.resolve(table_dir)
    units = sorted(shards.committed_units(table_dir))
    seen: set[str] = set()
    keep: dict[tuple[str, str], list[bool]] = {}  # (unit, shard file) -> row mask, only where a row goes
    for unit in units:
        for s in shards.unit_fragment(table_dir, unit)["shards"]:
            ids = shards.open_parquet(posixpath.join(d, s["file"])).read(columns=[key]).column(key).to_pylist()
            mask = []
            for i in ids:
                mask.append(i not in seen)
                seen.add(i)
            if not all(mask):
                keep[(unit, s["file"])] = mask
    dropped = 0
    for unit in units:
        frag = shards.unit_fragment(table_dir, unit)
        changed = False
        for n, s in enumerate(frag["shards"]):
            mask = keep.get((unit, s["file"]))
            if mask is None:
                continue
            old = posixpath.join(d, s["file"])
            kept = shards.open_parquet(old).read().filter(pa.array(mask))
            name = s["file"][: -len(".parquet")] + SUFFIX
            new = posixpath.join(d, name)
            tmp = posixpath.join(d, f".tmp-{name}")
            pq.write_table(kept, tmp, compression="zstd", filesystem=fs)
            fs.move(tmp, new)
            frag["shards"][n] = {"file": name, "rows": kept.num_rows, "bytes": fs.get_file_info(new).size,
                                 "sha256": shards.sha256_file(fs, new)}
            dropped += len(mask) - sum(mask)
            changed = True
        if changed:
            shards.write_bytes_atomic(fs, posixpath.join(d, shards.UNITS_DIR, f"{unit}.json"),
                                      json.dumps(frag).encode())
        for s in frag["shards"]:  # a superseded shard left by a crash after the swap
            if s["file"].endswith(SUFFIX):
                old = posixpath.join(d, s["file"][: -len(SUFFIX)] + ".parquet")
                if shards.exists(fs, old):
                    fs.delete_file(old)
    return dropped
