"""Dataset statistics from columns alone, as partial aggregates merged on the driver.

No query here reads an image column, so the cost scales with metadata (task, sizes, instruction
text, scores), not with image bytes. Each group of LCU shards becomes a partial aggregate
(`acedata.stats_partial`: counts keyed by small-domain values and mergeable sketches), computed
in-process one group at a time (`executor="local"`, groups of about `LOCAL_PARTIAL_ROWS` rows) or
by one Ray task per group (`executor="ray"`, through `runtime.map_payloads`); the driver merges
them and reads every answer off the merged counts. Its memory grows with the number of shards
and distinct small-domain values (sizes, lengths, groups), never with rows (in-process it also
holds one group's columns, or one shard's when a shard is larger); the answer is the same for any
grouping.

Exact: counts and shares, min/max/mean, the quantiles of width, height, aspect, megapixels and
instruction length (polars' `interpolation="nearest"`), their histograms, score counts, min, max
and mean. Approximate, and then named under `approximate` in the answer: score quantiles and
histograms for a score with more than `EXACT_SCORE_VALUES` distinct values (log buckets,
within `sketches.RELATIVE_ERROR` relative), and the distinct-instruction count above
`EXACT_DISTINCT_MAX` texts (HyperLogLog, `sketches.HLL_STD_ERROR` standard error).
`compute()` answers the questions of `acedata stats`; `run_tables.funnel()` follows a run from
inputs to LCU rows through its tables, `stats_render.render()` prints the answer.
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any

import polars as pl

from acedata import runtime, shards, sketches, stats_partial, storage
from acedata.errors import UserError
from acedata.run_tables import (  # noqa: F401 - re-exported: the run's tables and funnel
    LCU_TABLES,
    Dataset,
    funnel,
    resolve_dataset,
    run_tables,
    stage_summaries,
)
from acedata.stats_partial import EXACT_DISTINCT_MAX, EXACT_SCORE_VALUES, parse_where
from acedata.stats_render import render, table  # noqa: F401 - re-exported

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SCORE_QUANTILES = (0.05, 0.5, 0.95)
# Aspect ratio (width / height) bins, portrait to landscape.
ASPECT_EDGES = [0.0, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, float("inf")]
ASPECT_LABELS = ["<1:2", "1:2-2:3", "2:3-4:5", "4:5-1:1", "~1:1", "1:1-5:4", "5:4-3:2", "3:2-2:1", ">2:1"]
HIST_BINS = 20
# executor="auto": Ray above this many rows (or when an address is given), else in-process.
AUTO_RAY_ROWS = 20_000_000
# Consecutive shards are grouped into partials of about this many rows (a shard is never split):
# in-process a partial's columns are what the driver holds; on Ray each partial is one task.
LOCAL_PARTIAL_ROWS = 25_000
RAY_PARTIAL_ROWS = 1_000_000


def compute(
    path: str,
    where: list[str] | None = None,
    by: list[str] | None = None,
    with_funnel: bool = True,
    histograms: bool = True,
    executor: str = "local",
    address: str | None = None,
    files_per_partial: int | None = None,
) -> dict[str, Any]:
    """Every statistic `acedata stats` prints, as a JSON-ready dict.

    `executor`: "local" (in-process), "ray" (one task per partial) or "auto" (Ray above
    `AUTO_RAY_ROWS` rows or with an address). Partials group consecutive shards by rows
    (`LOCAL_PARTIAL_ROWS`, `RAY_PARTIAL_ROWS`), or `files_per_partial` shards each when given.
    """
    ds = resolve_dataset(path)
    by = by or ["task", "subtask"]
    result: dict[str, Any] = {"dataset": path, "tables": ds.tables, "where": where or [], "by": by}
    if ds.files:
        schema = pl.DataFrame(shards.open_parquet(ds.files[0]).schema_arrow.empty_table()).schema  # a footer
        for col in by:
            if col not in schema:
                raise UserError(f"--by {col!r}: no such column; try task, subtask, num_turns, instruction_method")
        parse_where(where or [], schema)  # user errors here, before any partial runs
        if executor == "auto":
            executor = _auto_executor(ds, address)
        groups = ([[{"file": f} for f in ds.files[i:i + files_per_partial]]
                   for i in range(0, len(ds.files), files_per_partial)]
                  if files_per_partial else
                  _groups(ds, LOCAL_PARTIAL_ROWS if executor == "local" else RAY_PARTIAL_ROWS))
        merged = run_partials(groups, by, where or [], executor, address)
        result.update(summarise(merged, by, histograms))
    else:
        result["rows"] = 0
    if with_funnel and ds.run_dir is not None:
        result["funnel"] = funnel(ds.run_dir, executor if executor in ("local", "ray") else "local", address)
    return result


def _auto_executor(ds: Dataset, address: str | None) -> str:
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    rows = sum(shards.count_rows(t) for t in ds.tables)  # manifests (footers for a plain folder)
    return "ray" if rows > AUTO_RAY_ROWS else "local"


# --- partials -------------------------------------------------------------------------------


def _partial_task(payload: dict[str, Any]) -> bytes:
    """A unit of work (on a worker): one group of pieces -> its pickled partial aggregate."""
    return pickle.dumps(stats_partial.partial_of(payload["pieces"], payload["by"], payload["where"]))


def _groups(ds: Dataset, rows: int) -> list[list[dict[str, Any]]]:
    """Consecutive pieces of about `rows` rows a group: whole shards, and the row-group ranges of a
    shard larger than that (its footer read here; rows from the manifests otherwise)."""
    known: dict[str, int] = {}
    for t in ds.tables:
        manifest = shards.read_manifest(t) if not storage.is_file(t) else None
        if manifest is not None:
            known.update(zip(shards.list_shards(t), (int(s["rows"]) for s in manifest["shards"])))
    out: list[list[dict[str, Any]]] = []
    held = rows
    for f in ds.files:
        n = known.get(f)
        if n is not None and n <= rows:
            pieces = [({"file": f}, n)]
        else:
            pieces = _split(f, rows)
        for piece, k in pieces:
            if out and held + k <= rows:
                out[-1].append(piece)
                held += k
            else:
                out.append([piece])
                held = k
    return out


def _split(file: str, rows: int) -> list[tuple[dict[str, Any], int]]:
    """A shard as ranges of consecutive row groups of about `rows` rows (a footer read)."""
    md = shards.open_parquet(file).metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    if sum(sizes) <= rows:
        return [({"file": file}, sum(sizes))]
    out: list[tuple[dict[str, Any], int]] = []
    first, held = 0, 0
    for k in sizes:
        if held and held + k > rows:
            out.append(({"file": file, "rows": [first, held]}, held))
            first, held = first + held, 0
        held += k
    out.append(({"file": file, "rows": [first, held]}, held))
    return out


def run_partials(groups: list[list[dict[str, Any]]], by: list[str], where: list[str], executor: str = "local",
                 address: str | None = None) -> dict[str, Any]:
    """The merged partial aggregate of each group of pieces; partials are folded in as they arrive."""
    payloads = [{"pieces": pieces, "by": by, "where": where} for pieces in groups]
    if executor == "ray":
        runtime.init_ray(address)
    merged = stats_partial.empty()
    for blob in runtime.map_payloads(_partial_task, payloads, executor):
        merged = stats_partial.merge(merged, pickle.loads(blob))
    return merged


# --- answers off the merged counts ------------------------------------------------------------


def _nk(v: Any) -> tuple[bool, Any]:
    """Sort key: nulls first, as polars sorts them."""
    return (v is not None, v)


def _div(a: float, b: float) -> float:
    if b:
        return a / b
    return math.inf if a > 0 else -math.inf if a < 0 else math.nan


def _qstats(items: list[tuple[Any, int]], n: int, mean: float | None, qs: tuple[float, ...] = QUANTILES) -> dict[str, float | None]:
    """min, mean, the nearest quantiles and max of sorted (value, count) pairs holding n values."""
    if not n:
        return {"min": None, "mean": None, **{f"p{round(q * 100)}": None for q in qs}, "max": None}
    pct = {f"p{round(q * 100)}": float(sketches.nearest_quantile(items, q, n)) for q in qs}
    return {"min": float(items[0][0]), "mean": mean, **pct, "max": float(items[-1][0])}


def _int_stats(counts: dict[Any, int]) -> tuple[list[tuple[int, int]], dict[str, float | None]]:
    items = sorted((v, c) for v, c in counts.items() if v is not None)
    n = sum(c for _, c in items)
    return items, _qstats(items, n, sum(v * c for v, c in items) / n if n else None)


def _float_stats(counts: dict[float, int]) -> tuple[list[tuple[float, int]], dict[str, float | None]]:
    items = sorted((v, c) for v, c in counts.items() if not math.isnan(v))
    n = sum(c for _, c in items)
    return items, _qstats(items, n, math.fsum(v * c for v, c in items) / n if n else None)


def _hist(items: list[tuple[float, int]], lo: float | None, hi: float | None, bins: int = HIST_BINS) -> list[dict[str, Any]]:
    """Equal-width histogram of (value, count) pairs over [lo, hi] (the top edge is inclusive).

    An infinite lo or hi (a score of -inf/+inf) is replaced by the finite min/max of the items, and
    -inf/+inf values are counted in the first/last bin; no finite values: no histogram. NaN is left out."""
    if lo is None or hi is None:
        return []
    if not (math.isfinite(lo) and math.isfinite(hi)):
        finite = [v for v, _ in items if math.isfinite(v)]
        if not finite:
            return []
        lo = lo if math.isfinite(lo) else min(finite)
        hi = hi if math.isfinite(hi) else max(finite)
    width = (hi - lo) / bins if hi > lo else 1.0
    got = [0] * bins
    for v, c in items:
        if math.isfinite(v):
            got[min(max(math.floor((v - lo) / width), 0), bins - 1)] += c
        elif not math.isnan(v):
            got[0 if v < 0 else bins - 1] += c
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width, "count": got[i]} for i in range(bins)]


def _aspect_label(a: float | None) -> str:
    """The ASPECT_LABELS bin of a ratio (left-closed intervals; null and NaN in the last)."""
    if a is not None and not math.isnan(a):
        for edge, label in zip(ASPECT_EDGES[1:], ASPECT_LABELS):
            if a < edge:
                return label
    return ASPECT_LABELS[-1]


def _score_items(s: dict[str, Any]) -> list[tuple[float, int]]:
    """A score's sorted (value, count) pairs: exact values, or each bucket's value kept inside [min, max]."""
    if s["exact"] is not None:
        mid = sorted(s["exact"].items())
    else:
        lo, hi = s["min"], s["max"]
        mid = [(min(max(sketches.bucket_value(k), lo), hi), c) for k, c in sorted(s["buckets"].items())]
    return [(-math.inf, s["ninf"])] * bool(s["ninf"]) + mid + [(math.inf, s["pinf"])] * bool(s["pinf"]) \
        + [(math.nan, s["nan"])] * bool(s["nan"])


def _score_mean(s: dict[str, Any]) -> float | None:
    if not s["n"]:
        return None
    if s["nan"] or (s["pinf"] and s["ninf"]):
        return math.nan
    if s["pinf"] or s["ninf"]:
        return math.inf if s["pinf"] else -math.inf
    finite = s["n"] - s["nan"] - s["pinf"] - s["ninf"]
    return float(sketches.parts_total(s["sum"]) / finite)


def summarise(p: dict[str, Any], by: list[str], histograms: bool) -> dict[str, Any]:
    """The `acedata stats` answer read off a merged partial."""
    n = p["rows"]
    share = (lambda c: round(c / n, 6)) if n else (lambda c: 0.0)
    groups = sorted(p["groups"].items(), key=lambda kv: (-kv[1], *(_nk(v) for v in kv[0])))
    sizes = p["sizes"]
    width: dict[Any, int] = {}
    height: dict[Any, int] = {}
    aspect: dict[float, int] = {}
    mp: dict[float, int] = {}
    bins = dict.fromkeys(ASPECT_LABELS, 0)
    for (w, h), c in sizes.items():
        width[w] = width.get(w, 0) + c
        height[h] = height.get(h, 0) + c
        a = None
        if w is not None and h is not None:
            a = _div(float(w), float(h))
            aspect[a] = aspect.get(a, 0) + c
            m = float(w) * float(h) / 1e6
            mp[m] = mp.get(m, 0) + c
        bins[_aspect_label(a)] += c
    _, width_stats = _int_stats(width)
    _, height_stats = _int_stats(height)
    _, aspect_stats = _float_stats(aspect)
    mp_items, mp_stats = _float_stats(mp)
    chars_items, chars_stats = _int_stats(p["chars"])
    distinct, approximate = _distinct(stats_partial.compact_distinct(p["distinct"]))
    scores, score_items = [], {}
    for name in sorted(p["scores"], key=_nk):
        s = p["scores"][name]
        score_items[name] = items = _score_items(s)
        q = _qstats(items, s["n"], _score_mean(s), SCORE_QUANTILES)
        scores.append({"name": name, "count": s["count"], "mean": q["mean"], "min": s["min"],
                       **{k: q[k] for k in ("p5", "p50", "p95")}, "max": s["max"]})
        if s["exact"] is None:
            approximate[f"scores.{name}"] = {
                "fields": ["p5", "p50", "p95", "histogram"], "method": "log buckets",
                "relative_error": sketches.RELATIVE_ERROR,
                "why": f"more than {EXACT_SCORE_VALUES:,} distinct values"}
    out: dict[str, Any] = {
        "rows": n,
        "groups": [{**dict(zip(by, k)), "count": c, "share": share(c)} for k, c in groups],
        "turns": [{"num_turns": k, "count": c, "share": share(c)}
                  for k, c in sorted(p["turns"].items(), key=lambda kv: _nk(kv[0]))],
        "resolution": {
            "width": width_stats,
            "height": height_stats,
            "megapixels": mp_stats,
            "top_sizes": [{"width": w, "height": h, "count": c} for (w, h), c in
                          sorted(sizes.items(), key=lambda kv: (-kv[1], _nk(kv[0][0]), _nk(kv[0][1])))[:10]],
        },
        "aspect": {
            "ratio": aspect_stats,
            "bins": [{"bin": label, "count": bins[label]} for label in ASPECT_LABELS],
        },
        "instructions": {
            "chars": chars_stats,
            "distinct": distinct,
            "distinct_ratio": round(distinct / n, 6) if n else 0.0,
            "methods": [{"instruction_method": k, "count": c} for k, c in
                        sorted(p["methods"].items(), key=lambda kv: (-kv[1], _nk(kv[0])))],
        },
        "scores": scores,
        "approximate": approximate,
    }
    if histograms and n:
        out["histograms"] = {
            "instruction_chars": _hist(chars_items, chars_stats["min"], chars_stats["max"]),
            "megapixels": _hist(mp_items, mp_stats["min"], mp_stats["max"]),
            "scores": {s["name"]: _hist(score_items[s["name"]], s["min"], s["max"]) for s in scores},
        }
    return out


def _distinct(d: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if "hashes" in d:
        return len(d["hashes"]), {}
    return sketches.hll_estimate(d["hll"]), {"instructions.distinct": {
        "fields": ["distinct", "distinct_ratio"], "method": "hyperloglog", "registers": sketches.HLL_M,
        "std_error": sketches.HLL_STD_ERROR, "why": f"more than {EXACT_DISTINCT_MAX:,} distinct texts"}}
