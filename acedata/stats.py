"""Dataset statistics from columns alone: polars lazy scans with projection pushdown.

No query here reads an image column, so the cost scales with metadata (task, sizes,
instruction text, scores), not with image bytes. `compute()` answers the questions of
`acedata stats`; `funnel()` follows a run from inputs to LCU rows through its tables.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from acedata import shards, storage
from acedata.errors import UserError
from acedata.storage import join

LCU_TABLES = ("lcu", "lcu_validation")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Aspect ratio (width / height) bins, portrait to landscape.
ASPECT_EDGES = [0.0, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, float("inf")]
ASPECT_LABELS = ["<1:2", "1:2-2:3", "2:3-4:5", "4:5-1:1", "~1:1", "1:1-5:4", "5:4-3:2", "3:2-2:1", ">2:1"]
HIST_BINS = 20


# --- locating a dataset and a run -------------------------------------------------------


@dataclass
class Dataset:
    files: list[str]  # LCU Parquet shards
    tables: list[str]  # the LCU table dirs they came from
    run_dir: str | None  # the run that made them, when known (for the funnel)


def _is_table(path: str) -> bool:
    return storage.is_file(join(path, shards.MANIFEST))


def _is_run(path: str) -> bool:
    if storage.is_file(join(path, "_run.json")):
        return True
    return any(storage.is_file(join(path, d, "_SUCCESS.json")) for d in _subdirs(path))


def _subdirs(path: str) -> list[str]:
    return storage.subdirs(path)


def run_tables(run_dir: str) -> dict[str, list[str]]:
    """Table name -> table dirs of a run: `_run.json` when present, else the stage folders."""
    tables: dict[str, list[str]] = {}
    run_file = join(run_dir, "_run.json")
    if storage.is_file(run_file):
        listed = storage.read_json(run_file).get("tables", {})
        for name, paths in listed.items():
            tables[name] = [p for p in paths if _is_table(p)]
    for stage in _stage_dirs(run_dir):  # stages finished after the last _run.json was written
        for t in _subdirs(stage):
            path = join(stage, t)
            if _is_table(path) and path not in tables.get(t, []):
                tables.setdefault(t, []).append(path)
    return tables


def _stage_dirs(run_dir: str) -> list[str]:
    dirs = [join(run_dir, d) for d in _subdirs(run_dir)]
    return [d for d in dirs if any(_is_table(join(d, t)) for t in _subdirs(d))]


def stage_summaries(run_dir: str) -> list[dict[str, Any]]:
    """Per-stage summaries (kind, counts, seconds) in run order, from `_SUCCESS.json` markers."""
    out = []
    for d in _stage_dirs(run_dir):
        marker = join(d, "_SUCCESS.json")
        if storage.is_file(marker):
            body = storage.read_json(marker)
            out.append({"name": posixpath.basename(d), "finished": body.get("finished", 0), **body["summary"],
                        "config": body.get("config")})
    return sorted(out, key=lambda s: s["finished"])


def resolve_dataset(path: str) -> Dataset:
    """An LCU table dir, a dataset folder holding `lcu/`, a run dir, or a folder of Parquet files."""
    path = storage.absolute(path.rstrip("/"))
    if not storage.exists_uri(path):
        raise UserError(f"{path} does not exist; give an LCU table folder or a run folder")
    tables: list[str] = []
    run_dir: str | None = None
    if storage.is_file(path) or _is_table(path):
        tables = [path]
        up = posixpath.dirname(posixpath.dirname(path))
        run_dir = up if _is_run(up) else None
    elif any(_is_table(join(path, t)) for t in LCU_TABLES):
        tables = [join(path, t) for t in LCU_TABLES if _is_table(join(path, t))]
        up = posixpath.dirname(path)
        run_dir = up if _is_run(up) else None
    elif _is_run(path):
        run_dir = path
        found = run_tables(path)
        tables = [p for t in LCU_TABLES for p in found.get(t, [])]
    else:
        tables = [path]
    files = [f for t in tables for f in shards.list_shards(t)]
    if not files and run_dir is None:
        raise UserError(f"no LCU shards under {path} (expected lcu/_manifest.json or *.parquet files)")
    return Dataset(files, tables, run_dir)


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


def _lcu_stats(lf: pl.LazyFrame, by: list[str], histograms: bool) -> dict[str, Any]:
    chars = pl.col("instruction").str.len_chars()  # (a regex word count costs 5x the whole scan)
    aspect = pl.col("width").cast(pl.Float64) / pl.col("height").cast(pl.Float64)
    mp = (pl.col("width").cast(pl.Float64) * pl.col("height").cast(pl.Float64)) / 1e6
    scores = lf.select(pl.col("scores")).explode("scores").select(pl.col("scores").struct.unnest()).drop_nulls("name")
    queries = {
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


def _rows(paths: list[str]) -> int:
    return sum(shards.count_rows(p) for p in paths)


def _files(paths: list[str]) -> list[str]:
    return [f for p in paths for f in shards.list_shards(p)]


def funnel(run_dir: str) -> dict[str, Any]:
    """inputs -> quarantined by reason -> embedded -> clustered -> paired -> synthesized -> labelled -> LCU."""
    tables = run_tables(run_dir)
    summaries = stage_summaries(run_dir)
    ingest = [s for s in summaries if s.get("stage") == "ingest"]
    steps: list[dict[str, Any]] = []
    if ingest:
        steps.append({"step": "inputs", "count": sum(int(s["counts"].get("inputs", 0)) for s in ingest)})
        steps.append({"step": "ingested", "count": sum(int(s["counts"].get("images", 0)) for s in ingest)})
        steps.append({"step": "duplicates", "count": sum(int(s["counts"].get("duplicates", 0)) for s in ingest)})
    quarantined: list[dict[str, Any]] = []
    q_files = _files(tables.get("quarantine", []))
    if q_files:
        df = (storage.scan_parquet(q_files).group_by("stage", "reason").len("count")
              .sort(["stage", "count"], descending=[False, True]).collect())
        quarantined = df.to_dicts()
    steps.append({"step": "quarantined", "count": sum(q["count"] for q in quarantined)})
    steps.append({"step": "embedded", "count": _rows(tables.get("embeddings", []))})
    steps.append({"step": "clustered", "count": _rows(tables.get("clusters", []))})
    pair_files = _files(tables.get("pairs", []))
    mined = synth = 0
    if pair_files:
        row = (storage.scan_parquet(pair_files).select(
            (pl.col("task") == "natural_edit").sum().alias("mined"), (pl.col("task") != "natural_edit").sum().alias("synth")
        ).collect().row(0, named=True))
        mined, synth = int(row["mined"]), int(row["synth"])
    steps.append({"step": "paired", "count": mined})
    steps.append({"step": "synthesized", "count": synth})
    instr_files = _files(tables.get("instructions", []))
    labelled = captions = 0
    if instr_files:
        row = (storage.scan_parquet(instr_files).select(pl.col("pair_id")).unique().select(
            (~pl.col("pair_id").str.starts_with("t2i:")).sum().alias("labelled"),
            pl.col("pair_id").str.starts_with("t2i:").sum().alias("captions"),
        ).collect().row(0, named=True))
        labelled, captions = int(row["labelled"]), int(row["captions"])
    steps.append({"step": "labelled", "count": labelled})
    steps.append({"step": "captioned", "count": captions})
    steps.append({"step": "lcu_rows", "count": sum(_rows(tables.get(t, [])) for t in LCU_TABLES)})
    return {
        "run": run_dir,
        "steps": steps,
        "quarantined": quarantined,
        "stages": [{"name": s["name"], "stage": s.get("stage"), "counts": s.get("counts", {}),
                    "seconds": s.get("seconds")} for s in summaries],
    }


# --- text rendering -------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if v[:1].isdigit() else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join("  " + line for line in lines)


def render(res: dict[str, Any]) -> str:
    """The readable report a person reads."""
    out = [f"dataset {res['dataset']}: {res.get('rows', 0):,} rows"
           + (f" where {' and '.join(res['where'])}" if res["where"] else "")]
    if res.get("rows"):
        out += ["", f"samples by {', '.join(res['by'])}:",
                table([{**g, "share": f"{g['share'] * 100:.1f}%"} for g in res["groups"]], [*res["by"], "count", "share"])]
        out += ["", "turns per sample:",
                table([{**t, "share": f"{t['share'] * 100:.1f}%"} for t in res["turns"]], ["num_turns", "count", "share"])]
        r = res["resolution"]
        qs = ["min", "p5", "p50", "mean", "p95", "max"]
        out += ["", "target resolution and aspect (width / height):",
                table([{"": k, **r[k]} for k in ("width", "height", "megapixels")] + [{"": "aspect", **res["aspect"]["ratio"]}],
                      ["", *qs])]
        out += ["  aspect bins: " + ", ".join(f"{b['bin']} {b['count']:,}" for b in res["aspect"]["bins"] if b["count"])]
        i = res["instructions"]
        out += ["", f"instructions: {i['distinct']:,} distinct ({i['distinct_ratio'] * 100:.1f}% of rows)",
                table([{"": "chars", **i["chars"]}], ["", *qs]),
                "  methods: " + ", ".join(f"{m['instruction_method']} {m['count']:,}" for m in i["methods"])]
        if res["scores"]:
            out += ["", "scores:", table(res["scores"], ["name", "count", "mean", "min", "p5", "p50", "p95", "max"])]
    f = res.get("funnel")
    if f:
        out += ["", f"funnel of run {f['run']}:", table(f["steps"], ["step", "count"])]
        if f["quarantined"]:
            out += ["  quarantined by reason:", table(f["quarantined"], ["stage", "reason", "count"])]
    return "\n".join(out)
