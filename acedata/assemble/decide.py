"""Per pair: usable (which instruction variants), or quarantined with a reason.

The one rule both planners apply — the distributed join (each bucket of pair ids) and the
single-process reference (all pairs at once). Reviews decide first (acedata/review/decisions.py):
a final decision replaces the machine variants with the reviewed text, or quarantines the pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from acedata.assemble.records import T2I_PREFIX
from acedata.lcu import PairMeta, local_refs
from acedata.review.decisions import HUMAN_VARIANT, Reviews

Rows = dict[int, dict[str, Any]]  # variant -> instruction row


@dataclass
class Decided:
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    ok: dict[str, list[int]] = field(default_factory=dict)  # usable pair -> its good variants
    captions: dict[str, list[int]] = field(default_factory=dict)  # "t2i:<image>" -> variants
    instr: dict[str, Rows] = field(default_factory=dict)  # rows to use (reviewed texts applied)

    def bad(self, pid: str, reason: str, detail: str) -> None:
        self.quarantine.append(
            {"source_uri": f"pair:{pid}", "stage": "assemble", "reason": reason, "detail": detail, "item_id": pid})


def decide(pairs: dict[str, PairMeta], instr: dict[str, Rows], reviews: Reviews, has_image: Callable[[str], bool],
           include_t2i: bool) -> Decided:
    """Decide every pair, caption and review of one partition (keyed by pair id)."""
    d = Decided(instr=dict(instr))
    for pid in sorted(pairs):
        _pair(d, pairs[pid], reviews, has_image)
    for pid in sorted(instr):
        if pid not in pairs:
            _unpaired(d, pid, reviews, has_image, include_t2i)
    for pid in sorted(set(reviews.final) - set(pairs) - set(instr)):
        d.bad(pid, "orphan_review", "a review of a pair no pairs table has")
    return d


def _pair(d: Decided, p: PairMeta, reviews: Reviews, has_image: Callable[[str], bool]) -> None:
    pid = p.pair_id
    missing = [i for i in p.image_ids if not has_image(i)]
    if missing:
        d.bad(pid, "missing_image", f"images not in any images table: {missing[:3]}")
        return
    rows = d.instr.get(pid)
    if pid in reviews.final:
        rows, why = reviews.apply(pid, rows)
        if why:
            d.bad(pid, *why)
            return
        d.instr[pid] = rows
    if not rows:
        d.bad(pid, "no_instruction", "the pair has no instruction row")
        return
    good = []
    for v, row in sorted(rows.items()):
        refs = local_refs(row["instruction"])
        if any(j > len(p.input_ids) for j in refs):
            what = f"{row['method']} text" if v == HUMAN_VARIANT else f"variant {v}"
            d.bad(pid, "bad_indicator", f"{what}: indicators {refs} but {len(p.input_ids)} input(s)")
        else:
            good.append(v)
    if good:
        d.ok[pid] = good


def _unpaired(d: Decided, pid: str, reviews: Reviews, has_image: Callable[[str], bool], include_t2i: bool) -> None:
    """An instruction row whose pair id no pairs table has: a caption, or an orphan."""
    rows = d.instr[pid]
    if not pid.startswith(T2I_PREFIX):
        d.bad(pid, "orphan_instruction", "instruction for a pair no pairs table has")
    elif not include_t2i:
        return
    elif not has_image(pid[len(T2I_PREFIX):]):
        d.bad(pid, "missing_image", "caption for an image no images table has")
    elif pid in reviews.final:  # a reviewed caption: the reviewed text, rejected, or stale
        rows, why = reviews.apply(pid, rows)
        if why or local_refs(rows[HUMAN_VARIANT]["instruction"]):
            d.bad(pid, *(why or ("bad_indicator", "reviewed caption names an input")))
        else:
            d.instr[pid], d.captions[pid] = rows, [HUMAN_VARIANT]
    else:
        d.captions[pid] = sorted(rows)
