"""The exported chat JSONL (`acedata export-captioner`) as model inputs.

A record's human turn is `Image-1: <image>\\nImage-2: <image>\\n<prompt>` (InternVL layout)
or a `messages` list with image parts; either becomes one user message whose content
parts keep the images where their indicators are, so the model's own chat template and
processor (resizing, tiling) see them in indicator order. Labels cover the answer tokens
and the end-of-turn token only; the prompt and image tokens are -100.

The held-out split is by pair id hash (all variants of a pair fall on one side), so it
depends only on the content, not on file order or worker count.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from acedata import shards
from acedata.errors import UserError

IGNORE = -100
IMAGE_TAG = "<image>"


@dataclass
class Example:
    id: str
    images: list[str]  # resolved paths / URIs, in indicator order
    user: list[dict[str, Any]]  # content parts: {"type": "text", "text"} | {"type": "image"}
    answer: str

    @property
    def pair_id(self) -> str:
        return self.id.rsplit("#", 1)[0]


def user_parts(human: str, n_images: int) -> list[dict[str, Any]]:
    """`Image-1: <image>\\n...` -> text and image parts in the same order."""
    pieces = human.split(IMAGE_TAG)
    if len(pieces) - 1 != n_images:
        raise ValueError(f"{len(pieces) - 1} {IMAGE_TAG} tags for {n_images} images")
    parts: list[dict[str, Any]] = []
    for i, text in enumerate(pieces):
        if text:
            parts.append({"type": "text", "text": text})
        if i < n_images:
            parts.append({"type": "image"})
    return parts


def parse_record(rec: dict[str, Any], base: str) -> Example:
    join = lambda p: p if "://" in p or p.startswith("/") else posixpath.join(base, p)
    if "conversations" in rec:
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        human, gpt = rec["conversations"][0], rec["conversations"][1]
        return Example(rec["id"], [join(p) for p in images], user_parts(human["value"], len(images)), gpt["value"])
    user, assistant = rec["messages"][0], rec["messages"][1]
    images, parts = [], []
    for p in user["content"]:
        if p["type"] == "image":
            images.append(join(p["image"]))
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": p["text"]})
    return Example(rec["id"], images, parts, assistant["content"])


def read_examples(data: str, max_records: int | None = None) -> list[Example]:
    """Every record of DATA (an export folder or its captioner.jsonl), sorted by id."""
    path = data if data.endswith(".jsonl") else posixpath.join(data.rstrip("/"), "captioner.jsonl")
    import pyarrow.fs as pafs

    fs, p = shards.resolve(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise UserError(f"no captioner data at {path} (write it with `acedata export-captioner RUN --out DIR`)")
    base = posixpath.dirname(path)
    out = []
    with fs.open_input_stream(p) as f:
        lines = f.read().decode("utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(parse_record(json.loads(line), base))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise UserError(f"{path}:{n}: not a captioner record ({e})") from None
    out.sort(key=lambda e: e.id)
    if not out:
        raise UserError(f"{path} has no records")
    return out[:max_records] if max_records else out


def is_heldout(pair_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def split(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not is_heldout(e.pair_id, fraction)]
    held = [e for e in examples if is_heldout(e.pair_id, fraction)]
    return train, held


def load_images(ex: Example) -> list:
    from PIL import Image

    out = []
    for path in ex.images:
        fs, p = shards.resolve(path)
        with fs.open_input_stream(p) as f:
            out.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
    return out


def prompt_messages(ex: Example) -> list[dict[str, Any]]:
    return [{"role": "user", "content": ex.user}]


class Collator:
    """Examples -> one padded batch: prompt through the processor (image tokens expanded),
    answer tokens appended with their labels."""

    def __init__(self, processor) -> None:
        self.proc = processor
        self.tok = getattr(processor, "tokenizer", processor)
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos

    def answer_ids(self, ex: Example, prompt_text: str) -> list[int]:
        full = self.proc.apply_chat_template(
            prompt_messages(ex) + [{"role": "assistant", "content": [{"type": "text", "text": ex.answer}]}],
            tokenize=False)
        cont = full[len(prompt_text):] if full.startswith(prompt_text) else ex.answer + (self.tok.eos_token or "")
        ids = self.tok(cont, add_special_tokens=False)["input_ids"]
        if self.eos in ids:  # stop at the end-of-turn token: what generation stops on
            ids = ids[: ids.index(self.eos) + 1]
        return ids

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        """One processor call for the batch's prompts and images (tiling, image-token expansion),
        then each row's prompt ids (padding dropped) + its answer ids, right-padded."""
        import torch

        prompts = [self.proc.apply_chat_template(prompt_messages(e), add_generation_prompt=True, tokenize=False)
                   for e in examples]
        images = [im for e in examples for im in load_images(e)]
        enc = self.proc(text=prompts, images=images or None, padding=True, return_tensors="pt")
        rows = []
        for i, (e, prompt) in enumerate(zip(examples, prompts)):
            ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            ans = self.answer_ids(e, prompt)
            rows.append((ids + ans, [IGNORE] * len(ids) + ans))
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_ids)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        shape = tuple(enc["input_ids"].shape)
        for k, v in enc.items():
            if k in ("input_ids", "attention_mask"):
                continue
            if isinstance(v, torch.Tensor) and tuple(v.shape[:2]) == shape:  # per-token (e.g. mm_token_type_ids)
                out = torch.zeros((len(rows), width, *v.shape[2:]), dtype=v.dtype)
                for i in range(len(rows)):
                    row = v[i][enc["attention_mask"][i].bool()]
                    out[i, : len(row)] = row
                batch[k] = out
            else:  # pixel tensors (tiles / patches, grids) in example order
                batch[k] = v
        return batch
