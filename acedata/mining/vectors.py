"""Embedding columns <-> numpy, and row-group work units over Parquet tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

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


def normalize(x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows (or `x[rows]`) as float32 at unit L2 norm. Done in steps of NORM_ROWS rows: every
    operation is per row, so the result is bit-for-bit the whole-array one, without its
    full-size float32 temporaries (the products, the quotient) or a gathered copy of `x`."""
    x = np.asarray(x)
    if x.ndim != 2:
        x = np.asarray(x if rows is None else x[rows], dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x) if rows is None else len(rows)
    out = np.empty((n, x.shape[1]), np.float32)
    for s in range(0, n, NORM_ROWS):
        c = np.asarray(x[s:s + NORM_ROWS] if rows is None else x[rows[s:s + NORM_ROWS]], dtype=np.float32)
        norm = np.sqrt(np.add.reduce(c * c, axis=1, keepdims=True))  # np.linalg.norm's own steps, one copy fewer
        np.divide(c, np.maximum(norm, 1e-12), out=out[s:s + NORM_ROWS])
    return out


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


def first_row(payload: dict) -> int:
    """The row number in its shard of a row-group unit's first row (from the footer)."""
    meta = shards.open_parquet(payload["shard"]).metadata
    return sum(meta.row_group(g).num_rows for g in range(payload["groups"][0]))
