"""The table-reading steps of a run's funnel (`run_tables.funnel`), bounded in driver memory.

Quarantine rows per (stage, reason) and mined/synthesized pairs are summed from one small
partial per shard, computed in-process one shard at a time or by one Ray task per shard
(`runtime.map_payloads`, as `acedata.stats` partials): the driver holds per-shard counts only.

Labelled pairs and captioned images are distinct pair ids of the `instructions` tables. A run
whose one instructions table comes from an instruct stage has them in that stage's summary: each
pair row (and each images row) is handled by exactly one unit and gets its variants there, so
`pairs_with_instruction` and `t2i_images - t2i_no_caption`, summed over the units, are the
distinct counts, and no instruction row is read. Otherwise (several instructions tables, which may
label the same pairs, or a table without such a summary) each shard gives the xxh3 hashes of its
distinct pair ids, unioned exactly up to `stats_partial.EXACT_DISTINCT_MAX` and in a HyperLogLog
above it; the funnel then names those steps under `approximate`, as `acedata stats` does.
"""

from __future__ import annotations

import pickle
import posixpath
from typing import Any

import numpy as np
import polars as pl

from acedata import runtime, shards, sketches, stats_partial, storage

T2I = "t2i:"  # pair ids of text-to-image caption rows


def _shard_task(payload: dict[str, Any]) -> bytes:
    """One shard (on a worker) -> its pickled partial counts."""
    kind, lf = payload["kind"], storage.scan_parquet([payload["file"]])
    if kind == "quarantine":
        df = lf.group_by("stage", "reason").len("count").collect()
        return pickle.dumps({(s, r): int(c) for s, r, c in df.iter_rows()})
    if kind == "pairs":
        row = lf.select((pl.col("task") == "natural_edit").sum().alias("mined"),
                        (pl.col("task") != "natural_edit").sum().alias("synth")).collect().row(0)
        return pickle.dumps((int(row[0]), int(row[1])))
    ids = lf.select(pl.col("pair_id").drop_nulls().unique()).collect().to_series()
    t2i = ids.str.starts_with(T2I)
    return pickle.dumps({"labelled": stats_partial.distinct_of(ids.filter(~t2i).to_list()),
                         "captioned": stats_partial.distinct_of(ids.filter(t2i).to_list())})


def _summary_counts(instr_tables: list[str], summaries: list[dict[str, Any]]) -> dict[str, int] | None:
    """Labelled pairs and captioned images from the instruct stage's summed unit counts, when the
    run has one instructions table and its stage recorded them (every instruct stage does)."""
    if len(instr_tables) != 1:
        return None
    stage = posixpath.basename(posixpath.dirname(instr_tables[0].rstrip("/")))
    for s in summaries:
        c = s.get("counts") or {}
        if s["name"] == stage and s.get("stage") == "instruct" and "pairs_with_instruction" in c:
            return {"labelled": int(c["pairs_with_instruction"]),
                    "captioned": int(c.get("t2i_images", 0)) - int(c.get("t2i_no_caption", 0))}
    return None


def table_counts(tables: dict[str, list[str]], summaries: list[dict[str, Any]], executor: str = "local",
                 address: str | None = None) -> dict[str, Any]:
    """quarantined (rows per (stage, reason)), mined, synth, labelled, captioned and `approximate`."""
    from_summary = _summary_counts(tables.get("instructions", []), summaries)
    kinds = ["quarantine", "pairs"] + ([] if from_summary else ["instructions"])
    payloads = [{"kind": k, "file": f} for k in kinds for p in tables.get(k, []) for f in shards.list_shards(p)]
    if executor == "ray" and payloads:
        runtime.init_ray(address)
    quarantined: dict[tuple[Any, Any], int] = {}
    mined = synth = 0
    distinct = {k: {"hashes": np.zeros(0, np.uint64)} for k in ("labelled", "captioned")}
    for blob in runtime.map_payloads(_shard_task, payloads, executor):  # in any order
        got = pickle.loads(blob)
        if isinstance(got, tuple):
            mined, synth = mined + got[0], synth + got[1]
        elif "labelled" in got:
            distinct = {k: stats_partial.merge_distinct(distinct[k], got[k]) for k in distinct}
        else:
            quarantined = sketches.add_counts(quarantined, got)
    out: dict[str, Any] = {"mined": mined, "synth": synth, "approximate": {}}
    if from_summary:
        out.update(from_summary)
    for k, d in distinct.items():
        if from_summary:
            break
        d = stats_partial.compact_distinct(d)
        if "hashes" in d:
            out[k] = len(d["hashes"])
        else:
            out[k] = sketches.hll_estimate(d["hll"])
            out["approximate"][k] = {
                "fields": ["count"], "method": "hyperloglog", "registers": sketches.HLL_M,
                "std_error": sketches.HLL_STD_ERROR,
                "why": f"distinct pair ids of {len(tables['instructions'])} instructions tables, "
                       f"more than {stats_partial.EXACT_DISTINCT_MAX:,}"}

    def key(item: tuple[tuple[Any, Any], int]) -> tuple[Any, ...]:  # stage (nulls first), most rows first
        (stage, reason), count = item
        return (stage is not None, stage or "", -count, reason is not None, reason or "")

    out["quarantined"] = [{"stage": s, "reason": r, "count": c} for (s, r), c in sorted(quarantined.items(), key=key)]
    return out
