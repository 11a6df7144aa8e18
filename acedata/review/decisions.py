"""What a pair's human review means for the data flow (assemble, the captioner export).

One rule, used by every consumer: per pair, the final decision (`table.final_decisions`:
the latest non-skip decision; overlap items reviewed by two annotators are settled by the
later one, and `conflicts` counts such pairs so the dataset card shows them) turns into

- ``edit``   -> the corrected text, instruction method ``human_edit``;
- ``accept`` -> the accepted candidate's text, method ``human_accept`` (the text the
  annotator saw, stored in the review row; when the row has none, the text of the chosen
  variant in the instructions table; neither -> the review is ``review_stale``);
- ``reject`` -> the pair leaves the data, reason ``review_rejected``, detail = reason code.

A reviewed text replaces every machine variant of its pair (the human picked or wrote the
one right instruction), so a reviewed pair yields one instruction row, variant ``HUMAN_VARIANT``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from acedata import shards
from acedata.errors import UserError
from acedata.review.table import final_decisions
from acedata.schemas import REVIEWS, conform

HUMAN_VARIANT = -1  # variant number of a reviewed text (machine variants are >= 0)
HUMAN_METHODS = {"edit": "human_edit", "accept": "human_accept"}


@dataclass
class Outcome:
    """A pair's reviewed fate: a text to use, a rejection, or a review that cannot be applied."""

    kind: str  # "text" | "reject" | "stale"
    text: str | None = None
    method: str | None = None
    detail: str | None = None
    review: dict[str, Any] | None = None  # provenance of the deciding review

    def instruction_row(self, pair_id: str) -> dict[str, Any]:
        """The reviewed text as an instructions-table row (variant HUMAN_VARIANT)."""
        return {"pair_id": pair_id, "variant": HUMAN_VARIANT, "instruction": self.text, "method": self.method,
                "model": None, "provenance": json.dumps({"review": self.review}, sort_keys=True)}


def find_tables(run_dir: str, override: list[str] | None) -> list[str]:
    """The reviews tables a consumer applies: `override` (checked), else the run's own table if any."""
    from acedata.review.table import reviews_dir

    if override:
        for p in override:
            if shards.read_manifest(p) is None:
                raise UserError(f"inputs.reviews: {p} is not a reviews table (no {shards.MANIFEST}); "
                                "point it at RUN/review/reviews")
        return override
    d = reviews_dir(run_dir)
    return [d] if shards.read_manifest(d) is not None else []


def read_tables(paths: list[str]) -> pa.Table:
    """Every review row of the given reviews tables (table folders with a manifest)."""
    parts = []
    for p in paths:
        if shards.read_manifest(p) is None:
            raise UserError(f"{p}: not a reviews table (no {shards.MANIFEST}); point inputs.reviews at RUN/review/reviews")
        parts.append(conform(shards.read_table(p), REVIEWS))
    return pa.concat_tables(parts) if parts else REVIEWS.empty_table()


def tables_digest(paths: list[str]) -> str | None:
    """A digest of the reviews tables' content (from their manifests' shard sha256s), None if none."""
    h = hashlib.sha256()
    found = False
    for p in paths:
        m = shards.read_manifest(p)
        if m is None:
            continue
        found = True
        for s in sorted(m.get("shards", []), key=lambda s: s.get("sha256", "")):
            h.update(f"{s.get('sha256')}:{s.get('rows')}\n".encode())
    return h.hexdigest()[:16] if found else None


def _provenance(r: dict[str, Any]) -> dict[str, Any]:
    return {"review_id": r["review_id"], "decision": r["decision"], "annotator": r["annotator"],
            "decided_at": r["decided_at"].isoformat(), "origin": r["origin"], "chosen_variant": r["chosen_variant"],
            "chosen_method": r["chosen_method"], "queue": r["queue"]}


def outcome(decision: dict[str, Any], variants: dict[int, dict[str, Any]] | None) -> Outcome:
    """Turn a pair's final review row into what the data flow does with the pair."""
    prov = _provenance(decision)
    kind = decision["decision"]
    if kind == "reject":
        return Outcome("reject", detail=decision["reject_reason"] or "unspecified", review=prov)
    text = decision["instruction"]
    if kind == "accept" and not text and decision["chosen_variant"] is not None:
        row = (variants or {}).get(int(decision["chosen_variant"]))
        text = row["instruction"] if row else None
    if not text or not text.strip():
        what = f"variant {decision['chosen_variant']}" if kind == "accept" else "corrected text"
        return Outcome("stale", detail=f"{kind} by {decision['annotator']}: {what} not found", review=prov)
    return Outcome("text", text=text.strip(), method=HUMAN_METHODS[kind], review=prov)


def conflicts(reviews: pa.Table) -> int:
    """Pairs whose annotators' latest non-skip decisions disagree (decision or text)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in reviews.to_pylist():
        if r["decision"] == "skip":
            continue
        k = (r["pair_id"], r["annotator"])
        if k not in latest or r["decided_at"] > latest[k]["decided_at"]:
            latest[k] = r
    seen: dict[str, set] = {}
    for (pid, _), r in latest.items():
        key = (r["decision"], (r["instruction"] or "").strip() if r["decision"] != "reject" else r["reject_reason"],
               r["chosen_variant"] if r["decision"] == "accept" and not r["instruction"] else None)
        seen.setdefault(pid, set()).add(key)
    return sum(1 for v in seen.values() if len(v) > 1)


class Reviews:
    """The final decision per pair of one or more reviews tables, and their counts."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.final = final_decisions(table)

    @classmethod
    def load(cls, paths: list[str]) -> Reviews:
        return cls(read_tables(paths))

    def __bool__(self) -> bool:
        return bool(self.final)

    def apply(self, pid: str, rows: dict[int, dict[str, Any]] | None) -> tuple[dict | None, tuple[str, str] | None]:
        """A reviewed pair's instruction rows ({HUMAN_VARIANT: row}), or (None, (reason, detail)) to quarantine."""
        o = outcome(self.final[pid], rows)
        if o.kind == "text":
            return {HUMAN_VARIANT: o.instruction_row(pid)}, None
        return None, ("review_rejected" if o.kind == "reject" else "review_stale", o.detail or "")

    def summary(self) -> dict[str, int]:
        kinds = [r["decision"] for r in self.final.values()]
        return {"reviewed_pairs": len(kinds), "review_accepted": kinds.count("accept"),
                "review_corrected": kinds.count("edit"), "review_rejected": kinds.count("reject"),
                "review_conflicts": conflicts(self.table)}
