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

The scan streams row groups; it holds only the set of image ids (which `pair` holds anyway).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acedata import shards
from acedata.errors import UserError


def _shards(path: str) -> list[str]:
    try:
        found = shards.list_shards(path)
    except FileNotFoundError:
        raise UserError(f"embeddings {path!r} does not exist") from None
    if not found:
        raise UserError(f"embeddings {path!r} holds no Parquet files")
    return found


def _open(shard: str):
    try:
        return shards.open_parquet(shard)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"embeddings shard {shard} is not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _dims(col: pa.ChunkedArray, shard: str) -> int:
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


def check(paths: list[str]) -> dict[str, int]:
    """Raise a one-line UserError for the first problem; return {'rows': n, 'dim': d}."""
    seen: set[str] = set()
    dim: tuple[int, str] | None = None
    rows = 0
    for path in paths:
        for shard in _shards(path):
            pf = _open(shard)
            names = pf.schema_arrow.names
            missing = [c for c in ("image_id", "embedding") if c not in names]
            if missing:
                raise UserError(f"embeddings shard {shard} has no {' or '.join(missing)} column (has {names})")
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g, columns=["image_id", "embedding"])
                if t.num_rows == 0:
                    continue
                d = _dims(t.column("embedding"), shard)
                if dim is None:
                    dim = (d, shard)
                elif d != dim[0]:
                    raise UserError(f"embeddings of different dimensions: {dim[1]} has {dim[0]}, {shard} has {d}")
                flat = pc.list_flatten(t.column("embedding")).to_numpy(zero_copy_only=False)
                bad = ~np.isfinite(flat.reshape(t.num_rows, d)).all(axis=1)
                ids = t.column("image_id").to_pylist()
                if bad.any():
                    first = ids[int(np.argmax(bad))]
                    raise UserError(f"embeddings shard {shard}: {int(bad.sum())} vectors hold NaN or Inf "
                                    f"(e.g. image_id {first!r}); fix or drop them where the table was made")
                for i in ids:
                    if i is None:
                        raise UserError(f"embeddings shard {shard}: a row has no image_id")
                    if i in seen:
                        raise UserError(f"embeddings: image_id {i!r} appears more than once (again in {shard}); "
                                        "give each image one vector")
                    seen.add(i)
                rows += t.num_rows
    if not rows:
        raise UserError(f"embeddings {paths} hold no rows")
    return {"rows": rows, "dim": dim[0] if dim else 0}
