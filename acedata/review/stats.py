"""Progress, throughput, reject reasons and agreement; decision exports (CSV, JSON, the run's table).

Agreement is measured on items two annotators both decided (skips left out):
exact agreement = same outcome (both rejected, or the same final instruction text), and
for pairs where either corrected the text, the character edit distance between the two
final texts (raw and divided by the longer text's length).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import Counter, defaultdict
from typing import Any

import sqlalchemy as sa

from acedata.captioner.metrics import edit_distance
from acedata.review.store import decisions, reading, slots, utcnow
from acedata.review.table import append_reviews

EXPORT_COLUMNS = ["review_id", "queue", "pair_id", "task", "subtask", "annotator", "decision", "instruction",
                  "chosen_variant", "chosen_method", "reject_reason", "comment", "shown", "decided_at"]


def all_decisions(engine: sa.Engine, queue: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(*[decisions.c[n] for n in EXPORT_COLUMNS]).order_by(decisions.c.id)
    if queue:
        q = q.where(decisions.c.queue == queue)
    with reading(engine) as c:
        return [dict(r._mapping) for r in c.execute(q)]


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement over (queue, pair) decided by two or more annotators: each annotator's latest non-skip."""
    latest: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r["decision"] != "skip":
            latest[(r["queue"], r["pair_id"])][r["annotator"]] = r
    both = [list(v.values())[:2] for v in latest.values() if len(v) >= 2]
    same, dists, norms = 0, [], []
    for a, b in both:
        ta, tb = _final(a), _final(b)
        same += ta == tb
        if "edit" in (a["decision"], b["decision"]) and ta is not None and tb is not None:
            d = edit_distance(ta, tb)
            dists.append(d)
            norms.append(d / max(1, len(ta), len(tb)))
    accepts = [(a, b) for a, b in both if a["decision"] == b["decision"] == "accept"]
    return {"items": len(both), "exact_agreement": round(same / len(both), 4) if both else None,
            "both_accepted": len(accepts),
            "same_candidate": round(sum(a["chosen_variant"] == b["chosen_variant"] for a, b in accepts)
                                    / len(accepts), 4) if accepts else None,
            "corrections_compared": len(dists),
            "mean_edit_distance": round(sum(dists) / len(dists), 2) if dists else None,
            "mean_normalized_edit_distance": round(sum(norms) / len(norms), 4) if norms else None}


def _final(r: dict[str, Any]) -> str | None:
    return None if r["decision"] == "reject" else " ".join((r["instruction"] or "").split())


def summary(engine: sa.Engine) -> dict[str, Any]:
    """Everything the admin page shows."""
    now = utcnow()
    with reading(engine) as c:
        per_queue = [dict(r._mapping) for r in c.execute(
            sa.select(slots.c.queue, sa.func.count().label("copies"),
                      sa.func.count(sa.distinct(slots.c.pair_id)).label("items"),
                      sa.func.sum(sa.case((slots.c.done, 1), else_=0)).label("done"),
                      sa.func.sum(sa.case((sa.and_(sa.not_(slots.c.done), slots.c.lease_until > now), 1),
                                          else_=0)).label("claimed"))
            .group_by(slots.c.queue).order_by(slots.c.queue))]
    rows = all_decisions(engine)
    for q in per_queue:
        q["done"], q["claimed"] = int(q["done"] or 0), int(q["claimed"] or 0)
        q["open"] = q["copies"] - q["done"] - q["claimed"]
        q["progress"] = round(q["done"] / q["copies"], 4) if q["copies"] else 0.0
    by_user: dict[str, dict[str, Any]] = {}
    for r in rows:
        u = by_user.setdefault(r["annotator"], {"annotator": r["annotator"], "decisions": 0, "accept": 0,
                                                "edit": 0, "reject": 0, "skip": 0, "times": []})
        u["decisions"] += 1
        u[r["decision"]] += 1
        u["times"].append(r["decided_at"])
    for u in by_user.values():
        times = sorted(u.pop("times"))
        span = (times[-1] - times[0]).total_seconds() if len(times) > 1 else 0.0
        u["per_hour"] = round((len(times) - 1) / span * 3600, 1) if span > 0 else None
        u["last_hour"] = sum(1 for t in times if t > now - dt.timedelta(hours=1))
        u["last"] = times[-1].isoformat(timespec="seconds") + "Z"
    reasons = Counter(r["reject_reason"] for r in rows if r["decision"] == "reject")
    return {"queues": per_queue, "annotators": sorted(by_user.values(), key=lambda u: u["annotator"]),
            "reject_reasons": dict(reasons.most_common()), "agreement": agreement(rows),
            "decisions": len(rows), "decisions_last_hour": sum(1 for r in rows if r["decided_at"] > now
                                                               - dt.timedelta(hours=1))}


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() + "Z" if isinstance(v, dt.datetime) else v) for k, v in r.items()}


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps([_plain(r) for r in rows], ensure_ascii=False, indent=1)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in _plain(r).items()})
    return buf.getvalue()


def export_to_run(engine: sa.Engine, run_dir: str) -> dict[str, int]:
    """Append every decision not yet in RUN/review/reviews (review ids make this idempotent)."""
    rows = all_decisions(engine)
    out = []
    for r in rows:
        d = {k: r[k] for k in EXPORT_COLUMNS}
        d["decided_at"] = r["decided_at"].replace(tzinfo=dt.UTC)
        d["origin"] = "review_app"
        out.append(d)
    new = append_reviews(run_dir, out) if out else 0
    return {"decisions": len(rows), "new": new}
