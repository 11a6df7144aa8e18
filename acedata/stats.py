"""Dataset statistics from columns alone: polars lazy scans with projection pushdown.

No query here reads an image column, so the cost scales with metadata (task, sizes,
instruction text, scores), not with image bytes. `compute()` answers the questions of
`acedata stats`; `run_tables.funnel()` follows a run from inputs to LCU rows through its tables,
`stats_render.render()` prints the answer.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from acedata import storage
from acedata.errors import UserError
from acedata.run_tables import (  # noqa: F401 - re-exported: the run's tables and funnel
    LCU_TABLES,
    Dataset,
    funnel,
    resolve_dataset,
    run_tables,
    stage_summaries,
)
from acedata.stats_render import render, table  # noqa: F401 - re-exported

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Aspect ratio (width / height) bins, portrait to landscape.
ASPECT_EDGES = [0.0, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, float("inf")]
ASPECT_LABELS = ["<1:2", "1:2-2:3", "2:3-4:5", "4:5-1:1", "~1:1", "1:1-5:4", "5:4-3:2", "3:2-2:1", ">2:1"]
HIST_BINS = 20


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


# --- the statistics --------------------------------------------------------------------


def _quantiles(col: str, expr: pl.Expr | None = None) -> list[pl.Expr]:
    e = pl.col(col) if expr is None else expr
    return [
        e.min().cast(pl.Float64).alias(f"{col}.min"),
        e.mean().cast(pl.Float64).alias(f"{col}.mean"),
        *[e.quantile(q, interpolation="nearest").cast(pl.Float64).alias(f"{col}.p{round(q * 100)}") for q in QUANTILES],
        e.max().cast(pl.Float64).alias(f"{col}.max"),
    ]


def _split_stats(row: dict[str, Any], col: str) -> dict[str, float | None]:
    return {k[len(col) + 1 :]: row[k] for k in row if k.startswith(col + ".")}


def _hist(lf: pl.LazyFrame, expr: pl.Expr, lo: float, hi: float, bins: int = HIST_BINS) -> list[dict[str, Any]]:
    """Equal-width histogram of `expr` over [lo, hi] (the top edge is inclusive)."""
    if lo is None or hi is None:
        return []
    width = (hi - lo) / bins if hi > lo else 1.0
    b = ((expr - lo) / width).floor().clip(0, bins - 1).cast(pl.Int32).alias("bin")
    got = dict(lf.select(b).group_by("bin").len().collect().iter_rows())
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width, "count": int(got.get(i, 0))} for i in range(bins)]


def compute(
    path: str,
    where: list[str] | None = None,
    by: list[str] | None = None,
    with_funnel: bool = True,
    histograms: bool = True,
) -> dict[str, Any]:
    """Every statistic `acedata stats` prints, as a JSON-ready dict."""
    ds = resolve_dataset(path)
    by = by or ["task", "subtask"]
    result: dict[str, Any] = {"dataset": path, "tables": ds.tables, "where": where or [], "by": by}
    if ds.files:
        lf = storage.scan_parquet(ds.files)
        schema = lf.collect_schema()
        for col in by:
            if col not in schema:
                raise UserError(f"--by {col!r}: no such column; try task, subtask, num_turns, instruction_method")
        cond = parse_where(where or [], schema)
        if cond is not None:
            lf = lf.filter(cond)
        result.update(_lcu_stats(lf, by, histograms))
    else:
        result["rows"] = 0
    if with_funnel and ds.run_dir is not None:
        result["funnel"] = funnel(ds.run_dir)
    return result


def _lcu_queries(lf: pl.LazyFrame, by: list[str], chars: pl.Expr, aspect: pl.Expr, mp: pl.Expr,
                 scores: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """The lazy queries behind `acedata stats`, collected together (one pass over the scan each)."""
    return {
        "groups": lf.group_by(by).len("count").sort(["count", *by], descending=[True, *[False] * len(by)]),
        "turns": lf.group_by("num_turns").len("count").sort("num_turns"),
        # derived columns computed once, then summarised (an expression repeated per quantile is recomputed)
        "summary": lf.select(
            "instruction", "width", "height", aspect.alias("aspect"), mp.alias("megapixels"), chars.alias("chars"),
        ).select(
            pl.len().alias("rows"),
            pl.col("instruction").n_unique().alias("distinct_instructions"),
            *(q for col in ("width", "height", "aspect", "megapixels", "chars") for q in _quantiles(col)),
        ),
        "sizes": lf.group_by("width", "height").len("count").sort(["count", "width", "height"], descending=[True, False, False])
        .head(10),
        "aspect_bins": lf.select(_aspect_bin(aspect)).group_by("bin").len("count"),
        "methods": lf.group_by("instruction_method").len("count").sort("count", descending=True),
        "scores": scores.group_by("name").agg(
            pl.len().alias("count"),
            pl.col("value").cast(pl.Float64).mean().alias("mean"),
            pl.col("value").cast(pl.Float64).min().alias("min"),
            *[pl.col("value").cast(pl.Float64).quantile(q, interpolation="nearest").alias(f"p{round(q * 100)}")
              for q in (0.05, 0.5, 0.95)],
            pl.col("value").cast(pl.Float64).max().alias("max"),
        ).sort("name"),
    }


def _lcu_stats(lf: pl.LazyFrame, by: list[str], histograms: bool) -> dict[str, Any]:
    chars = pl.col("instruction").str.len_chars()  # (a regex word count costs 5x the whole scan)
    aspect = pl.col("width").cast(pl.Float64) / pl.col("height").cast(pl.Float64)
    mp = (pl.col("width").cast(pl.Float64) * pl.col("height").cast(pl.Float64)) / 1e6
    scores = lf.select(pl.col("scores")).explode("scores").select(pl.col("scores").struct.unnest()).drop_nulls("name")
    queries = _lcu_queries(lf, by, chars, aspect, mp, scores)
    got = dict(zip(queries, pl.collect_all(list(queries.values()))))
    summary = got["summary"].row(0, named=True)
    n = int(summary["rows"])
    share = (lambda c: round(c / n, 6)) if n else (lambda c: 0.0)
    out: dict[str, Any] = {
        "rows": n,
        "groups": [{**r, "share": share(r["count"])} for r in got["groups"].iter_rows(named=True)],
        "turns": [{**r, "share": share(r["count"])} for r in got["turns"].iter_rows(named=True)],
        "resolution": {
            "width": _split_stats(summary, "width"),
            "height": _split_stats(summary, "height"),
            "megapixels": _split_stats(summary, "megapixels"),
            "top_sizes": got["sizes"].to_dicts(),
        },
        "aspect": {
            "ratio": _split_stats(summary, "aspect"),
            "bins": _ordered_bins(got["aspect_bins"]),
        },
        "instructions": {
            "chars": _split_stats(summary, "chars"),
            "distinct": int(summary["distinct_instructions"]),
            "distinct_ratio": round(summary["distinct_instructions"] / n, 6) if n else 0.0,
            "methods": got["methods"].to_dicts(),
        },
        "scores": got["scores"].to_dicts(),
    }
    if histograms and n:
        res = out["resolution"]
        out["histograms"] = {
            "instruction_chars": _hist(lf, chars, out["instructions"]["chars"]["min"], out["instructions"]["chars"]["max"]),
            "megapixels": _hist(lf, mp, res["megapixels"]["min"], res["megapixels"]["max"]),
            "scores": {
                s["name"]: _hist(scores.filter(pl.col("name") == s["name"]), pl.col("value").cast(pl.Float64),
                                 s["min"], s["max"])
                for s in out["scores"]
            },
        }
    return out


def _aspect_bin(aspect: pl.Expr) -> pl.Expr:
    """The ASPECT_LABELS bin of each ratio (left-closed intervals)."""
    expr = pl.when(aspect < ASPECT_EDGES[1]).then(pl.lit(ASPECT_LABELS[0]))
    for edge, label in zip(ASPECT_EDGES[2:], ASPECT_LABELS[1:]):
        expr = expr.when(aspect < edge).then(pl.lit(label))
    return expr.otherwise(pl.lit(ASPECT_LABELS[-1])).alias("bin")


def _ordered_bins(df: pl.DataFrame) -> list[dict[str, Any]]:
    got = {str(r["bin"]): int(r["count"]) for r in df.iter_rows(named=True) if r["bin"] is not None}
    return [{"bin": label, "count": got.get(label, 0)} for label in ASPECT_LABELS]


# --- the funnel of a run --------------------------------------------------------------


