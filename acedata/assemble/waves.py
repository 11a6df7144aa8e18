"""Which units assemble runs, wave after wave; the driver keeps only counts and bucket numbers.

    scan     one unit per input shard (pairs, instructions, reviews, images index, duplicates listings)
    images   one unit per image bucket: image requests meet the index rows   (scan.py)
    join     one unit per pair bucket: decide pairs, start chains and split (join.py)
    rounds   chain steps (chains.py) and star rounds (split.py, one unit per edge bucket), side
             by side in the same waves, until no chain moves and the image graph is a star
             forest, then one wave re-buckets it by image (or, when the edges fit one unit,
             one `components` unit instead of the star rounds)
    label    one unit per image bucket: split + shuffle bucket of each sample (split.py)
    locate   one unit per image bucket: the served row of each requested image  (fetch.py)
    read     one unit per image shard: requested images' bytes to output buckets (fetch.py)
    build    one unit per output bucket of each split: the LCU rows          (rows.py)

A resumed run replays `first` and `next` with the committed waves' counts, so it plans
every wave exactly as the interrupted run did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acedata import shards, shuffle
from acedata.assemble import fetch
from acedata.assemble.config import AssembleConfig
from acedata.assemble.scan import shard_payloads
from acedata.stage import WorkUnit

ONE_UNIT_EDGES = 10  # edges per shuffle_rows that one `components` unit takes in memory
MAX_STAR_ROUNDS = 200  # O(log^2 n) rounds suffice; this only stops a bug from looping forever


@dataclass
class Buckets:
    pair: int  # pair-id buckets: pairs, instructions, reviews, image answers
    image: int  # image-id buckets: index rows, requests, edges, samples by first image
    chain: int  # chain-key buckets: published pair records, frontier items
    edge: int  # the split's edge buckets (star rounds): ONE_UNIT_EDGES x shuffle_rows edges each


class Waves:
    def __init__(self, c: AssembleConfig, tables: dict[str, list[str]]) -> None:
        self.c = c
        self.tables = tables
        rows = {k: sum(shards.count_rows(t) for t in v) for k, v in tables.items()}
        per = c.shuffle_rows
        self.n = Buckets(pair=shuffle.bucket_count(rows["pairs"] + rows["instructions"] + rows["reviews"], per),
                         image=shuffle.bucket_count(rows["images"] + 3 * rows["pairs"], per),
                         chain=shuffle.bucket_count(2 * rows["pairs"], per),
                         edge=shuffle.bucket_count(2 * rows["pairs"], ONE_UNIT_EDGES * per))  # ~2 edge rows a pair
        self.phase = "scan"
        self.samples = 0
        self.chain_round: int | None = None  # the frontier round to run next (None: chains done)
        self.star_round: int | None = None  # the edge round to run next (None: split settled)
        self.star_in_one = False  # the split's components in one unit, not in rounds
        self.final_edges: int | None = None  # the star forest's round
        self.rebucket: int | None = None  # that round, while its edges are re-bucketed by image
        self.n_out: dict[str, int] = {}

    def _units(self, prefix: str, op: str, count: int, **payload: Any) -> list[WorkUnit]:
        base = {"op": op, "n_pair": self.n.pair, "n_img": self.n.image, "n_chain": self.n.chain, "n_edge": self.n.edge,
                **payload}
        return [WorkUnit(f"{prefix}-{b:05d}", {**base, "bucket": b}) for b in range(count)]

    def first(self) -> list[WorkUnit]:
        units = []
        for what in ("pairs", "instructions", "reviews", "images", "duplicates"):
            for p in shard_payloads(what, self.tables["images" if what == "duplicates" else what]):
                t, s = p["src"] >> 32, p["src"] & 0xFFFFFFFF
                units.append(WorkUnit(f"scan-{what[:5]}-{t:03d}-{s:06d}", {"op": "scan", "n_pair": self.n.pair,
                                                                          "n_img": self.n.image, **p}))
        return units or self._units("scan-none", "noop", 1)

    def next(self, counts: dict[str, int]) -> list[WorkUnit]:
        """The units of the next wave, from the counts of the wave that just committed."""
        self.samples += counts.get("asm_samples", 0)
        if self.phase == "scan":
            self.phase = "images"
            return self._units("images", "images", self.n.image)
        if self.phase == "images":
            self.phase = "join"
            return self._units("join", "join", self.n.pair)
        if self.phase == "join":
            self.phase = "rounds"
            self.chain_round = 0 if counts.get("asm_frontier", 0) else None
            self.star_round = 0 if self.c.validation_fraction > 0 else None
            # edge rows are small (two ids): a unit holds ONE_UNIT_EDGES x shuffle_rows of them
            self.star_in_one = counts.get("asm_edges", 0) <= ONE_UNIT_EDGES * self.c.shuffle_rows
            return self._rounds() or self.next({})
        if self.phase == "rounds":
            self._advance(counts)
            return self._rounds() or self.next({})
        if self.phase == "label-next":
            self.phase = "label"
            return self._units("label", "label", self.n.image, final_edges=self.final_edges, n_out=self._out_sizes())
        if self.phase == "label":
            self.phase = "locate"
            _, offsets = fetch.payloads(self.tables["images"])
            return self._units("locate", "locate", self.n.image, shard_offsets=offsets)
        if self.phase == "locate":
            self.phase = "read"
            reads, _ = fetch.payloads(self.tables["images"])
            return [WorkUnit(f"read-{k:06d}", {"op": "read", "bucket": k, "splits": list(self.n_out), **p})
                    for k, p in enumerate(reads)] or self.next({})
        if self.phase == "read":
            self.phase = "build"
            return [u for split, n in self.n_out.items() for u in self._units(split, "build", n, split=split)]
        return []

    def _rounds(self) -> list[WorkUnit]:
        units = []
        if self.chain_round is not None:
            units += self._units(f"chain-r{self.chain_round:02d}", "chain", self.n.chain, round=self.chain_round)
        if self.rebucket is not None:
            units += self._units("rebucket", "rebucket", self.n.edge, round=self.rebucket)
        elif self.star_round is not None and self.star_in_one:
            units.append(WorkUnit("components-00000", {"op": "components", "n_img": self.n.image, "n_edge": self.n.edge}))
        elif self.star_round is not None:
            if self.star_round >= MAX_STAR_ROUNDS:
                raise RuntimeError(f"assemble: the split's components did not settle in {MAX_STAR_ROUNDS} rounds")
            large = self.star_round % 2 == 0
            units += self._units(f"star-r{self.star_round:03d}", "star", self.n.edge, round=self.star_round,
                                 large=large)
        if not units:
            self.phase = "label-next"
        return units

    def _advance(self, counts: dict[str, int]) -> None:
        if self.chain_round is not None:
            self.chain_round = self.chain_round + 1 if counts.get("asm_frontier", 0) else None
        if self.rebucket is not None:
            self.rebucket = None  # its wave just committed
        elif self.star_round is not None and self.star_in_one:
            self.final_edges, self.star_round = 1, None
        elif self.star_round is not None:
            if self.star_round % 2 == 0 and counts.get("asm_unsettled", 0) == 0:
                self.final_edges, self.star_round = self.star_round, None
                self.rebucket = self.final_edges
            else:
                self.star_round += 1

    def _out_sizes(self) -> dict[str, int]:
        """Output buckets per split: about `rows_per_unit` rows each, at the expected split sizes."""
        val = round(self.samples * self.c.validation_fraction)
        self.n_out = {"train": shuffle.bucket_count(self.samples - val, self.c.rows_per_unit)}
        if self.c.validation_fraction > 0:
            self.n_out["validation"] = shuffle.bucket_count(val, self.c.rows_per_unit)
        return self.n_out
