"""Captioner training data: (pair, instruction) records in fine-tuning frameworks' layouts.

The paper fine-tuned InternVL2-26B on ~800k curated instructions as an "instruction
captioner". This writes such records: the pair's images as files under `images/`
(named by image_id, written once; the `hf` format embeds the bytes instead), referenced
by path relative to the output folder, and one record per kept (pair, instruction text)
— the same text from several instructions tables is written once; ids are `<pair_id>#<n>`.
With reviews, only the curated set is written: accepted or corrected pairs, human text.

Formats (acedata/instruct/export_formats.py): `internvl` ({"id", "image": [paths],
"conversations": [{"from": "human", "value": "Image-1: <image>\\n...<prompt>"}, {"from":
"gpt", "value": instruction}]}, the multi-image layout of InternVL's fine-tuning scripts),
`messages`, `sharegpt` (LLaMA-Factory) and `hf` (a Hugging Face dataset).

Inputs come first, in input order, the target last, matching the `{image}`/`{imageN}`
indicators in the instruction.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from acedata import shards, storage
from acedata.errors import UserError
from acedata.image_index import ImageReader
from acedata.instruct.captioner import CAPTIONER_PROMPT

CURATED_METHODS = ("template", "llm_rewrite", "mllm_llm", "captioner")

if TYPE_CHECKING:
    from acedata.instruct.export_formats import Writer


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


def _machine_records(instructions: list[str], pair_info: dict, methods: tuple[str, ...], variants: str,
                     limit: int | None, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Every kept (pair, instruction text) of the instructions tables."""
    wanted: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
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
        wanted.append(r)
        if limit and len(wanted) >= limit:
            break
    return wanted


def _curated_records(reviews: list[str], instructions: list[str], pair_info: dict, limit: int | None,
                     counts: dict[str, int]) -> list[dict[str, Any]]:
    """One record per accepted or corrected pair, with the human text (acedata/review/decisions.py)."""
    from acedata.lcu import local_refs
    from acedata.review.decisions import Reviews, outcome

    final = Reviews.load(reviews).final
    variants: dict[str, dict[int, dict[str, Any]]] = {}
    need = {pid for pid, r in final.items() if r["decision"] == "accept" and not r["instruction"]}
    if need:  # an accept that stored no text takes the chosen variant's text
        for r in _iter_rows(instructions, ["pair_id", "variant", "instruction"]):
            if r["pair_id"] in need:
                variants.setdefault(r["pair_id"], {}).setdefault(int(r["variant"]), r)
    wanted: list[dict[str, Any]] = []
    for pid in sorted(final):
        o = outcome(final[pid], variants.get(pid))
        if o.kind != "text":
            counts[f"skipped_{'rejected' if o.kind == 'reject' else 'stale'}"] += 1
        elif pid not in pair_info:
            counts["skipped_no_pair"] += 1
        elif any(k > 1 + len(pair_info[pid]["extra_input_ids"] or []) for k in local_refs(o.text or "")):
            counts["skipped_bad_indicator"] += 1  # assemble quarantines it too
        else:
            wanted.append({"pair_id": pid, "instruction": o.text, "method": o.method})
            if limit and len(wanted) >= limit:
                break
    return wanted


def export_captioner_data(
    instructions: list[str],
    pairs: list[str],
    images: list[str],
    out_dir: str,
    fmt: str = "internvl",
    methods: tuple[str, ...] = CURATED_METHODS,
    variants: Literal["all", "first"] = "all",
    limit: int | None = None,
    prompt: str = CAPTIONER_PROMPT,
    progress: bool = False,
    reviews: list[str] | None = None,
) -> dict[str, int]:
    """Write the records of `fmt` (export_formats.py) under `out_dir`; returns counts (kept and why not).

    With `reviews` (reviews tables), only the curated set is written: pairs whose final review
    accepted or corrected an instruction, with the human text; `methods`/`variants` do not apply.
    """
    from acedata.instruct.export_formats import open_writer

    os.makedirs(out_dir, exist_ok=True)
    pair_info = {r["pair_id"]: r for r in _iter_rows(pairs, ["pair_id", "source_id", "target_id", "extra_input_ids",
                                                              "task", "subtask"])}
    counts = {"records": 0, "skipped_method": 0, "skipped_variant": 0, "skipped_no_pair": 0, "skipped_no_image": 0,
              "skipped_duplicate": 0}
    if reviews is not None:
        counts.update(skipped_rejected=0, skipped_stale=0, skipped_bad_indicator=0)
        wanted = _curated_records(reviews, instructions, pair_info, limit, counts)
    else:
        wanted = _machine_records(instructions, pair_info, methods, variants, limit, counts)
    _number_per_pair(wanted)
    writer = open_writer(fmt, out_dir)
    if not writer.embeds_images:
        os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    written = _write_records(wanted, pair_info, ImageReader(images), writer, out_dir, prompt, counts, progress)
    writer.close()
    counts["images"] = len(written)
    return counts


def _write_records(wanted: list[dict[str, Any]], pair_info: dict[str, dict[str, Any]], store: ImageReader,
                   writer: Writer, out_dir: str, prompt: str, counts: dict[str, int], progress: bool) -> dict[str, str]:
    """Add every wanted record whose images are all readable to `writer`; returns image_id -> path
    (relative to out_dir) of the images written."""
    written: dict[str, str] = {}  # image_id -> path relative to out_dir
    from tqdm import tqdm

    bar = tqdm(total=len(wanted), desc="export", unit="rec", disable=not progress)
    for lo in range(0, len(wanted), 512):
        chunk = wanted[lo: lo + 512]
        ids_of = {id(r): _image_ids(pair_info[r["pair_id"]]) for r in chunk}
        # One read per needed row group for the whole chunk.
        ids = {i for v in ids_of.values() for i in v}
        need = sorted(i for i in ids if i in store and (writer.embeds_images or i not in written))
        data = _fetch_images(store, need, out_dir, writer.embeds_images, written)
        for r in chunk:
            ids = ids_of[id(r)]
            if any(i not in written for i in ids):
                counts["skipped_no_image"] += 1
                continue
            p = pair_info[r["pair_id"]]
            rec = {"id": f"{r['pair_id']}#{r['n']}", "pair_id": r["pair_id"], "instruction": r["instruction"],
                   "method": r["method"], "task": p.get("task"), "subtask": p.get("subtask"),
                   "prompt": captioner_prompt(len(ids) - 1, prompt)}
            writer.add(rec, [written[i] for i in ids], [data[i] for i in ids] if writer.embeds_images else None)
            counts["records"] += 1
        bar.update(len(chunk))
    bar.close()
    return written


def _number_per_pair(wanted: list[dict[str, Any]]) -> None:
    """Give each record `n`: its index among the records of its pair (the record id's suffix)."""
    per_pair: dict[str, int] = {}
    for r in wanted:
        r["n"] = per_pair.get(r["pair_id"], 0)
        per_pair[r["pair_id"]] = r["n"] + 1


def _fetch_images(store: ImageReader, need: list[str], out_dir: str, embed: bool,
                  written: dict[str, str]) -> dict[str, bytes]:
    """Read `need` in one pass; write each under out_dir/images/ (or return its bytes when the format
    embeds images) and record its relative path in `written`."""
    data: dict[str, bytes] = {}
    for image_id, row in store.rows(need, ["image_id", "image", "format"]).items():
        ext = (row.get("format") or "PNG").lower().replace("jpeg", "jpg")
        rel = posixpath.join("images", f"{image_id}.{ext}")
        if embed:
            data[image_id] = row["image"]["bytes"]
        else:
            with open(os.path.join(out_dir, rel), "wb") as img:
                img.write(row["image"]["bytes"])
        written[image_id] = rel
    return data


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
