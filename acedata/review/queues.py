"""Building review queues from a run's items: by task/subtask, by method, random, stratified.

Order and overlap depend only on (seed, pair_id) hashes, never on table order, so the
same spec over the same run builds the same queue. An overlap fraction marks items
that get two copies (two annotators, for agreement). A pair already in another queue
is left out unless asked for, so separate queues never hand one item to two people.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import pyarrow as pa
import sqlalchemy as sa
from pydantic import Field

from acedata.config import Strict
from acedata.errors import UserError
from acedata.review.store import queues, reading, slots, utcnow

BY = ("task", "method", "random", "stratified")


class QueueSpec(Strict):
    by: Literal["task", "method", "random", "stratified"] = "random"
    task: str | None = None  # by=task: this task (and optionally subtask)
    subtask: str | None = None
    method: str | None = None  # by=method: items with a candidate of this method
    size: int | None = Field(default=None, gt=0)
    overlap: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0
    allow_repeat: bool = False  # take pairs that are already in another queue


def _rank(seed: int, salt: str, pair_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{salt}\x00{pair_id}".encode()).digest()[:8], "big")


def select(facets: pa.Table, spec: QueueSpec, exclude: set[str] = frozenset()) -> list[dict[str, str]]:
    """The queue's items in review order: [{pair_id, task, subtask}]."""
    rows = [r for r in facets.to_pylist() if r["pair_id"] not in exclude]
    if spec.by == "task":
        if not spec.task:
            raise UserError("--by task needs --task (and optionally --subtask)")
        rows = [r for r in rows if r["task"] == spec.task and (spec.subtask is None or r["subtask"] == spec.subtask)]
    elif spec.by == "method":
        if not spec.method:
            raise UserError("--by method needs --method (template, llm_rewrite, mllm_llm, captioner, caption)")
        rows = [r for r in rows if spec.method in r["methods"].split()]
    rows.sort(key=lambda r: _rank(spec.seed, "order", r["pair_id"]))
    if spec.by == "stratified":
        rows = _interleave(rows)
    if spec.size is not None:
        rows = rows[: spec.size]
    return [{"pair_id": r["pair_id"], "task": r["task"], "subtask": r["subtask"]} for r in rows]


def _interleave(rows: list[dict]) -> list[dict]:
    """Round-robin over (task, subtask) strata, so any prefix is balanced across them."""
    strata: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        strata.setdefault((r["task"], r["subtask"]), []).append(r)
    out: list[dict] = []
    lists = [strata[k] for k in sorted(strata)]
    for i in range(max((len(v) for v in lists), default=0)):
        out.extend(v[i] for v in lists if i < len(v))
    return out


def build(engine: sa.Engine, name: str, facets: pa.Table, spec: QueueSpec, created_by: str | None = None) -> dict:
    """Create queue `name` in the database; returns {items, copies}."""
    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"queue name {name!r}: use 1-64 letters, digits, '_' or '-'")
    with engine.begin() as c:
        if c.execute(sa.select(queues.c.name).where(queues.c.name == name)).first():
            raise UserError(f"queue {name!r} exists already; pick another name")
        exclude: set[str] = set()
        if not spec.allow_repeat:
            exclude = {r.pair_id for r in c.execute(sa.select(slots.c.pair_id).distinct())}
        items = select(facets, spec, exclude)
        if not items:
            raise UserError(f"queue {name!r} would be empty (no item matches {spec.model_dump(exclude_none=True)})")
        c.execute(queues.insert().values(name=name, spec=json.dumps(spec.model_dump()), created_by=created_by,
                                         created_at=utcnow()))
        rows = []
        for pos, it in enumerate(items):
            copies = 2 if _rank(spec.seed, "overlap", it["pair_id"]) < spec.overlap * 2**64 else 1
            rows.extend({"queue": name, "pair_id": it["pair_id"], "position": pos, "copy": k, "task": it["task"],
                         "subtask": it["subtask"], "annotator": None, "lease_until": None, "done": False}
                        for k in range(copies))
        for lo in range(0, len(rows), 5000):
            c.execute(slots.insert(), rows[lo: lo + 5000])
    return {"items": len(items), "copies": len(rows)}


def list_queues(engine: sa.Engine) -> list[dict]:
    q = (sa.select(queues.c.name, queues.c.spec, sa.func.count(slots.c.id).label("copies"),
                   sa.func.sum(sa.case((slots.c.done, 1), else_=0)).label("done"))
         .join(slots, slots.c.queue == queues.c.name, isouter=True).group_by(queues.c.name, queues.c.spec)
         .order_by(queues.c.name))
    with reading(engine) as c:
        return [{"name": r.name, "spec": json.loads(r.spec), "copies": int(r.copies), "done": int(r.done or 0)}
                for r in c.execute(q)]
