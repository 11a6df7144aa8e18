"""The single-process reference planner: every pair, instruction and image size in memory.

This is how assemble planned before it ran in waves, kept as the specification the
distributed planner is tested against (tests/test_assemble_plan.py) on small data: the
same per-pair decisions (decide.py), then chains with the in-memory `ChainIndex`, the
split with a global union-find (`group_roots`) and a global sort for the shuffle. It reads
whole tables into memory, so it is for tests and debugging, not for runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from acedata import shards
from acedata.assemble.config import AssembleConfig
from acedata.assemble.decide import decide
from acedata.assemble.records import (
    INSTR_COLUMNS,
    PAIR_COLUMNS,
    SPLITS,
    caption_sample,
    choose,
    kind_of,
    make_sample,
    meta,
    pair_record,
    sample_images,
    shuffle_hash,
    split_of,
)
from acedata.assemble.rows import build_row
from acedata.image_index import ImageReader
from acedata.lcu import ChainIndex
from acedata.review.decisions import Reviews
from acedata.unionfind import group_roots


@dataclass
class Plan:
    samples: dict[str, list[dict[str, Any]]]  # split -> samples in shuffled order
    quarantine: list[dict[str, Any]]
    counts: dict[str, int]


def plan(c: AssembleConfig, images: list[str], pairs: list[str], instructions: list[str],
         reviews: list[str]) -> Plan:
    sizes = ImageReader(images).sizes()
    pair_rows: dict[str, dict[str, Any]] = {}
    for t in pairs:
        for r in shards.read_table(t, columns=PAIR_COLUMNS).to_pylist():
            pair_rows.setdefault(r["pair_id"], r)
    instr: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for t in instructions:
        for r in shards.read_table(t, columns=INSTR_COLUMNS).to_pylist():
            instr[r["pair_id"]].setdefault(int(r["variant"]), r)
    rev = Reviews.load(reviews)
    metas = {pid: meta(r) for pid, r in pair_rows.items()}
    d = decide(metas, dict(instr), rev, sizes.__contains__, c.include_t2i)
    recs = {pid: pair_record(pair_rows[pid], d.ok[pid], d.instr[pid], sizes) for pid in sorted(d.ok)}
    one = c.instruction_variants == "one"
    samples = [make_sample([rec], [v]) for pid, rec in recs.items() for v in choose(rec["ok"], pid, "variant", one, c.seed)]
    if c.multi_turn and c.max_history > 0:
        index = ChainIndex(metas, d.ok.__contains__, seed=c.seed)
        for pid in recs:
            hist = index.history(pid, c.max_history, c.max_condition_frames)
            if hist:
                chain = [recs[q] for q in [*hist, pid]]
                samples.append(make_sample(chain, [choose(r["ok"], r["pair"]["pair_id"], f"turn:{pid}", one, c.seed)[0]
                                                   for r in chain]))
    for pid in sorted(d.captions):
        for v in choose(d.captions[pid], pid, "variant", one, c.seed):
            samples.append(caption_sample(pid, v, d.instr[pid][v], sizes[pid.split(":", 1)[1]]))
    roots = group_roots(sample_images(s) for s in samples)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for s in samples:
        out[split_of(roots[sample_images(s)[0]], c.validation_fraction, c.seed)].append(s)
    for part in out.values():
        part.sort(key=lambda s: (shuffle_hash(c.seed, s["sample_id"]), s["sample_id"]))
    counts = {k: sum(kind_of(s) == k for s in samples) for k in ("single_turn", "multi_turn", "t2i")}
    counts |= {"pairs_in": len(pair_rows), "pairs_labelled": len(d.ok), "quarantine": len(d.quarantine)}
    if rev:
        counts |= rev.summary()
    return Plan(out, d.quarantine, counts)


def rows(p: Plan, images: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The LCU rows of a reference plan, per output table, in order."""
    reader = ImageReader(images)
    out = {}
    for split, samples in p.samples.items():
        ids = {i for s in samples for i in sample_images(s)}
        ids |= {q["mask_id"] for s in samples for q in s["pairs"].values() if q["mask_id"]}
        data = reader.image_bytes(sorted(ids))
        out[SPLITS[split]] = [build_row(s, data) for s in samples]
    return out
