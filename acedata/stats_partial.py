"""Partial aggregates of `acedata stats`: one per group of LCU shards, merged on the driver.

A worker (or the local loop) scans its shards with polars, applies `--where`, and keeps only
counts keyed by small-domain values: rows per `--by` group, per num_turns, per instruction method,
per (width, height) pair, per instruction length in characters; per score name a value -> count
map (or log buckets, `acedata.sketches`, once a name has more than `EXACT_SCORE_VALUES` distinct
values) with an exact sum; the instruction texts' xxh3 hashes (a HyperLogLog once there are more
than `EXACT_DISTINCT_MAX`). The driver's memory grows with those domains and the shard count,
never with rows. `merge` is associative and commutative and each summary depends on the values
alone, so the answer is the same for any split of the shards into partials and any arrival order.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import polars as pl

from acedata import sketches, storage
from acedata.errors import UserError

EXACT_DISTINCT_MAX = 1 << 17  # instruction hashes kept exactly up to this many (1 MiB)
EXACT_SCORE_VALUES = 1 << 15  # distinct values per score name kept exactly up to this many

# --- filters ---------------------------------------------------------------------------

_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|>=|<=|=|>|<)\s*(.*?)\s*$")


def parse_where(clauses: list[str], schema: pl.Schema) -> pl.Expr | None:
    """`col=v`, `col=v1,v2` (any of), `col!=v`, `col>=n` ... ANDed; values cast to the column type."""
    expr: pl.Expr | None = None
    for clause in clauses:
        m = _WHERE.match(clause)
        if not m:
            raise UserError(f"--where {clause!r}: expected COLUMN=VALUE (or !=, >=, <=, >, <)")
        col, op, raw = m.groups()
        if col not in schema:
            flat = [n for n, t in schema.items() if not isinstance(t, pl.List | pl.Struct)]
            raise UserError(f"--where {clause!r}: no column {col!r}; columns: {', '.join(flat)}")
        dtype = schema[col]

        def cast(v: str, clause: str = clause, col: str = col, dtype: pl.DataType = dtype) -> Any:
            try:
                if dtype.is_integer():
                    return int(v)
                if dtype.is_float():
                    return float(v)
            except ValueError:
                raise UserError(f"--where {clause!r}: {v!r} is not a number ({col} is {dtype})") from None
            return v

        c = pl.col(col)
        if op in ("=", "=="):
            values = [cast(v) for v in raw.split(",")]
            e = c.is_in(values) if len(values) > 1 else c == values[0]
        elif op == "!=":
            e = ~c.is_in([cast(v) for v in raw.split(",")])
        else:
            v = cast(raw)
            e = {">": c > v, "<": c < v, ">=": c >= v, "<=": c <= v}[op]
        expr = e if expr is None else expr & e
    return expr


# --- one partial (runs on a worker) -------------------------------------------------------


def empty() -> dict[str, Any]:
    return {"rows": 0, "groups": {}, "turns": {}, "sizes": {}, "chars": {}, "methods": {},
            "distinct": {"hashes": np.zeros(0, np.uint64)}, "scores": {}}


def _rows_of(pieces: list[dict[str, Any]], by: list[str], where: list[str]) -> pl.LazyFrame:
    """The needed columns of a partial's rows that pass `where`, decoded once into memory (eight
    scans of the same file cost more than the rows they hold). A piece is a whole shard
    ({"file"}) or the rows of a range of its row groups ({"file", "rows": [offset, length]}: the
    slice reaches the Parquet reader, which decodes only those row groups)."""
    cols = list(dict.fromkeys([*by, "num_turns", "width", "height", "instruction", "instruction_method", "scores"]))
    whole = [p["file"] for p in pieces if "rows" not in p]
    frames = [storage.scan_parquet(whole)] if whole else []
    frames += [storage.scan_parquet([p["file"]]).slice(*p["rows"]) for p in pieces if "rows" in p]
    cond = parse_where(where, frames[0].collect_schema())
    lf = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    if cond is not None:
        lf = lf.filter(cond)
    return lf.select(cols).collect().lazy()


def partial_of(pieces: list[dict[str, Any]], by: list[str], where: list[str]) -> dict[str, Any]:
    """The partial aggregate of the rows of `pieces` (shards or row-group ranges) that pass `where`."""
    lf = _rows_of(pieces, by, where)
    scores = (lf.select(pl.col("scores")).explode("scores").select(pl.col("scores").struct.unnest())
              .drop_nulls("name"))
    queries = {
        "rows": lf.select(pl.len()),
        "groups": lf.group_by(by).len("_count"),
        "turns": lf.group_by("num_turns").len("_count"),
        "sizes": lf.group_by("width", "height").len("_count"),
        "chars": lf.group_by(pl.col("instruction").str.len_chars().alias("chars")).len("_count"),
        "methods": lf.group_by("instruction_method").len("_count"),
        "texts": lf.select(pl.col("instruction").unique()),
        "scores": scores.group_by("name", pl.col("value").cast(pl.Float64)).len("_count"),
    }
    got = dict(zip(queries, pl.collect_all(list(queries.values()))))

    def counts(df: pl.DataFrame, key_cols: int = 1) -> dict[Any, int]:
        if key_cols == 1:
            return {r[0]: int(r[1]) for r in df.iter_rows()}
        return {tuple(r[:key_cols]): int(r[key_cols]) for r in df.iter_rows()}

    distinct = distinct_of(got["texts"].to_series().to_list())
    return {
        "rows": int(got["rows"].item()),
        "groups": {tuple(r[:-1]): int(r[-1]) for r in got["groups"].iter_rows()},
        "turns": counts(got["turns"]),
        "sizes": counts(got["sizes"], 2),
        "chars": counts(got["chars"]),
        "methods": counts(got["methods"]),
        "distinct": distinct,
        "scores": {name: _score_partial(df) for (name,), df in got["scores"].partition_by("name", as_dict=True).items()},
    }


def _score_partial(df: pl.DataFrame) -> dict[str, Any]:
    """One score name's (value, count) rows -> count, min/max, exact sum, value map or buckets."""
    nulls = int(df.filter(pl.col("value").is_null())["_count"].sum())
    df = df.filter(pl.col("value").is_not_null())
    vals = df["value"].to_numpy().astype(np.float64) + 0.0  # -0.0 -> 0.0: one key, whatever the order
    cnts = df["_count"].to_numpy().astype(np.int64)
    finite = np.isfinite(vals)
    seen = vals[~np.isnan(vals)]
    fv, fc = vals[finite], cnts[finite]
    out: dict[str, Any] = {
        "count": nulls + int(cnts.sum()), "n": int(cnts.sum()),
        "min": float(seen.min()) if len(seen) else None, "max": float(seen.max()) if len(seen) else None,
        "sum": sketches.sum_parts(fv, fc),
        "nan": int(cnts[np.isnan(vals)].sum()), "pinf": int(cnts[vals == np.inf].sum()),
        "ninf": int(cnts[vals == -np.inf].sum()),
        "exact": None, "buckets": None,
    }
    if len(fv) <= EXACT_SCORE_VALUES:
        out["exact"] = dict(zip(fv.tolist(), fc.tolist()))
    else:
        out["buckets"] = sketches.counts_by_key(sketches.bucket_keys(fv), fc)
    return out


# --- merging (driver) -----------------------------------------------------------------------


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partials as one, folded into `a` (the driver's accumulator); associative and commutative."""
    add = sketches.add_counts
    scores = a["scores"]
    for name, s in b["scores"].items():
        scores[name] = _merge_score(scores[name], s) if name in scores else s
    return {
        "rows": a["rows"] + b["rows"],
        **{k: add(a[k], b[k]) for k in ("groups", "turns", "sizes", "chars", "methods")},
        "distinct": merge_distinct(a["distinct"], b["distinct"]),
        "scores": scores,
    }


def distinct_of(texts: list[str]) -> dict[str, Any]:
    """A partial's distinct-count state: the exact text hashes up to EXACT_DISTINCT_MAX, else
    HyperLogLog registers over them."""
    hashes = sketches.text_hashes(texts)
    return {"hashes": hashes} if len(hashes) <= EXACT_DISTINCT_MAX else {"hll": sketches.hll_registers(hashes)}


def merge_distinct(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Hash sets are unioned lazily: arrays wait in `pending` until they hold more than
    EXACT_DISTINCT_MAX hashes (one union per that many, not one per partial)."""
    if "hll" in a or "hll" in b:
        return {"hll": np.maximum(_registers(a), _registers(b))}
    pending = [*a.get("pending", []), b["hashes"], *b.get("pending", [])]
    out = {"hashes": a["hashes"], "pending": pending}
    return compact_distinct(out) if sum(len(h) for h in pending) > EXACT_DISTINCT_MAX else out


def _registers(d: dict[str, Any]) -> np.ndarray:
    if "hll" in d:
        return d["hll"]
    return sketches.hll_registers(np.concatenate([d["hashes"], *d.get("pending", [])]))  # repeats do not count


def compact_distinct(d: dict[str, Any]) -> dict[str, Any]:
    """{"hashes": the sorted union} while it holds at most EXACT_DISTINCT_MAX, else {"hll": registers}."""
    if "hll" in d or not d.get("pending"):
        return d
    union = sketches.sorted_unique(np.concatenate([d["hashes"], *d["pending"]]))
    return {"hashes": union} if len(union) <= EXACT_DISTINCT_MAX else {"hll": sketches.hll_registers(union)}


def _merge_score(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    def pick(f: Any, x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else f(x, y)

    out = {k: a[k] + b[k] for k in ("count", "n", "nan", "pinf", "ninf")}
    out.update(min=pick(min, a["min"], b["min"]), max=pick(max, a["max"], b["max"]),
               sum=sketches.merge_sum_parts(a["sum"], b["sum"]), exact=None, buckets=None)
    if a["exact"] is not None and b["exact"] is not None:
        both = sketches.add_counts(a["exact"], b["exact"])
        if len(both) <= EXACT_SCORE_VALUES:
            out["exact"] = both
            return out
        out["buckets"] = sketches.to_buckets(both)
        return out
    out["buckets"] = sketches.add_counts(*(s["buckets"] if s["buckets"] is not None else sketches.to_buckets(s["exact"])
                                           for s in (a, b)))
    return out
