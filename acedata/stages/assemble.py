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

The driver plans from metadata columns only (ids, sizes, texts): which samples, their chains,
the train/validation split (by connected source images, so no image is a source in both
splits) and a seeded shuffle. Units are contiguous runs of the shuffled order, so reading
the shards in manifest order yields the shuffled dataset, and each unit fetches only the
row groups holding its images.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from acedata import shards
from acedata.config import StageConfig
from acedata.image_index import shared_reader
from acedata.images import image_cell
from acedata.lcu import (
    ChainIndex,
    IndicatorError,
    PairMeta,
    local_refs,
    renumber_lcu,
    stable_hash,
)
from acedata.review.decisions import HUMAN_VARIANT, Reviews, tables_digest
from acedata.review.decisions import find_tables as find_reviews
from acedata.schemas import QUARANTINE, schema_for
from acedata.stage import Stage, UnitResult, WorkUnit, register
from acedata.unionfind import group_roots

T2I_PREFIX = "t2i:"
PLAN_DIR = "_plan"
SPLITS = {"train": "lcu", "validation": "lcu_validation"}


class AssembleConfig(StageConfig):
    max_history: int = Field(3, ge=0)  # m: history CUs per multi-turn row
    multi_turn: bool = True
    instruction_variants: Literal["all", "one"] = "all"  # single-turn rows per pair
    include_t2i: bool = True
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    # rows per work unit: a unit holds its rows' image bytes in memory (~500 x 3 images of a few 100 KB)
    rows_per_unit: int = Field(500, ge=1)
    max_condition_frames: int = Field(9, ge=1, le=9)  # the target's indicator index stays <= 9
    dataset_card: bool = True
    reviews: bool = True  # apply human review decisions when the run (or inputs.reviews) has them


@register
class Assemble(Stage):
    kind = "assemble"
    Config = AssembleConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"lcu": schema_for("lcu"), "lcu_validation": schema_for("lcu"), "quarantine": QUARANTINE}

    # --- driver: plan ---------------------------------------------------------------

    def review_tables(self) -> list[str]:
        """The reviews tables this assembly applies: inputs.reviews, else the run's own table."""
        return find_reviews(self.ctx.run_dir, self.ctx.inputs.get("reviews")) if self.config.reviews else []

    def input_digest(self) -> dict[str, Any]:
        # new or changed reviews must rerun assembly even though no config changed
        digest = tables_digest(self.review_tables())
        return {"reviews": digest} if digest else {}

    def plan(self) -> list[WorkUnit]:
        c: AssembleConfig = self.config
        images = _image_index(self.ctx.input("images"))
        pair_rows = _read_pairs(self.ctx.input("pairs"))
        instr = _read_instructions(self.ctx.input("instructions"))
        reviews = Reviews.load(self.review_tables())
        quarantine: list[dict[str, Any]] = []

        def bad(uri: str, reason: str, detail: str, item: str) -> None:
            quarantine.append(
                {"source_uri": uri, "stage": "assemble", "reason": reason, "detail": detail, "item_id": item}
            )

        pairs = {pid: _meta(r) for pid, r in pair_rows.items()}
        ok_variants: dict[str, list[int]] = {}
        for pid, p in pairs.items():
            missing = [i for i in p.image_ids if i not in images]
            if missing:
                bad(f"pair:{pid}", "missing_image", f"images not in any images table: {missing[:3]}", pid)
                continue
            rows = instr.get(pid)
            if pid in reviews.final:
                rows, why = reviews.apply(pid, rows)
                if why:
                    bad(f"pair:{pid}", *why, pid)
                    continue
                instr[pid] = rows
            if not rows:
                bad(f"pair:{pid}", "no_instruction", "the pair has no instruction row", pid)
                continue
            good = []
            for v, row in sorted(rows.items()):
                refs = local_refs(row["instruction"])
                if any(j > len(p.input_ids) for j in refs):
                    what = f"{row['method']} text" if v == HUMAN_VARIANT else f"variant {v}"
                    bad(f"pair:{pid}", "bad_indicator",
                        f"{what}: indicators {refs} but {len(p.input_ids)} input(s)", pid)
                else:
                    good.append(v)
            if good:
                ok_variants[pid] = good
        captions: dict[str, list[int]] = {}
        for pid, rows in instr.items():
            if pid in pairs:
                continue
            if not pid.startswith(T2I_PREFIX):
                bad(f"pair:{pid}", "orphan_instruction", "instruction for a pair no pairs table has", pid)
            elif not c.include_t2i:
                continue
            elif pid[len(T2I_PREFIX):] not in images:
                bad(f"pair:{pid}", "missing_image", "caption for an image no images table has", pid)
            elif pid in reviews.final:  # a reviewed caption: the reviewed text, rejected, or stale
                rows, why = reviews.apply(pid, rows)
                if why or local_refs(rows[HUMAN_VARIANT]["instruction"]):
                    bad(f"pair:{pid}", *(why or ("bad_indicator", "reviewed caption names an input")), pid)
                else:
                    instr[pid], captions[pid] = rows, [HUMAN_VARIANT]
            else:
                captions[pid] = sorted(rows)
        for pid in sorted(set(reviews.final) - set(pairs) - set(instr)):
            bad(f"pair:{pid}", "orphan_review", "a review of a pair no pairs table has", pid)

        def choose(pid: str, variants: list[int], salt: str) -> list[int]:
            if c.instruction_variants == "all":
                return variants
            return [variants[stable_hash(c.seed, salt, pid) % len(variants)]]

        samples: list[dict[str, Any]] = []
        for pid in sorted(ok_variants):
            for v in choose(pid, ok_variants[pid], "variant"):
                samples.append({"chain": [pid], "variants": [v]})
        multi = 0
        if c.multi_turn and c.max_history > 0:
            index = ChainIndex(pairs, ok_variants.__contains__, seed=c.seed)
            for pid in sorted(ok_variants):
                hist = index.history(pid, c.max_history, c.max_condition_frames)
                if hist:
                    chain = [*hist, pid]
                    variants = [choose(q, ok_variants[q], f"turn:{pid}")[0] for q in chain]
                    samples.append({"chain": chain, "variants": variants})
                    multi += 1
        for pid in sorted(captions):
            for v in choose(pid, captions[pid], "variant"):
                samples.append({"t2i": pid[len(T2I_PREFIX):], "chain": [pid], "variants": [v]})
        for s in samples:
            s["sample_id"] = _sample_id(s)

        _assign_splits(samples, pairs, c.validation_fraction, c.seed)
        units = self._write_units(samples, pairs, pair_rows, instr, images, quarantine)
        self._planned = {
            "single_turn": sum(1 for s in samples if "t2i" not in s and len(s["chain"]) == 1),
            "multi_turn": multi,
            "t2i": sum(1 for s in samples if "t2i" in s),
            "pairs_in": len(pairs),
            "pairs_labelled": len(ok_variants),
            "quarantine": len(quarantine),
            "review": reviews.summary() if reviews else {},
        }
        return units

    def _write_units(self, samples, pairs, pair_rows, instr, images, quarantine) -> list[WorkUnit]:
        c: AssembleConfig = self.config
        fs, stage_dir = shards.resolve(self.ctx.stage_dir)
        plan_dir = posixpath.join(stage_dir, PLAN_DIR)
        fs.create_dir(plan_dir, recursive=True)
        units: list[WorkUnit] = []

        def emit(unit_id: str, body: dict[str, Any]) -> None:
            path = posixpath.join(plan_dir, f"{unit_id}.json")
            shards.write_bytes_atomic(fs, path, json.dumps(body).encode())
            # the payload travels to workers: a URI they resolve themselves, not this fs's bare path
            units.append(WorkUnit(unit_id, {"plan": posixpath.join(self.ctx.stage_dir, PLAN_DIR, f"{unit_id}.json")}))

        for split in SPLITS:
            part = [s for s in samples if s["split"] == split]
            part.sort(key=lambda s: stable_hash(c.seed, "shuffle", s["sample_id"]))  # seeded global shuffle
            for u, start in enumerate(range(0, len(part), c.rows_per_unit)):
                chunk = part[start : start + c.rows_per_unit]
                pids = {q for s in chunk if "t2i" not in s for q in s["chain"]}
                img_ids = {s["t2i"] for s in chunk if "t2i" in s}
                for q in pids:
                    img_ids.update(pairs[q].image_ids)
                emit(
                    f"{split}-{u:05d}",
                    {
                        "split": split,
                        "samples": chunk,
                        "pairs": {q: pair_rows[q] for q in pids},
                        "instructions": _used_instructions(chunk, instr),
                        "images": {i: images[i] for i in img_ids},
                    },
                )
        if quarantine:
            emit("quarantine", {"split": None, "samples": [], "quarantine": quarantine})
        return units

    # --- workers: build rows ------------------------------------------------------------

    def process(self, unit: WorkUnit) -> UnitResult:
        fs, path = shards.resolve(unit.payload["plan"])
        plan = shards.read_json(fs, path)
        quarantine = pa.Table.from_pylist(plan.get("quarantine", []), QUARANTINE)
        if plan["split"] is None:
            return UnitResult({"quarantine": quarantine}, {})
        data = shared_reader(self.ctx.input("images")).image_bytes(plan["images"])
        rows = [build_row(s, plan, data) for s in plan["samples"]]
        counts = {
            "single_turn": sum(1 for s in plan["samples"] if "t2i" not in s and len(s["chain"]) == 1),
            "multi_turn": sum(1 for s in plan["samples"] if len(s["chain"]) > 1),
            "t2i": sum(1 for s in plan["samples"] if "t2i" in s),
        }
        table = SPLITS[plan["split"]]
        return UnitResult({table: pa.Table.from_pylist(rows, self.outputs[table])}, counts)

    # --- driver: finish -----------------------------------------------------------------

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        rows = {t: shards.count_rows(self.ctx.out(t)) for t in SPLITS.values()}
        counts.update(rows)
        counts["quarantine"] = shards.count_rows(self.ctx.out("quarantine"))
        planned = getattr(self, "_planned", None)
        if planned is not None:
            made = {k: counts.get(k, 0) for k in ("single_turn", "multi_turn", "t2i")}
            if made != {k: planned[k] for k in made} or counts["quarantine"] != planned["quarantine"]:
                raise RuntimeError(f"assemble lost rows: planned {planned}, made {made} + {counts['quarantine']} q")
            if sum(made.values()) != sum(rows.values()):
                raise RuntimeError(f"assemble: {sum(made.values())} rows built, tables hold {rows}")
            counts.update(pairs_in=planned["pairs_in"], pairs_labelled=planned["pairs_labelled"], **planned["review"])
        fs, stage_dir = shards.resolve(self.ctx.stage_dir)
        if shards.exists(fs, posixpath.join(stage_dir, PLAN_DIR)):  # plan() rewrites it whenever it is needed
            fs.delete_dir(posixpath.join(stage_dir, PLAN_DIR))
        extra: dict[str, Any] = {}
        if self.config.dataset_card:
            from acedata.datacard import write_card

            extra["dataset_card"] = write_card(self.ctx.stage_dir, self.ctx.run_dir, self.config, counts)
        return extra


# --- planning helpers -------------------------------------------------------------------


def _image_index(tables: list[str]) -> dict[str, list]:
    """image_id -> [width, height], from the tables' image index (first table wins)."""
    return shared_reader(tables).sizes()


_PAIR_COLUMNS = [
    "pair_id", "source_id", "target_id", "task", "subtask", "mask_id", "extra_input_ids", "set_id",
    "sim_pass1", "score_pass2", "scores", "parent_pair_id", "provenance",
]


def _read_pairs(tables: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in tables:
        for r in shards.read_table(t, columns=_PAIR_COLUMNS).to_pylist():
            out.setdefault(r["pair_id"], r)
    return out


def _read_instructions(tables: list[str]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    cols = ["pair_id", "variant", "instruction", "method", "model", "provenance"]
    for t in tables:
        for r in shards.read_table(t, columns=cols).to_pylist():
            out[r["pair_id"]].setdefault(int(r["variant"]), r)
    return dict(out)


def _used_instructions(chunk: list[dict[str, Any]], instr: dict) -> dict[str, dict[str, Any]]:
    used: dict[str, dict[str, Any]] = defaultdict(dict)
    for s in chunk:
        for q, v in zip(s["chain"], s["variants"]):
            used[q][str(v)] = instr[q][v]
    return dict(used)


def _meta(r: dict[str, Any]) -> PairMeta:
    return PairMeta(
        r["pair_id"], r["source_id"], r["target_id"], r["task"], r["subtask"], r["mask_id"],
        list(r["extra_input_ids"] or []), r["set_id"], r["parent_pair_id"],
    )


def _sample_id(s: dict[str, Any]) -> str:
    key = "|".join(f"{q}#{v}" for q, v in zip(s["chain"], s["variants"]))
    return stable_hash(key, "sample").to_bytes(8, "big").hex() + stable_hash("sample", key).to_bytes(8, "big").hex()


def sample_images(s: dict[str, Any], pairs: dict[str, PairMeta]) -> list[str]:
    """Every input and target image of a sample (masks excluded)."""
    if "t2i" in s:
        return [s["t2i"]]
    out: list[str] = []
    for q in s["chain"]:
        out.extend([*pairs[q].input_ids, pairs[q].target_id])
    return out


def _assign_splits(samples: list[dict[str, Any]], pairs: dict[str, PairMeta], fraction: float, seed: int) -> None:
    """Split by connected images: samples sharing any input/target image land in one split."""
    if fraction <= 0:
        for s in samples:
            s["split"] = "train"
        return
    roots = group_roots(sample_images(s, pairs) for s in samples)
    cut = int(fraction * (1 << 32))
    for s in samples:
        root = roots[sample_images(s, pairs)[0]]
        s["split"] = "validation" if stable_hash(seed, "split", root) % (1 << 32) < cut else "train"


# --- row building (workers) ----------------------------------------------------------------


def _cu_inputs(p: dict[str, Any], data: dict[str, bytes]) -> list[dict[str, Any]]:
    first = {"image": image_cell(data[p["source_id"]]), "mask": image_cell(data[p["mask_id"]]) if p["mask_id"] else None}
    return [first, *({"image": image_cell(data[i]), "mask": None} for i in p["extra_input_ids"] or [])]


def _scores(p: dict[str, Any]) -> list[dict[str, Any]]:
    out = [dict(s) for s in p["scores"] or []]
    for name in ("sim_pass1", "score_pass2"):
        if p[name] is not None:
            out.append({"name": name, "value": p[name]})
    return out


def _json_or_text(s: str | None) -> Any:
    if s is None:
        return None
    try:
        return json.loads(s)
    except ValueError:
        return s


def build_row(s: dict[str, Any], plan: dict[str, Any], data: dict[str, bytes]) -> dict[str, Any]:
    """One LCU row from a planned sample (history oldest first, current last)."""
    texts = [plan["instructions"][q][str(v)] for q, v in zip(s["chain"], s["variants"])]
    current = texts[-1]
    if "t2i" in s:
        w, h = plan["images"][s["t2i"]][:2]
        return {
            "sample_id": s["sample_id"], "task": "text_to_image", "subtask": current["method"] or "caption",
            "instruction": current["instruction"], "inputs": [], "target": image_cell(data[s["t2i"]]),
            "history": [], "num_turns": 1, "width": w, "height": h,
            "instruction_method": current["method"], "pair_id": s["chain"][0], "source_ids": [],
            "scores": [],
            "provenance": json.dumps({"image_id": s["t2i"], "instruction": _instr_prov(current, s["variants"][0])}),
        }
    cus = [plan["pairs"][q] for q in s["chain"]]
    counts = [1 + len(p["extra_input_ids"] or []) for p in cus]
    try:
        renumbered = renumber_lcu([t["instruction"] for t in texts], counts)
    except IndicatorError as e:  # planning checked every variant; reaching here means the plan is stale
        raise RuntimeError(f"sample {s['sample_id']}: {e}") from None
    history = [
        {"instruction": text, "inputs": _cu_inputs(p, data), "target": image_cell(data[p["target_id"]])}
        for p, text in zip(cus[:-1], renumbered[:-1])
    ]
    p = cus[-1]
    w, h = plan["images"][p["target_id"]][:2]
    return {
        "sample_id": s["sample_id"],
        "task": p["task"],
        "subtask": p["subtask"],
        "instruction": renumbered[-1],
        "inputs": _cu_inputs(p, data),
        "target": image_cell(data[p["target_id"]]),
        "history": history,
        "num_turns": len(cus),
        "width": w,
        "height": h,
        "instruction_method": current["method"],
        "pair_id": p["pair_id"],
        "source_ids": [i for q in cus for i in [q["source_id"], *(q["extra_input_ids"] or [])]],
        "scores": _scores(p),
        "provenance": json.dumps(
            {
                "pair": _json_or_text(p["provenance"]),
                "instruction": _instr_prov(current, s["variants"][-1]),
                "chain": s["chain"],
                "history_instructions": [_instr_prov(t, v) for t, v in zip(texts[:-1], s["variants"][:-1])],
            }
        ),
    }


def _instr_prov(row: dict[str, Any], variant: int) -> dict[str, Any]:
    return {"variant": variant, "method": row["method"], "model": row["model"],
            "provenance": _json_or_text(row.get("provenance"))}
