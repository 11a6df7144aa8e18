"""LCU rows from sample records (workers), and the last wave: one output unit per shuffle bucket.

A sample record carries everything but image bytes (its pairs' rows, its instruction rows,
the target size); the fetch waves (fetch.py) bring the unit the bytes of all its samples'
images, and it writes its rows in shuffle-hash order.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from acedata import shuffle
from acedata.assemble.records import ORDERED, kind_of
from acedata.images import image_cell
from acedata.lcu import IndicatorError, renumber_lcu
from acedata.schemas import LCU


def build(bucket_root: str, b: int, data: dict[str, bytes]) -> tuple[pa.Table, dict[str, int]]:
    """Rows of one output bucket, sorted by (shuffle hash, sample_id), from its images' bytes
    (fetch.py brings them); counts per kind."""
    t = shuffle.read_bucket(bucket_root, b, schema=ORDERED)
    order = sorted(zip(t.column("h").to_pylist(), t.column("sample_id").to_pylist(), t.column("rec").to_pylist()))
    samples = [json.loads(rec) for _, _, rec in order]
    counts = {"single_turn": 0, "multi_turn": 0, "t2i": 0}
    for s in samples:
        counts[kind_of(s)] += 1
    return pa.Table.from_pylist([build_row(s, data) for s in samples], LCU), counts


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


def build_row(s: dict[str, Any], data: dict[str, bytes]) -> dict[str, Any]:
    """One LCU row from a sample record (history oldest first, current last) and its image bytes."""
    texts = [s["instructions"][q][str(v)] for q, v in zip(s["chain"], s["variants"])]
    current = texts[-1]
    if "t2i" in s:
        w, h = s["size"][:2]
        return {
            "sample_id": s["sample_id"], "task": "text_to_image", "subtask": current["method"] or "caption",
            "instruction": current["instruction"], "inputs": [], "target": image_cell(data[s["t2i"]]),
            "history": [], "num_turns": 1, "width": w, "height": h,
            "instruction_method": current["method"], "pair_id": s["chain"][0], "source_ids": [],
            "scores": [],
            "provenance": json.dumps({"image_id": s["t2i"], "instruction": _instr_prov(current, s["variants"][0])}),
        }
    cus = [s["pairs"][q] for q in s["chain"]]
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
    w, h = s["size"][:2]
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
