"""Captioner training data: curated (pair, instruction) records as chat JSONL.

The paper fine-tuned InternVL2-26B on ~800k curated instructions as an "instruction
captioner". This writes such records: the pair's images as files under `images/`
(named by image_id, written once), referenced by path relative to the JSONL file, and
one record per kept (pair, instruction text) — the same text from several instructions
tables is written once; ids are `<pair_id>#<n>`:

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
import posixpath
from collections.abc import Iterable
from typing import Any, Literal

from acedata import shards, storage
from acedata.errors import UserError
from acedata.instruct.captioner import CAPTIONER_PROMPT
from acedata.lookup import ImageStore

CURATED_METHODS = ("template", "llm_rewrite", "mllm_llm", "captioner")


def find_tables(run_dir: str, table: str) -> list[str]:
    """Finished `table` folders directly under the stage folders of a run directory."""
    if not storage.is_dir(run_dir):
        raise UserError(f"run directory {run_dir!r} does not exist")
    out = []
    for stage in storage.subdirs(run_dir):
        d = storage.join(run_dir, stage, table)
        if storage.is_file(storage.join(d, shards.MANIFEST)):
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
    out_dir = storage.absolute(out_dir)
    pair_info = {r["pair_id"]: r for r in _iter_rows(pairs, ["pair_id", "source_id", "target_id", "extra_input_ids",
                                                              "task", "subtask"])}
    wanted: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    per_pair: dict[str, int] = {}
    counts = {"records": 0, "skipped_method": 0, "skipped_variant": 0, "skipped_no_pair": 0, "skipped_no_image": 0,
              "skipped_duplicate": 0}
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
        key = (r["pair_id"], " ".join(r["instruction"].split()).lower())
        if key in seen:  # the same text from another instructions table (a rerun under another name)
            counts["skipped_duplicate"] += 1
            continue
        seen.add(key)
        r["n"] = per_pair.get(r["pair_id"], 0)
        per_pair[r["pair_id"]] = r["n"] + 1
        wanted.append(r)
        if limit and len(wanted) >= limit:
            break
    store = ImageStore(images)
    written: dict[str, str] = {}
    path = storage.join(out_dir, "captioner.jsonl")
    from tqdm import tqdm

    bar = tqdm(total=len(wanted), desc="export", unit="rec", disable=not progress)
    with storage.open_output(path) as f:
        for lo in range(0, len(wanted), 512):
            chunk = wanted[lo: lo + 512]
            ids_of = {id(r): _image_ids(pair_info[r["pair_id"]]) for r in chunk}
            # One read per shard for the whole chunk (the store reads a shard per call).
            need = sorted({i for ids in ids_of.values() for i in ids if i not in written and i in store})
            for image_id, row in store.rows(need, columns=["image_id", "image", "format"]).items():
                ext = (row.get("format") or "PNG").lower().replace("jpeg", "jpg")
                rel = posixpath.join("images", f"{image_id}.{ext}")
                storage.write_bytes(storage.join(out_dir, rel), row["image"]["bytes"])
                written[image_id] = rel
            for r in chunk:
                ids = ids_of[id(r)]
                if any(i not in written for i in ids):
                    counts["skipped_no_image"] += 1
                    continue
                p = pair_info[r["pair_id"]]
                line = json.dumps(_record(r, p, [written[i] for i in ids], fmt, prompt), ensure_ascii=False) + "\n"
                f.write(line.encode())
                counts["records"] += 1
            bar.update(len(chunk))
    bar.close()
    counts["images"] = len(written)
    return counts


def _image_ids(pair: dict[str, Any]) -> list[str]:
    """Inputs in input order, then the target."""
    return [pair["source_id"], *(pair.get("extra_input_ids") or []), pair["target_id"]]


def captioner_prompt(n_inputs: int, single: str = CAPTIONER_PROMPT) -> str:
    """The user prompt of a record: the single-input prompt, or one naming every input's indicator."""
    if n_inputs <= 1:
        return single
    names = ", ".join(f"{{image{i}}}" for i in range(1, n_inputs + 1))
    return (f"The first {n_inputs} images are the inputs ({names}, in order); the last image is the output of an "
            f"edit. Write the instruction that produces the last image from the inputs, naming them {names}. "
            "Answer with the instruction only.")


def _record(r: dict[str, Any], pair: dict[str, Any], paths: list[str], fmt: str, prompt: str) -> dict[str, Any]:
    rid = f"{r['pair_id']}#{r['n']}"
    prompt = captioner_prompt(len(paths) - 1, prompt)
    meta = {"task": pair.get("task"), "subtask": pair.get("subtask"), "method": r["method"]}
    if fmt == "internvl":
        tags = "".join(f"Image-{i}: <image>\n" for i in range(1, len(paths) + 1))
        return {"id": rid, "image": paths, "conversations": [
            {"from": "human", "value": tags + prompt}, {"from": "gpt", "value": r["instruction"]}], **meta}
    content: list[dict[str, Any]] = [{"type": "image", "image": p} for p in paths]
    content.append({"type": "text", "text": prompt})
    return {"id": rid, "messages": [{"role": "user", "content": content},
                                    {"role": "assistant", "content": r["instruction"]}], **meta}
