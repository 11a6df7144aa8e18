"""Cluster's k-means training sample, drawn on workers: the driver reads about 2 * `want` rows.

The sample is the `want` rows with the smallest seeded 64-bit hash of their image id
(`hash_keys`), in key order, an id listed twice counted once and given the vector of its
last copy in table/shard/row order: it depends on the ids only, never on shard layout.
`sample_rows` computes it in one process (two passes over every row: the reference).

At scale it runs as waves of `Stage.next_wave`: each unit (`sample_units`, one per row-group
unit) writes, as scratch, its rows whose key is below a threshold (`threshold`: about
`factor * want / N` of the key space, N the total rows from the Parquet footers) with their
stored embeddings and locations; the driver (`pick`) reads those candidates (about
2 * want), takes the `want` smallest keys exactly as `sample_rows` does, and asks for another
wave with a larger threshold in the rare case that fewer than `want` rows fell below it.
Every copy of an id has the same key, so a candidate's copies are all candidates.
Units also record the distinct `model` values they saw (in their file's metadata).
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from fractions import Fraction

import numpy as np
import pyarrow as pa

from acedata import shards, storage
from acedata.errors import UserError
from acedata.mining.vectors import READ_ROWS, first_row, normalize, open_streaming, row_group_units, to_matrix
from acedata.stage import WorkUnit

SCRATCH = "_sample"
MODELS_KEY = b"acedata.models"
FIRST_FACTOR = 2  # the first wave's expected candidates: 2 * want (the shortfall is ~sqrt(want) sigmas away)
GROWTH = 8  # a wave that found too few multiplies the factor by this
KEY_SPACE = 1 << 64


def hash_keys(ids: list[str], seed: int) -> np.ndarray:
    """A seeded 64-bit key per image id: the sample is the `want` smallest keys."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")
                     for i in ids], dtype=np.uint64)


def sample_rows(tables: list[str], want: int, seed: int, models: set[str] | None = None) -> np.ndarray:
    """The sample in one process, reading every id (pass 1) then the picked rows (pass 2): the
    reference the waves must equal. Memory O(want); `models` collects the distinct `model` values."""
    best_keys = np.zeros(0, np.uint64)
    best_ids: list[str] = []
    found = False
    for t in tables:
        for s in shards.list_shards(t):
            pf = shards.open_parquet(s)
            has_model = models is not None and "model" in pf.schema_arrow.names
            got = pf.read(columns=["image_id", "model"] if has_model else ["image_id"])
            ids = got.column("image_id").to_pylist()
            if has_model:
                models.update(v for v in got.column("model").unique().to_pylist() if v is not None)
            found = found or bool(ids)
            keys = np.concatenate([best_keys, hash_keys(ids, seed)])
            names = best_ids + ids
            top = np.argsort(keys, kind="stable")[:want]
            best_keys, best_ids = keys[top], [names[i] for i in top]
    if not found:
        raise UserError(f"cluster: the embeddings tables {tables} are empty")
    best_ids = list(dict.fromkeys(best_ids))  # an id listed twice is one point
    rank = {image_id: r for r, image_id in enumerate(best_ids)}
    rows: list[np.ndarray] = [np.zeros(0)] * len(best_ids)
    for t in tables:
        for s in shards.list_shards(t):
            got = shards.open_parquet(s).read(columns=["image_id", "embedding"])
            ids = got.column("image_id").to_pylist()
            mine = [k for k, i in enumerate(ids) if i in rank]
            if mine:
                x = normalize(to_matrix(got.column("embedding").take(pa.array(mine))))
                for k, v in zip(mine, x):
                    rows[rank[ids[k]]] = v
    return np.stack(rows)


# --- waves ---------------------------------------------------------------------------------


def threshold(want: int, n: int, factor: float) -> int | None:
    """Keys below this are candidates (expected: factor * want of n rows); None: every row."""
    share = Fraction(factor) * want / n
    if share >= 1:
        return None
    return min(KEY_SPACE - 1, math.ceil(share * KEY_SPACE))


def scratch(stage_dir: str) -> str:
    return posixpath.join(stage_dir, SCRATCH)


def sample_units(tables: list[str], rows_per_unit: int, wave: int, below: int | None, seed: int) -> list[WorkUnit]:
    """One unit per row-group unit of the tables; ids name the wave (each wave rereads every row)."""
    return [WorkUnit(uid, {"sample": {"below": None if below is None else str(below), "seed": seed}, **p})
            for uid, p in row_group_units(tables, rows_per_unit, prefix=f"sample{wave}-", where=True)]


def is_sample_unit(unit: WorkUnit) -> bool:
    return "sample" in unit.payload


def write_candidates(unit: WorkUnit, stage_dir: str) -> int:
    """On a worker: the unit's rows with key below the wave's threshold, as one scratch file
    (rewritten whole by a retry: the same bytes); returns how many."""
    p = unit.payload
    pf = open_streaming(p["shard"])
    has_model = "model" in pf.schema_arrow.names
    t = pf.read_row_groups(p["groups"], columns=["image_id", *(["model"] if has_model else [])])
    keys = hash_keys(t.column("image_id").to_pylist(), p["sample"]["seed"])
    below = p["sample"]["below"]
    take = np.arange(len(keys)) if below is None else np.flatnonzero(keys < np.uint64(int(below)))
    first = first_row(p)  # the unit's first row in its shard
    n = len(take)
    out = pa.table({"key": pa.array(keys[take], pa.uint64()),
                    "image_id": t.column("image_id").take(pa.array(take, pa.int64())),
                    "table": pa.array(np.full(n, p["table"]), pa.int32()),
                    "shard": pa.array(np.full(n, p["shard_index"]), pa.int32()),
                    "row": pa.array(first + take, pa.int64()),
                    "embedding": _take_vectors(pf, p["groups"], take)})
    models = sorted({v for v in t.column("model").unique().to_pylist() if v is not None}) if has_model else []
    out = out.replace_schema_metadata({MODELS_KEY: json.dumps(models).encode()})
    storage.write_parquet(posixpath.join(scratch(stage_dir), f"{unit.id}.parquet"), out, compression="none",
                          row_group_size=8192)  # the driver decodes one group at a time
    return n


def _take_vectors(pf, groups: list[int], take: np.ndarray) -> pa.Array:
    """The `embedding` values of rows `take` (ascending) of the row groups, read READ_ROWS rows at a
    time: the candidates are a small share, and reading every vector at once costs ~5x their size
    (`vectors.read_vectors`)."""
    parts, start = [], 0
    for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=groups, columns=["embedding"]):
        a, b = np.searchsorted(take, [start, start + batch.num_rows])
        if b > a or not parts:  # the first batch gives the type when nothing is taken
            parts.append(batch.column(0).take(pa.array(take[a:b] - start, pa.int64())))
        start += batch.num_rows
    if not parts:  # no rows at all
        return pf.read_row_groups(groups, columns=["embedding"]).column(0).combine_chunks()
    return pa.concat_arrays(parts)


def pick(stage_dir: str, unit_ids: list[str], want: int, every_row: bool) -> tuple[np.ndarray, set[str]] | None:
    """On the driver: the sample (as `sample_rows`) from a finished wave's candidates, and the
    models seen; None when fewer than `want` rows fell below the wave's threshold (and it did
    not take every row). Reads only the candidate files; memory O(candidates)."""
    files = [posixpath.join(scratch(stage_dir), f"{u}.parquet") for u in unit_ids]
    pfs = [shards.open_parquet(f) for f in files]
    total = sum(pf.metadata.num_rows for pf in pfs)
    if total < want and not every_row:
        return None
    models: set[str] = set()
    parts = []
    for i, pf in enumerate(pfs):
        models.update(json.loads(pf.schema_arrow.metadata[MODELS_KEY]))
        got = pf.read(columns=["key", "image_id", "table", "shard", "row"])
        parts.append(got.append_column("file", pa.array(np.full(got.num_rows, i), pa.int32())))
    if not parts or total == 0:
        raise UserError("cluster: the embeddings tables are empty")
    c = pa.concat_tables(parts)
    key, tab, shard, row = (c.column(n).to_numpy() for n in ("key", "table", "shard", "row"))
    ids = c.column("image_id").to_pylist()
    # key order, ties in scan order (table, shard, row): `sample_rows`'s stable sort
    top = np.lexsort((row, shard, tab, key))[:want]
    best = list(dict.fromkeys(ids[i] for i in top))  # an id listed twice is one point
    rank = {image_id: r for r, image_id in enumerate(best)}
    source = {}  # id -> its last copy in scan order (every copy of a picked id is a candidate)
    for i in np.lexsort((row, shard, tab)):
        if ids[i] in rank:
            source[ids[i]] = int(i)
    fil, pos = c.column("file").to_numpy(), np.concatenate([np.arange(p.num_rows) for p in parts])
    by_file: dict[int, list[tuple[int, int]]] = {}
    for image_id, i in source.items():
        by_file.setdefault(int(fil[i]), []).append((int(pos[i]), rank[image_id]))
    out: np.ndarray | None = None  # (len(best), dim) float32, filled batch by batch: the sample once in memory
    for f, wanted in sorted(by_file.items()):
        wanted.sort()
        at, start = 0, 0
        for batch in pfs[f].iter_batches(batch_size=8192, columns=["embedding"]):
            end = start + batch.num_rows
            stop = at
            while stop < len(wanted) and wanted[stop][0] < end:
                stop += 1
            if stop > at:
                x = normalize(to_matrix(batch.column(0).take(pa.array([p - start for p, _ in wanted[at:stop]]))))
                if out is None:
                    out = np.empty((len(best), x.shape[1]), np.float32)
                out[[r for _, r in wanted[at:stop]]] = x
            at, start = stop, end
    return out, models


def cleanup(stage_dir: str) -> None:
    storage.delete_dir(scratch(stage_dir))
