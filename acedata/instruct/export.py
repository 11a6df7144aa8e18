"""Captioner training data: curated (pair, instruction) records as chat JSONL.

The paper fine-tuned InternVL2-26B on ~800k curated instructions as an "instruction
captioner". This writes such records: the pair's images as files under `images/`
(named by image_id, written once), referenced by path relative to the JSONL file, and
one record per kept (pair, variant):

- `internvl`: {"id", "image": [paths], "conversations": [{"from": "human", "value":
  "Image-1: <image>\\nImage-2: <image>\\n<prompt>"}, {"from": "gpt", "value": instruction}]}
  — the multi-image layout of InternVL's fine-tuning scripts.
- `messages`: {"id", "messages": [{"role": "user", "content": [{"type": "image", "image":
  path}, ..., {"type": "text", ...}]}, {"role": "assistant", "content": instruction}]}.

Inputs come first, in input order, the target last, matching the `{image}`/`{imageN}`
indicators in the instruction.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from typing import Any, Literal

from acedata import shards
from acedata.errors import UserError
from acedata.instruct.captioner import CAPTIONER_PROMPT
from acedata.lookup import ImageStore

CURATED_METHODS = ("template", "llm_rewrite", "mllm_llm", "captioner")


def find_tables(run_dir: str, table: str) -> list[str]:
    """Finished `table` folders directly under the stage folders of a run directory."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir!r} does not exist")
    out = []
    for stage in sorted(os.listdir(run_dir)):
        d = os.path.join(run_dir, stage, table)
        if os.path.isfile(os.path.join(d, shards.MANIFEST)):
            out.append(d)
    return out


def _iter_rows(tables: Iterable[str], columns: list[str]) -> Iterable[dict[str, Any]]:
    for t in tables:
        for batch in shards.iter_batches(t, columns=columns):
            yield from batch.to_pylist()


def export_captioner_data(
    instructions: list[str],
    pairs: list[str],
    images: list[str],
    out_dir: str,
    fmt: Literal["internvl", "messages"] = "internvl",
    methods: tuple[str, ...] = CURATED_METHODS,
    variants: Literal["all", "first"] = "all",
    limit: int | None = None,
    prompt: str = CAPTIONER_PROMPT,
    progress: bool = False,
) -> dict[str, int]:
    """Write `out_dir/captioner.jsonl` and `out_dir/images/`; returns counts (kept and why others were not)."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    pair_info = {r["pair_id"]: r for r in _iter_rows(pairs, ["pair_id", "source_id", "target_id", "extra_input_ids",
                                                              "task", "subtask"])}
    wanted: list[dict[str, Any]] = []
    counts = {"records": 0, "skipped_method": 0, "skipped_variant": 0, "skipped_no_pair": 0, "skipped_no_image": 0}
    for r in _iter_rows(instructions, ["pair_id", "variant", "instruction", "method"]):
        if r["method"] not in methods:
            counts["skipped_method"] += 1
            continue
        if variants == "first" and r["variant"] != 0:
            counts["skipped_variant"] += 1
            continue
        if r["pair_id"] not in pair_info:
            counts["skipped_no_pair"] += 1
            continue
        wanted.append(r)
        if limit and len(wanted) >= limit:
            break
    store = ImageStore(images)
    written: dict[str, str] = {}
    path = os.path.join(out_dir, "captioner.jsonl")
    tmp = path + ".tmp"
    from tqdm import tqdm

    with open(tmp, "w", encoding="utf-8") as f:
        for r in tqdm(wanted, desc="export", unit="rec", disable=not progress):
            p = pair_info[r["pair_id"]]
            ids = [p["source_id"], *(p.get("extra_input_ids") or []), p["target_id"]]
            missing = [i for i in ids if i not in written and i not in store]
            if missing:
                counts["skipped_no_image"] += 1
                continue
            todo = [i for i in ids if i not in written]
            if todo:
                for image_id, row in store.rows(todo, columns=["image_id", "image", "format"]).items():
                    ext = (row.get("format") or "PNG").lower().replace("jpeg", "jpg")
                    rel = posixpath.join("images", f"{image_id}.{ext}")
                    with open(os.path.join(out_dir, rel), "wb") as img:
                        img.write(row["image"]["bytes"])
                    written[image_id] = rel
            paths = [written[i] for i in ids]
            f.write(json.dumps(_record(r, p, paths, fmt, prompt), ensure_ascii=False) + "\n")
            counts["records"] += 1
    os.replace(tmp, path)
    counts["images"] = len(written)
    return counts


def _record(r: dict[str, Any], pair: dict[str, Any], paths: list[str], fmt: str, prompt: str) -> dict[str, Any]:
    rid = f"{r['pair_id']}#{r['variant']}"
    meta = {"task": pair.get("task"), "subtask": pair.get("subtask"), "method": r["method"]}
    if fmt == "internvl":
        tags = "".join(f"Image-{i}: <image>\n" for i in range(1, len(paths) + 1))
        return {"id": rid, "image": paths, "conversations": [
            {"from": "human", "value": tags + prompt}, {"from": "gpt", "value": r["instruction"]}], **meta}
    content: list[dict[str, Any]] = [{"type": "image", "image": p} for p in paths]
    content.append({"type": "text", "text": prompt})
    return {"id": rid, "messages": [{"role": "user", "content": content},
                                    {"role": "assistant", "content": r["instruction"]}], **meta}
