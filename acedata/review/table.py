"""The run's `reviews` table: append-only human decisions on pairs.

Lives at `RUN/review/reviews/` in the usual shard layout (shards, `_units/`, manifest),
so `validate` checks it like any table. Each append writes a new unit named by the
digest of its review ids — committed units are never rewritten — and rows whose
`review_id` is already in the table are dropped, so re-exporting is harmless.

Consumers (assemble, the captioner export) use `final_decisions`: per pair, the latest
non-skip decision wins (ties broken by annotator name, so the result is deterministic).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
from typing import Any

import pyarrow as pa

from acedata import shards
from acedata.schemas import REVIEW_DECISIONS, REVIEWS, conform, schema_for

TABLE = "reviews"
STAGE_DIR = "review"
# Reason codes a reviewer picks when rejecting a pair (`reject_reason`); the Label Studio
# labeling config offers the same list. Assemble quarantines with the code as detail.
REJECT_REASONS = ("not_an_edit", "wrong_task", "bad_images", "target_mismatch", "unsafe", "other")


def reviews_dir(run_dir: str) -> str:
    return posixpath.join(run_dir.rstrip("/"), STAGE_DIR, TABLE)


def review_id(pair_id: str, annotator: str, decided_at: dt.datetime, origin: str) -> str:
    key = f"{pair_id}\x00{annotator}\x00{decided_at.astimezone(dt.UTC).isoformat()}\x00{origin}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _check(rows: pa.Table) -> None:
    bad = set(rows.column("decision").to_pylist()) - set(REVIEW_DECISIONS)
    if bad:
        raise ValueError(f"unknown review decisions {sorted(bad)}; known: {REVIEW_DECISIONS}")


def read_reviews(run_dir: str) -> pa.Table:
    """Every review row of a run (empty table when the run has none)."""
    d = reviews_dir(run_dir)
    if shards.read_manifest(d) is None:
        return REVIEWS.empty_table()
    return conform(shards.read_table(d), REVIEWS)


def append_reviews(run_dir: str, rows: list[dict[str, Any]] | pa.Table) -> int:
    """Append review rows not yet in the table; returns how many were new."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=REVIEWS)
    table = conform(table, REVIEWS)
    _check(table)
    d = reviews_dir(run_dir)
    known = set(read_reviews(run_dir).column("review_id").to_pylist())
    ids = table.column("review_id").to_pylist()
    keep = []
    for i, r in enumerate(ids):  # new ids only, each once (duplicates inside the batch too)
        if r not in known:
            known.add(r)
            keep.append(i)
    if not keep:
        return 0
    table = table.take(pa.array(keep, pa.int64())).sort_by("review_id")
    unit = "r-" + hashlib.sha256("\n".join(table.column("review_id").to_pylist()).encode()).hexdigest()[:24]
    schema = schema_for(TABLE)
    w = shards.ShardWriter(d, schema, unit=unit)
    w.write(table)
    w.commit()
    shards.finalize_manifest(d, schema, table=TABLE)
    return table.num_rows


def final_decisions(reviews: pa.Table) -> dict[str, dict[str, Any]]:
    """pair_id -> the deciding review row (latest non-skip; ties by annotator)."""
    best: dict[str, dict[str, Any]] = {}
    for r in reviews.to_pylist():
        if r["decision"] == "skip":
            continue
        cur = best.get(r["pair_id"])
        if cur is None or (r["decided_at"], r["annotator"]) > (cur["decided_at"], cur["annotator"]):
            best[r["pair_id"]] = r
    return best
