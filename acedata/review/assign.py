"""Handing out items and recording decisions.

A claim takes the first free copy of a queue's items (free = unclaimed, or its lease ran
out because the annotator vanished) with a compare-and-set update, so two annotators
racing for one copy cannot both win; the (queue, pair_id, annotator) unique constraint
keeps one annotator off both copies of an overlap item. A decision is accepted only from
the copy's holder and is committed, with the copy marked done, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import sqlalchemy as sa

from acedata.review.store import decisions, slots, utcnow
from acedata.review.table import review_id

REJECT_REASONS = {
    "unrelated": "images are not an edit of each other",
    "bad_target": "target has artifacts or is low quality",
    "bad_source": "source image unusable",
    "no_change": "target does not differ from the source",
    "wrong_task": "task or subtask label is wrong",
    "unsafe": "unsafe or offensive content",
    "other": "other (say why in the comment)",
}
MAX_TEXT = 2000
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


class Conflict(Exception):
    """The copy is not (or no longer) this annotator's."""


class Invalid(ValueError):
    """A decision the server refuses (bad indicator, unknown reason, ...)."""


def check_indicators(text: str, allowed: list[str]) -> str | None:
    """Why an instruction's image indicators do not fit the item, or None when they do."""
    found = PLACEHOLDER.findall(text)
    bad = sorted({f for f in found if f not in allowed})
    if bad:
        want = ", ".join(allowed) if allowed else "none (this item has no input image)"
        return f"unknown image indicator {', '.join(bad)}; this item allows {want}"
    if allowed and not found:
        return f"name the input image with {' or '.join(allowed[:2])}{' ...' if len(allowed) > 2 else ''}"
    if text.count("{") != text.count("}"):
        return "unbalanced braces"
    return None


def claim(engine: sa.Engine, queue: str, user: str, lease_s: int, holding: list[str] = ()) -> str | None:
    """A pair_id for `user` from `queue` (one already held but not in `holding` first), or None when empty."""
    for _ in range(20):
        now = utcnow()
        until = now + dt.timedelta(seconds=lease_s)
        with engine.begin() as c:
            mine = c.execute(
                sa.select(slots.c.id, slots.c.pair_id)
                .where(slots.c.queue == queue, slots.c.annotator == user, sa.not_(slots.c.done),
                       slots.c.pair_id.not_in(list(holding)))
                .order_by(slots.c.position).limit(1)).first()
            if mine:
                c.execute(slots.update().where(slots.c.id == mine.id).values(lease_until=until))
                return mine.pair_id
            free = (sa.select(slots.c.id)
                    .where(slots.c.queue == queue, sa.not_(slots.c.done),
                           sa.or_(slots.c.annotator.is_(None), slots.c.lease_until < now),
                           slots.c.pair_id.not_in(sa.select(slots.c.pair_id)
                                                  .where(slots.c.queue == queue, slots.c.annotator == user)),
                           slots.c.pair_id.not_in(sa.select(decisions.c.pair_id)
                                                  .where(decisions.c.queue == queue, decisions.c.annotator == user)))
                    .order_by(slots.c.position, slots.c.copy).limit(1)
                    .with_for_update(skip_locked=True))
            row = c.execute(free).first()
            if row is None:
                return None
            try:
                with c.begin_nested():
                    got = c.execute(
                        slots.update()
                        .where(slots.c.id == row.id, sa.not_(slots.c.done),
                               sa.or_(slots.c.annotator.is_(None), slots.c.lease_until < now))
                        .values(annotator=user, lease_until=until)).rowcount
            except sa.exc.IntegrityError:  # raced into holding both copies of one item: try the next
                got = 0
            if got == 1:
                return c.execute(sa.select(slots.c.pair_id).where(slots.c.id == row.id)).scalar_one()
    return None


def renew(engine: sa.Engine, queue: str, user: str, pair_ids: list[str], lease_s: int) -> int:
    """Extend the leases `user` still holds on these items (the page calls this while it is open)."""
    until = utcnow() + dt.timedelta(seconds=lease_s)
    with engine.begin() as c:
        return c.execute(slots.update()
                         .where(slots.c.queue == queue, slots.c.annotator == user, sa.not_(slots.c.done),
                                slots.c.pair_id.in_(list(pair_ids)))
                         .values(lease_until=until)).rowcount


def decide(engine: sa.Engine, queue: str, user: str, item: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Validate and commit one decision; returns the stored row. Raises Invalid or Conflict."""
    row = _decision_row(queue, user, item, body)
    with engine.begin() as c:
        slot = c.execute(sa.select(slots.c.id, slots.c.done)
                         .where(slots.c.queue == queue, slots.c.pair_id == item["pair_id"],
                                slots.c.annotator == user)).first()
        if slot is None:
            raise Conflict("this item is not assigned to you (its lease ran out and it went to someone else)")
        if slot.done:
            raise Conflict("you already decided this item")
        if row["decision"] == "skip":  # back to the queue for someone else; never to this annotator again
            c.execute(slots.update().where(slots.c.id == slot.id).values(annotator=None, lease_until=None))
        else:
            c.execute(slots.update().where(slots.c.id == slot.id).values(done=True, lease_until=None))
        c.execute(decisions.insert().values(**row))
    return row


def _decision_row(queue: str, user: str, item: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    kind = body.get("decision")
    shown = [{"n": c["n"], "variant": c["variant"], "method": c["method"], "instruction": c["instruction"]}
             for c in item["candidates"]]
    row: dict[str, Any] = {"queue": queue, "pair_id": item["pair_id"], "task": item["task"],
                           "subtask": item["subtask"], "annotator": user, "decision": kind, "instruction": None,
                           "chosen_variant": None, "chosen_method": None, "reject_reason": None,
                           "comment": _text(body.get("comment"), "comment") or None,
                           "shown": json.dumps({"candidates": shown, "analysis": item.get("analysis")})}
    if kind == "accept":
        n = body.get("candidate")
        pick = next((c for c in item["candidates"] if isinstance(n, int) and c["n"] == n), None)
        if pick is None:
            raise Invalid(f"candidate {n!r} is not on this item (it has {len(item['candidates'])})")
        row.update(instruction=pick["instruction"], chosen_variant=pick["variant"], chosen_method=pick["method"])
    elif kind == "edit":
        text = " ".join(_text(body.get("instruction"), "instruction").split())
        if not text:
            raise Invalid("the corrected instruction is empty")
        why = check_indicators(text, item["indicators"])
        if why:
            raise Invalid(why)
        row.update(instruction=text, chosen_method="human")
    elif kind == "reject":
        if body.get("reason") not in REJECT_REASONS:
            raise Invalid(f"reject reason {body.get('reason')!r} unknown; use one of {sorted(REJECT_REASONS)}")
        row["reject_reason"] = body["reason"]
    elif kind != "skip":
        raise Invalid(f"decision {kind!r} unknown; use accept, edit, reject or skip")
    now = utcnow()
    row["decided_at"] = now
    row["review_id"] = review_id(item["pair_id"], user, now.replace(tzinfo=dt.UTC), "review_app")
    return row


def _text(v: Any, what: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise Invalid(f"{what} must be text of at most {MAX_TEXT} characters")
    return v
