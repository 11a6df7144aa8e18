"""Check an embeddings table made elsewhere before `acedata cluster` / `acedata pair` use it.

Every problem is one line (a UserError) naming the shard and an example row, instead of a
traceback deep inside k-means or union-find:

- a file that is not Parquet, or a table without `image_id` / `embedding` columns;
- an `embedding` that is not a list of floats, holds nulls, or has a dimension that differs
  between rows or shards;
- NaN or ±Inf in any vector. These are refused, not quarantined: a vector with NaN says the
  model that made the table failed, and dropping its rows would hide that from the user;
- a repeated `image_id`. Refused too: two vectors for one image would pair an image with
  itself and write the same `pair_id` twice, and which vector to keep is not ours to guess.

At paper scale (10^9 x 768) the table is terabytes and its ids ~100 GB as a Python set, so the
scan runs as two waves of units on the command's executor (`EmbeddingsCheck`, through
`runtime.run_stage`, local or Ray), and the driver holds per-unit counts only:

- scan: one unit per shard, or per range of row groups of a big shard, reads `READ_ROWS` rows
  at a time (no pre-buffering), checks schema, dimension, nulls and NaN/Inf, and writes each
  row's image_id and scan position into hash buckets (`acedata.shuffle`);
- ids: one unit per bucket finds an id repeated inside it (equal ids share a bucket).

A unit does not raise a defect: it writes the message to `errors/<unit>.txt` and counts it, so
the driver reports the first defect in scan order whatever order the units ran in (as the
serial scan did), and a Ray-wrapped exception never reaches the user. Defects of the first
wave are reported before repeated ids. Scratch is removed when the check ends.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow.fs import FileSelector

from acedata import shards, shuffle
from acedata.config import Resources, StageConfig
from acedata.errors import UserError
from acedata.stage import RunContext, Stage, UnitResult, WorkUnit

UNIT_ROWS = 2_000_000  # rows a scan unit reads (whole row groups) and ids a bucket holds, about
READ_ROWS = 16_384  # rows per Parquet batch: Arrow decodes float16 through ~16 B/value buffers
IDS = pa.schema([("image_id", pa.string()), ("at", pa.int64())])  # at: scan unit << 32 | row in it


def _shards(path: str) -> list[str]:
    try:
        found = shards.list_shards(path)
    except FileNotFoundError:
        raise UserError(f"embeddings {path!r} does not exist") from None
    if not found:
        raise UserError(f"embeddings {path!r} holds no Parquet files")
    return found


def _open(shard: str, **kw):
    try:
        return shards.open_parquet(shard, **kw)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"embeddings shard {shard} is not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _dims(col: pa.ChunkedArray | pa.Array, shard: str) -> int:
    t = col.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) \
            or not pa.types.is_floating(t.value_type):
        raise UserError(f"embeddings shard {shard}: column embedding is {t}; expected a list of floats")
    if col.null_count:
        raise UserError(f"embeddings shard {shard}: {col.null_count} rows have no embedding")
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    lengths = pc.list_value_length(col)
    lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if lo != hi:
        raise UserError(f"embeddings shard {shard}: vectors of different dimensions ({lo} to {hi}) in one shard")
    return int(lo)


def _scan(shard: str, groups: list[int]) -> tuple[int, int, list[pa.Array]]:
    """Check some row groups of a shard; returns (rows, dim, image ids as one Arrow array's chunks)."""
    pf = _open(shard, pre_buffer=False, buffer_size=1 << 20)  # pre_buffer keeps every group read
    names = pf.schema_arrow.names
    missing = [c for c in ("image_id", "embedding") if c not in names]
    if missing:
        raise UserError(f"embeddings shard {shard} has no {' or '.join(missing)} column (has {names})")
    rows, dim, ids = 0, 0, []
    for b in pf.iter_batches(batch_size=READ_ROWS, row_groups=groups, columns=["image_id", "embedding"]):
        if b.num_rows == 0:
            continue
        d = _dims(b.column("embedding"), shard)
        if dim and d != dim:
            raise UserError(f"embeddings of different dimensions: {shard} has {dim}, {shard} has {d}")
        dim = d
        flat = pc.list_flatten(b.column("embedding")).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(flat.reshape(b.num_rows, d)).all(axis=1)
        if bad.any():
            first = b.column("image_id")[int(np.argmax(bad))].as_py()
            raise UserError(f"embeddings shard {shard}: {int(bad.sum())} vectors hold NaN or Inf "
                            f"(e.g. image_id {first!r}); fix or drop them where the table was made")
        if b.column("image_id").null_count:
            raise UserError(f"embeddings shard {shard}: a row has no image_id")
        ids.append(b.column("image_id").cast(pa.string()))
        rows += b.num_rows
    return rows, dim, ids


class EmbeddingsCheckConfig(StageConfig):
    units: list[dict]  # scan units: {"shard", "groups"}, in scan order
    buckets: int


class EmbeddingsCheck(Stage):
    """The two waves of `check`. Internal: never named in a pipeline spec, writes no table."""

    kind = "embeddings-check"
    Config = EmbeddingsCheckConfig
    config: EmbeddingsCheckConfig

    def _dir(self, name: str) -> str:
        return posixpath.join(self.ctx.stage_dir, name)

    def plan(self) -> list[WorkUnit]:
        return [WorkUnit(f"scan-{i:06d}", {"unit": i}) for i in range(len(self.config.units))]

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        if wave == 0 and not counts.get("errors") and counts.get("rows"):  # a scan defect ends the check
            return [WorkUnit(f"ids-{k:06d}", {"bucket": k}) for k in range(self.config.buckets)]
        return []

    def process(self, unit: WorkUnit) -> UnitResult:
        try:
            if "unit" in unit.payload:
                return UnitResult({}, self._scan(unit.payload["unit"]))
            return UnitResult({}, self._ids(unit.id, unit.payload["bucket"]))
        except UserError as e:
            return UnitResult({}, self._fail(unit.id, str(e)))

    def _fail(self, unit_id: str, message: str, **counts: int) -> dict[str, int]:
        fs, d = shards.resolve(self._dir("errors"))
        fs.create_dir(d, recursive=True)
        shards.write_bytes_atomic(fs, posixpath.join(d, unit_id + ".txt"), message.encode())
        return {"errors": 1, **counts}

    def _scan(self, i: int) -> dict[str, int]:
        u = self.config.units[i]
        rows, dim, ids = _scan(u["shard"], u["groups"])
        if rows:
            t = pa.table({"image_id": pa.chunked_array(ids, pa.string()),
                          "at": np.arange(rows, dtype=np.int64) + (i << 32)})
            shuffle.write_buckets(t, "image_id", self.config.buckets, self._dir("ids"), f"scan-{i:06d}")
        return {"rows": rows, "dim": dim}

    def _ids(self, unit_id: str, k: int) -> dict[str, int]:
        t = shuffle.read_bucket(self._dir("ids"), k, schema=IDS).sort_by("at")
        again = pd.Series(t.column("image_id").to_numpy(zero_copy_only=False)).duplicated().to_numpy()
        if not again.any():
            return {"ids": t.num_rows}
        j = int(np.argmax(again))  # the earliest repeat in scan order: the one the serial scan met first
        at = int(t.column("at")[j].as_py())
        shard = self.config.units[at >> 32]["shard"]
        image_id = t.column("image_id")[j].as_py()
        return self._fail(unit_id, f"embeddings: image_id {image_id!r} appears more than once (again in {shard}); "
                          "give each image one vector", repeat_at=at)


def _plan(paths: list[str]) -> tuple[list[dict], int]:
    """Scan units (whole row groups, about `UNIT_ROWS` rows each) and the table's rows, from footers."""
    units, total = [], 0
    for path in paths:
        for shard in _shards(path):
            meta = _open(shard).metadata
            groups, rows = [], 0
            for g in range(meta.num_row_groups):
                groups.append(g)
                rows += meta.row_group(g).num_rows
                if rows >= UNIT_ROWS:
                    units.append({"shard": shard, "groups": groups})
                    total, groups, rows = total + rows, [], 0
            if groups or not meta.num_row_groups:  # a shard without row groups still has its schema checked
                units.append({"shard": shard, "groups": groups})
                total += rows
    return units, total


def check(paths: list[str], executor: str = "local", scratch: str | None = None,
          concurrency: int = 2) -> dict[str, int]:
    """Raise a one-line UserError for the first problem; return {'rows': n, 'dim': d}.

    `scratch`: a folder (path or URI) every worker can reach for the check's buckets, e.g. next to
    the run output; a local temporary folder when None. Removed when the check ends."""
    from acedata import runtime  # late: the runtime imports most of the package

    units, rows = _plan(paths)
    root = posixpath.join(scratch, f"embeddings-check-{uuid.uuid4().hex[:12]}") if scratch \
        else tempfile.mkdtemp(prefix="embeddings-check-")
    cfg = EmbeddingsCheckConfig(name="embeddings-check", units=units,
                                buckets=shuffle.bucket_count(rows, UNIT_ROWS),
                                resources=Resources(concurrency=max(1, concurrency)))
    log = logging.getLogger("acedata")
    level = log.level
    log.setLevel(max(level, logging.WARNING))  # the waves' progress lines: noise before the run's own
    try:
        runtime.run_stage(EmbeddingsCheck(cfg, RunContext(root, root, {})), executor=executor)
        return _verdict(root, units, paths)
    finally:
        log.setLevel(level)
        shuffle.delete(root)
        if scratch:  # the folder the check made next to the run output, unless something else is in it
            fs, d = shards.resolve(scratch)
            if shards.exists(fs, d) and not fs.get_file_info(FileSelector(d)):
                fs.delete_dir(d)


def _verdict(root: str, units: list[dict], paths: list[str]) -> dict[str, int]:
    """Raise the first defect in scan order (from the units' counts and error files), else sum up."""
    from acedata import runtime

    done = runtime.done_units(root)
    fs, d = shards.resolve(root)
    first: tuple[int, str] | None = None  # (dim, shard)
    rows = 0
    for i, u in enumerate(units):
        c = done[f"scan-{i:06d}"]
        if c.get("errors"):
            raise _recorded(fs, d, f"scan-{i:06d}")
        if not c["rows"]:
            continue
        if first is None:
            first = (c["dim"], u["shard"])
        elif c["dim"] != first[0]:
            raise UserError(f"embeddings of different dimensions: {first[1]} has {first[0]}, "
                            f"{u['shard']} has {c['dim']}")
        rows += c["rows"]
    if not rows:
        raise UserError(f"embeddings {paths} hold no rows")
    repeats = [(c["repeat_at"], k) for k, c in done.items() if k.startswith("ids-") and c.get("errors")]
    if repeats:
        raise _recorded(fs, d, min(repeats)[1])
    return {"rows": rows, "dim": first[0]}


def _recorded(fs, d: str, unit_id: str) -> UserError:
    with fs.open_input_stream(posixpath.join(d, "errors", unit_id + ".txt")) as f:
        return UserError(f.read().decode())
