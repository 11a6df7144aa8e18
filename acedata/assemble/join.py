"""Wave 2 (`join`, one unit per pair bucket): pairs x instructions x reviews x image answers.

A unit sees every row of its pair ids, keeps the first copy of each pair and of each
(pair, variant) instruction, decides each pair (acedata/assemble/decide.py), writes the
quarantine rows itself, and sends on what later waves need:

- single-turn and caption samples, keyed by their first image (for the split);
- for chains: each usable pair's record under `p:<pair id>` and, for mined pairs, under its
  set and target image (`s:<set>:<image>`); plus the first frontier item of every pair that
  may have history, keyed where its predecessor's candidates meet;
- the image edges of usable pairs (for the split's connected components).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from typing import Any

import pyarrow as pa

from acedata import shuffle
from acedata.assemble.config import AssembleConfig
from acedata.assemble.decide import Decided, decide
from acedata.assemble.records import (
    EDGES,
    IMAGE_ANSWERS,
    INSTR_ROWS,
    PAIR_COLUMNS,
    PAIR_ROWS,
    REVIEW_ROWS,
    caption_sample,
    choose,
    make_sample,
    meta,
    mined,
    pair_record,
    predecessor_key,
    records,
    sample_table,
    set_key,
)
from acedata.review.decisions import Reviews
from acedata.schemas import QUARANTINE


def first_copies(t: pa.Table, key_cols: list[str], keep: list[str]) -> dict[tuple, dict[str, Any]]:
    """key -> the row with the smallest input order (`src`, `row`): the first table, shard and row win."""
    best: dict[tuple, tuple[tuple[int, int], dict[str, Any]]] = {}
    for r in t.to_pylist():
        k, order = tuple(r[c] for c in key_cols), (r["src"], r["row"])
        if k not in best or order < best[k][0]:
            best[k] = (order, {c: r[c] for c in keep})
    return {k: v for k, (_, v) in best.items()}


def read_inputs(scratch: str, b: int) -> tuple[dict, dict, Reviews, dict[str, list]]:
    """This bucket's pairs, instructions (pair -> variant -> row), reviews and found image sizes."""
    pairs = {k[0]: r for k, r in first_copies(shuffle.read_bucket(_d(scratch, "pairs"), b, schema=PAIR_ROWS),
                                               ["pair_id"], PAIR_COLUMNS).items()}
    instr: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    t = shuffle.read_bucket(_d(scratch, "instr"), b, schema=INSTR_ROWS)
    for (pid, v), r in sorted(first_copies(t, ["pair_id", "variant"], INSTR_ROWS.names[3:]).items()):
        instr[pid][int(v)] = r
    reviews = Reviews(shuffle.read_bucket(_d(scratch, "reviews"), b, schema=REVIEW_ROWS).drop_columns(["key"]))
    ans = shuffle.read_bucket(_d(scratch, "imgans"), b, schema=IMAGE_ANSWERS).to_pylist()
    sizes = {a["image_id"]: [a["width"], a["height"]] for a in ans if a["found"]}
    return pairs, dict(instr), reviews, sizes


def join(b: int, scratch: str, c: AssembleConfig, n_img: int, n_chain: int, n_edge: int,
         writer: str) -> tuple[pa.Table, dict]:
    """Decide one pair bucket; returns its quarantine rows and counts."""
    pairs, instr, reviews, sizes = read_inputs(scratch, b)
    metas = {pid: meta(r) for pid, r in pairs.items()}
    d = decide(metas, instr, reviews, sizes.__contains__, c.include_t2i)
    recs = {pid: pair_record(pairs[pid], d.ok[pid], d.instr[pid], sizes) for pid in sorted(d.ok)}
    samples = _samples(d, recs, sizes, c)
    shuffle.write_buckets(sample_table(samples), "key", n_img, _d(scratch, "samples"), writer)
    counts = {"pairs_in": len(pairs), "pairs_labelled": len(d.ok), "quarantine_planned": len(d.quarantine),
              "asm_samples": len(samples), "asm_frontier": 0}
    if c.multi_turn and c.max_history > 0:
        counts["asm_frontier"] = _chain_start(recs, scratch, n_chain, writer)
    if c.validation_fraction > 0:  # the split's image graph: only usable pairs' images can meet
        edges = _edges(recs)
        shuffle.write_buckets(edges, "key", n_edge, _d(scratch, "edges-0000"), writer)
        counts["asm_edges"] = edges.num_rows
    if reviews:
        counts.update(reviews.summary())
    return pa.Table.from_pylist(d.quarantine, QUARANTINE), counts


def _samples(d: Decided, recs: dict[str, dict], sizes: dict[str, list], c: AssembleConfig) -> list[dict[str, Any]]:
    one = c.instruction_variants == "one"
    out = [make_sample([rec], [v]) for pid, rec in recs.items() for v in choose(rec["ok"], pid, "variant", one, c.seed)]
    for pid in sorted(d.captions):
        for v in choose(d.captions[pid], pid, "variant", one, c.seed):
            out.append(caption_sample(pid, v, d.instr[pid][v], sizes[pid.split(":", 1)[1]]))
    return out


def _chain_start(recs: dict[str, dict], scratch: str, n_chain: int, writer: str) -> int:
    """Publish usable pairs where chains look them up, and start a frontier item per pair."""
    keys, out, fkeys, items = [], [], [], []
    for pid, rec in recs.items():
        p = meta(rec["pair"])
        keys.append("p:" + pid)
        out.append(rec)
        if mined(p):
            keys.append(set_key(p.set_id, p.target_id))
            out.append(rec)
        k = predecessor_key(p)
        if k is not None:
            fkeys.append(k)
            items.append({"start": rec, "hist": [], "on_path": sorted({*p.input_ids, p.target_id}),
                          "frames": len(p.input_ids)})
    shuffle.write_buckets(records(keys, out), "key", n_chain, _d(scratch, "meta"), writer)
    shuffle.write_buckets(records(fkeys, items), "key", n_chain, _d(scratch, "front-0000"), writer)
    return len(items)


def _edges(recs: dict[str, dict]) -> pa.Table:
    """Both directions of a star over each usable pair's inputs and target (masks are not shared content)."""
    a, b = [], []
    for rec in recs.values():
        p = meta(rec["pair"])
        ids = list(dict.fromkeys([*p.input_ids, p.target_id]))
        for x in ids[1:]:
            a += [ids[0], x]
            b += [x, ids[0]]
    return pa.table({"key": a, "nbr": b}, schema=EDGES)


def _d(scratch: str, name: str) -> str:
    return posixpath.join(scratch, name)
