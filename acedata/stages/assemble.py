"""Assemble: pairs + instructions + images -> LCU training shards (DESIGN.md §3, §6).

Rows made:
- a single-turn row for every labelled pair (one per accepted instruction variant, or one
  chosen variant with `instruction_variants: one`);
- a multi-turn row for every pair that has earlier CUs: a synthesis chain (`parent_pair_id`)
  or a path through its mining set (A->B->C), up to `max_history` history CUs;
- a text-to-image row (no inputs) for every caption instruction (`pair_id` = "t2i:"+image_id).

Every pair ends in a row or in quarantine (`missing_image`, `no_instruction`, `bad_indicator`);
so do captions and instructions whose pair does not exist (`orphan_instruction`).

Human reviews (the run's `review/reviews` table, or `inputs: {reviews: PATH}`; `reviews: false`
ignores them) decide first: a pair's final decision replaces all its machine variants with the
reviewed text (`instruction_method` `human_edit` / `human_accept`; indicators checked like any
instruction), or sends it to quarantine (`review_rejected` with the reason code, `review_stale`).
A rejected pair is unusable, so no multi-turn chain passes through it. See acedata/review/decisions.py.

Planning runs on workers, in waves (acedata/assemble/waves.py): the driver holds bucket numbers
and counts, never rows, so a run of 10^9 pairs plans on a normal head node. Joins by pair id
and image id are hash shuffles; chains are bounded join rounds; the train/validation split keeps
connected images together (no image in both splits) through distributed connected components;
the seeded global shuffle is a range partition of a hash of the sample id, so reading the
shards in manifest order yields the shuffled dataset; image bytes reach the output units by a
join (acedata/assemble/fetch.py), each image row group read once. acedata/assemble/reference.py is the
single-process planner the distributed one is tested against.
"""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar

import pyarrow as pa

from acedata import shards, shuffle
from acedata.assemble import chains, fetch, join, rows, scan, split
from acedata.assemble.config import AssembleConfig
from acedata.assemble.records import SPLITS
from acedata.assemble.waves import Waves
from acedata.review.decisions import find_tables as find_reviews
from acedata.review.decisions import tables_digest
from acedata.schemas import QUARANTINE, schema_for
from acedata.stage import Stage, UnitResult, WorkUnit, register

__all__ = ["Assemble", "AssembleConfig"]

SCRATCH = "_scratch"
MADE = ("single_turn", "multi_turn", "t2i")
# counts that only steer the waves; finish drops them from the summary
_INTERNAL = ("asm_samples", "asm_frontier", "asm_unsettled", "asm_edges", "image_requests", "images_missing",
             "quarantine_planned", *(f"planned_{k}" for k in (*MADE, *SPLITS)),
             *(f"scan_{k}" for k in scan.INPUTS))


@register
class Assemble(Stage):
    kind = "assemble"
    Config = AssembleConfig
    version = 3  # 3: image bytes by the fetch waves (same rows; scratch of an older partial run is not reusable)
    outputs: ClassVar[dict[str, pa.Schema]] = {"lcu": schema_for("lcu"), "lcu_validation": schema_for("lcu"),
                                               "quarantine": QUARANTINE}

    def review_tables(self) -> list[str]:
        """The reviews tables this assembly applies: inputs.reviews, else the run's own table."""
        return find_reviews(self.ctx.run_dir, self.ctx.inputs.get("reviews")) if self.config.reviews else []

    def input_digest(self) -> dict[str, Any]:
        # new or changed reviews must rerun assembly even though no config changed
        digest = tables_digest(self.review_tables())
        return {"reviews": digest} if digest else {}

    def scratch(self) -> str:
        return posixpath.join(self.ctx.stage_dir, SCRATCH)

    # --- driver: waves --------------------------------------------------------------------

    def plan(self) -> list[WorkUnit]:
        tables = {"images": self.ctx.input("images"), "pairs": self.ctx.input("pairs"),
                  "instructions": self.ctx.input("instructions"), "reviews": self.review_tables()}
        self._waves = Waves(self.config, tables)
        return self._waves.first()

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        return self._waves.next(counts)

    # --- workers --------------------------------------------------------------------------

    def process(self, unit: WorkUnit) -> UnitResult:
        p, c, s = unit.payload, self.config, self.scratch()
        op = p["op"]
        if op == "scan":
            return UnitResult({}, scan.scan(p, s, p["n_pair"], p["n_img"], unit.id))
        if op == "images":
            return UnitResult({}, scan.answer(p["bucket"], s, p["n_pair"], unit.id))
        if op == "join":
            q, counts = join.join(p["bucket"], s, c, p["n_img"], p["n_chain"], p["n_edge"], unit.id)
            return UnitResult({"quarantine": q}, counts)
        if op == "chain":
            return UnitResult({}, chains.chain_round(p["round"], p["bucket"], s, c, p["n_img"], p["n_chain"], unit.id))
        if op == "star":
            return UnitResult({}, split.star_round(p["round"], p["large"], p["bucket"], s, p["n_edge"], unit.id))
        if op == "components":
            return UnitResult({}, split.components(p["n_edge"], p["n_img"], s, unit.id))
        if op == "rebucket":
            return UnitResult({}, split.rebucket(p["round"], p["bucket"], s, p["n_img"], unit.id))
        if op == "label":
            return UnitResult({}, split.label(p["bucket"], s, c, p["final_edges"], p["n_out"], p["n_img"], unit.id))
        if op == "locate":
            return UnitResult({}, fetch.locate(p["bucket"], s, p["shard_offsets"], unit.id))
        if op == "read":
            return UnitResult({}, fetch.read(p["bucket"], p["uri"], s, p["splits"], unit.id))
        if op == "build":
            data = fetch.fetched(s, p["split"], p["bucket"])
            table, counts = rows.build(split.out_dir(s, p["split"]), p["bucket"], data)
            return UnitResult({SPLITS[p["split"]]: table}, counts)
        return UnitResult({}, {})

    # --- driver: finish -------------------------------------------------------------------

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        made = {t: shards.count_rows(self.ctx.out(t)) for t in SPLITS.values()}
        quarantined = shards.count_rows(self.ctx.out("quarantine"))
        planned = {k: counts.get(f"planned_{k}", 0) for k in MADE}
        built = {k: counts.get(k, 0) for k in MADE}
        if built != planned or quarantined != counts.get("quarantine_planned", 0):
            raise RuntimeError(f"assemble lost rows: planned {planned} + {counts.get('quarantine_planned', 0)} "
                               f"quarantined, built {built} + {quarantined}")
        if sum(built.values()) != sum(made.values()) or \
                any(made[SPLITS[k]] != counts.get(f"planned_{k}", 0) for k in SPLITS):
            raise RuntimeError(f"assemble: {built} rows built, tables hold {made}")
        for k in _INTERNAL:
            counts.pop(k, None)
        counts.update(made, quarantine=quarantined)
        counts.setdefault("pairs_in", 0)
        counts.setdefault("pairs_labelled", 0)
        shuffle.delete(self.scratch())
        extra: dict[str, Any] = {}
        if self.config.dataset_card:
            from acedata.datacard import write_card

            extra["dataset_card"] = write_card(self.ctx.stage_dir, self.ctx.run_dir, self.config, counts)
        return extra
