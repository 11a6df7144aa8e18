"""Embedding columns <-> numpy, and row-group work units over Parquet tables."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from acedata import shards
from acedata.errors import UserError


def to_matrix(col: pa.Array | pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """An embedding column (fixed-size list or list of float16/32/64) as an (n, d) array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    t = col.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise UserError(f"embedding column has type {t}; expected a list of floats")
    if not pa.types.is_floating(t.value_type):
        raise UserError(f"embedding column holds {t.value_type}; expected float16/float32/float64")
    if col.null_count:
        raise UserError(f"embedding column has {col.null_count} null rows")
    if n == 0:
        return np.zeros((0, t.list_size if pa.types.is_fixed_size_list(t) else 0), dtype=dtype)
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
        values = col.flatten()
    else:
        lengths = col.value_lengths().to_numpy()
        d = int(lengths[0])
        if (lengths != d).any():
            raise UserError(f"embedding rows have different lengths ({lengths.min()}..{lengths.max()})")
        values = col.flatten()
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, d)


NORM_ROWS = 1024  # rows per normalize step: temporaries stay in cache (whole-array ones cost ~3x)


def _cast(out: np.ndarray, src: np.ndarray) -> None:
    """out[...] = src (float16 -> float32 is exact, so any converter gives the same bits).

    numpy's float16 cast is scalar (~1-3 ns a value); torch's is vectorised (~0.4 ns), and on
    pieces under its parallel grain size (32768 values) it stays on this thread: a thread-pool
    round per piece costs more than the piece on a busy machine."""
    if src.dtype != np.float16 or not src.flags.c_contiguous or not out.flags.c_contiguous:
        out[...] = src
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; numpy's cast is the same bits
        out[...] = src
        return
    step = max(1, 32_000 // max(1, src.shape[1]))
    with warnings.catch_warnings():  # a read-only source (an Arrow buffer) is only read here
        warnings.simplefilter("ignore", UserWarning)
        to, fr = torch.from_numpy(out), torch.from_numpy(src)
    for s in range(0, len(src), step):
        to[s:s + step].copy_(fr[s:s + step])


def normalize(x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows (or `x[rows]`) as float32 at unit L2 norm. Done in steps of NORM_ROWS rows: every
    operation is per row, so the result is bit-for-bit the whole-array one, without its
    full-size float32 temporaries (the products, the quotient) or a gathered copy of `x`.
    Each step converts straight into the output and reuses the same small scratch arrays
    (fresh megabyte temporaries per step cost page faults, ~2x the arithmetic)."""
    x = np.asarray(x)
    if x.ndim != 2:
        x = np.asarray(x if rows is None else x[rows], dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x) if rows is None else len(rows)
    if rows is not None:
        rows = np.asarray(rows)
        if n and (rows.max() >= len(x) or rows.min() < -len(x)):  # take(mode="wrap") below would not raise
            raise IndexError(f"row index out of range for {len(x)} rows")
    out = np.empty((n, x.shape[1]), np.float32)
    step = min(n, NORM_ROWS)
    sq = np.empty((step, x.shape[1]), np.float32)
    norm = np.empty((step, 1), np.float32)
    picked = np.empty((step, x.shape[1]), x.dtype) if rows is not None and x.dtype != np.float32 else None
    for s in range(0, n, NORM_ROWS):
        c = out[s:s + NORM_ROWS]
        m = len(c)
        if rows is None:
            _cast(c, x[s:s + m])
        elif picked is None:  # float32 rows: gathered straight into the output
            np.take(x, rows[s:s + m], axis=0, out=c, mode="wrap")
        else:
            np.take(x, rows[s:s + m], axis=0, out=picked[:m], mode="wrap")
            _cast(c, picked[:m])
        _unit_rows(c, sq[:m], norm[:m])
    return out


def _unit_rows(c: np.ndarray, q: np.ndarray, r: np.ndarray) -> None:
    """Float32 rows `c` scaled to unit L2 norm in place (`q`, `r`: scratch of c's shape and (m, 1))."""
    np.multiply(c, c, out=q)
    np.add.reduce(q, axis=1, keepdims=True, out=r)  # np.linalg.norm's own steps
    np.sqrt(r, out=r)
    np.maximum(r, 1e-12, out=r)
    np.divide(c, r, out=c)


def normalize_into(out: np.ndarray, dest: np.ndarray, x: np.ndarray, rows: np.ndarray) -> None:
    """out[dest[k]] = normalize(x)[rows[k]] for every k (`out`: float32), bit for bit, without a
    gathered copy of the stored rows: each step of NORM_ROWS rows is gathered, converted and
    scaled in cache-sized scratch, then placed; a step whose places are consecutive (one shard's
    rows in a row) is converted straight into `out`."""
    n, d = len(rows), x.shape[1]
    step = min(n, NORM_ROWS)
    if not n:
        return
    sq = np.empty((step, d), np.float32)
    norm = np.empty((step, 1), np.float32)
    picked = np.empty((step, d), x.dtype)
    scratch = np.empty((step, d), np.float32)
    for s in range(0, n, NORM_ROWS):
        r, w = rows[s:s + NORM_ROWS], dest[s:s + NORM_ROWS]
        m = len(r)
        run = int(w[-1]) - int(w[0]) == m - 1 and bool((np.diff(w) == 1).all())
        c = out[int(w[0]):int(w[0]) + m] if run else scratch[:m]
        if x.dtype == np.float32:
            np.take(x, r, axis=0, out=c)
        else:
            np.take(x, r, axis=0, out=picked[:m])
            _cast(c, picked[:m])
        _unit_rows(c, sq[:m], norm[:m])
        if not run:
            out[w] = c


def fixed_list(x: np.ndarray, dtype=np.float16) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(x, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def row_group_units(tables: list[str], target_rows: int, prefix: str = "",
                    where: bool = False) -> list[tuple[str, dict]]:
    """Work units of consecutive row groups (about `target_rows` rows each) over every shard.

    `where`: payloads also carry the table's and the shard's index (a row's place in scan order)."""
    units = []
    for ti, table in enumerate(tables):
        for si, shard in enumerate(shards.list_shards(table)):
            meta = shards.open_parquet(shard).metadata
            at = {"table": ti, "shard_index": si} if where else {}
            groups: list[int] = []
            rows = 0
            for g in range(meta.num_row_groups):
                groups.append(g)
                rows += meta.row_group(g).num_rows
                if rows >= target_rows:
                    units.append((f"{prefix}t{ti}s{si:05d}g{groups[0]:05d}", {"shard": shard, "groups": groups, **at}))
                    groups, rows = [], 0
            if groups:
                units.append((f"{prefix}t{ti}s{si:05d}g{groups[0]:05d}", {"shard": shard, "groups": groups, **at}))
    return units


def read_unit(payload: dict, columns: list[str]) -> pa.Table:
    return shards.open_parquet(payload["shard"]).read_row_groups(payload["groups"], columns=columns)


READ_ROWS = 4096  # rows per Parquet batch of `read_vectors`


def open_streaming(uri: str) -> pq.ParquetFile:
    """A Parquet file to read in batches, holding about one batch: pages read 1 MiB at a time (by
    default a column chunk, a whole row group's vectors, is read at once), and no read range kept
    (ParquetFile's pre_buffer keeps every row group it read until the file closes)."""
    return shards.open_parquet(uri, pre_buffer=False, buffer_size=1 << 20)


def read_vectors(payload: dict, columns: list[str], dtype=np.float32) -> tuple[pa.Table, np.ndarray]:
    """A row-group unit's `columns` and its `embedding` rows as one (n, d) array in `dtype`: the
    values of `to_matrix(read_unit(...).column("embedding"), dtype)`, read READ_ROWS rows at a time.
    Arrow's Parquet reader decodes float16 values one fixed-width value at a time, through
    transient buffers of ~16 bytes per value (~5x the vectors): read whole, a unit of 262k
    768-d rows peaked ~2 GB above its 400 MB of vectors; batch by batch that is one batch's."""
    pf = open_streaming(payload["shard"])
    t = pf.read_row_groups(payload["groups"], columns=columns)
    out: np.ndarray | None = None
    at = 0
    for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=payload["groups"], columns=["embedding"]):
        x = to_matrix(batch.column(0), dtype)
        if out is None:
            out = np.empty((t.num_rows, x.shape[1]), x.dtype)
        if x.shape[1] != out.shape[1]:
            raise UserError(f"embedding rows have different lengths ({out.shape[1]}, {x.shape[1]})")
        out[at:at + len(x)] = x
        at += len(x)
    if out is None:  # no rows: the empty matrix of the column's type
        out = to_matrix(pf.read_row_groups(payload["groups"], columns=["embedding"]).column(0), dtype)
    return t, out


def first_row(payload: dict) -> int:
    """The row number in its shard of a row-group unit's first row (from the footer)."""
    meta = shards.open_parquet(payload["shard"]).metadata
    return sum(meta.row_group(g).num_rows for g in range(payload["groups"][0]))
