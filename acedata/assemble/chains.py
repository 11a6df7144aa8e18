"""Chain rounds: multi-turn history, one CU further back per wave, at most `max_history` waves.

The history of a pair is a walk back from it (acedata.lcu.ChainIndex is the in-memory rule):
to its synthesis parent (`parent_pair_id`, whose target must be the pair's source), or, for a
mined pair, to a pair of the same set ending at the pair's source, chosen by a seeded hash of
(start pair, current pair) among those whose source is not yet on the path. Every candidate
of one step therefore meets under one key — `p:<parent id>` or `s:<set>:<image>` — so a round
is a join of frontier items with the pair records published under that key (join.py). A
round's unit reads one bucket of both, takes one step for each item, and either passes the
item on (keyed for its next step) or finishes it as a sample. The walk is bounded by
`max_history`, so the rounds are too; the driver sees only each round's count of items.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from acedata import shuffle
from acedata.assemble.config import AssembleConfig
from acedata.assemble.records import (
    RECORDS,
    choose,
    make_sample,
    meta,
    predecessor_key,
    records,
    sample_table,
)
from acedata.lcu import stable_hash


def front_dir(scratch: str, r: int) -> str:
    return posixpath.join(scratch, f"front-{r:04d}")


def step(item: dict[str, Any], key: str, by_key: dict[str, list[dict]], seed: int,
         max_frames: int) -> dict[str, Any] | None:
    """The record of the CU before the item's oldest one, or None where its history ends."""
    cur = meta((item["hist"][-1] if item["hist"] else item["start"])["pair"])
    on_path = set(item["on_path"])
    if key.startswith("p:"):
        found = by_key.get(key, [])  # only usable pairs are published
        prev = found[0] if found else None
        if prev is not None and (prev["pair"]["target_id"] != cur.source_id or prev["pair"]["source_id"] in on_path):
            prev = None
    else:
        options = [r for r in by_key.get(key, []) if r["pair"]["source_id"] not in on_path]
        salt = item["start"]["pair"]["pair_id"]
        prev = options[stable_hash(seed, salt, cur.pair_id) % len(options)] if options else None
    if prev is None or item["frames"] + len(meta(prev["pair"]).input_ids) > max_frames:
        return None
    return prev


def chain_round(r: int, b: int, scratch: str, c: AssembleConfig, n_img: int, n_chain: int,
                writer: str) -> dict[str, int]:
    """One step back for every frontier item of this bucket."""
    front = shuffle.read_bucket(front_dir(scratch, r), b, schema=RECORDS)
    pub = shuffle.read_bucket(posixpath.join(scratch, "meta"), b, schema=RECORDS)
    pub = pub.filter(pc.is_in(pub.column("key"), value_set=pa.array(sorted(set(front.column("key").to_pylist())),
                                                                    pa.string())))  # decode only what is asked
    by_key: dict[str, list[dict]] = defaultdict(list)
    for k, rec in zip(pub.column("key").to_pylist(), pub.column("rec").to_pylist()):
        by_key[k].append(json.loads(rec))
    for v in by_key.values():
        v.sort(key=lambda rec: rec["pair"]["pair_id"])
    moving: tuple[list, list] = ([], [])
    done: list[dict[str, Any]] = []
    for k, text in zip(front.column("key").to_pylist(), front.column("rec").to_pylist()):
        item = json.loads(text)
        prev = step(item, k, by_key, c.seed, c.max_condition_frames)
        if prev is not None:
            p = meta(prev["pair"])
            item["hist"].append(prev)
            item["on_path"] = sorted({*item["on_path"], *p.input_ids})
            item["frames"] += len(p.input_ids)
            nxt = predecessor_key(p)
            if len(item["hist"]) < c.max_history and nxt is not None:
                moving[0].append(nxt)
                moving[1].append(item)
                continue
        if item["hist"]:
            done.append(finished(item, c))
    shuffle.write_buckets(records(*moving), "key", n_chain, front_dir(scratch, r + 1), writer)
    shuffle.write_buckets(sample_table(done), "key", n_img, posixpath.join(scratch, "samples"), writer)
    return {"asm_frontier": len(moving[1]), "asm_samples": len(done)}


def finished(item: dict[str, Any], c: AssembleConfig) -> dict[str, Any]:
    """The multi-turn sample of a walk: history oldest first, each CU's variant chosen per start pair."""
    chain = [*item["hist"][::-1], item["start"]]
    start = item["start"]["pair"]["pair_id"]
    one = c.instruction_variants == "one"
    variants = [choose(rec["ok"], rec["pair"]["pair_id"], f"turn:{start}", one, c.seed)[0] for rec in chain]
    return make_sample(chain, variants)
