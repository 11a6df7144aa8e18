"""A run to review without running the pipeline: real photographs, generated metadata rows.

Writes RUN/ingest/images (scikit-image's photographs plus one mask), RUN/pair/pairs and
RUN/instruct/instructions through the platform's schemas and shard writer, with every
input shape the tool shows: one input, one input with a mask, two inputs, and natural
pairs with an MLLM analysis in the instruction's provenance. Used by the review tests
and bench/review.py (which asks for 100k pairs over the same few images).
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa

from acedata import shards
from acedata.schemas import INSTRUCTIONS, PAIRS, schema_for

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "coins", "immunohistochemistry")
# (task, subtask, inputs, mask): the shapes the item page has to show.
SHAPES = [("repainting", "inpaint", 1, True), ("low_level", "canny", 1, False), ("element", "add", 1, True),
          ("reference", "compose", 2, False), ("natural", "natural", 1, False)]


def _images() -> list[dict]:
    from PIL import Image
    from skimage import data

    rows = []
    for name in PHOTOS:
        arr = getattr(data, name)()
        if arr.dtype != np.uint8:
            arr = (255 * (arr > 0)).astype(np.uint8)
        im = Image.fromarray(arr).convert("RGB")
        im.thumbnail((512, 512))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        rows.append(_image_row(buf.getvalue(), f"skimage://{name}", im.size, "JPEG", "image"))
    mask = np.zeros((384, 512), np.uint8)
    mask[96:288, 128:384] = 255
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    rows.append(_image_row(buf.getvalue(), "generated://mask", (512, 384), "PNG", "mask"))
    return rows


def _image_row(data: bytes, uri: str, size: tuple[int, int], fmt: str, kind: str) -> dict:
    return {"image_id": hashlib.sha256(data).hexdigest(), "source_uri": uri, "width": size[0], "height": size[1],
            "format": fmt, "image": {"bytes": data, "path": None}, "kind": kind}


def build_run(run_dir: str, n_pairs: int = 60, extra: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Write the three tables; `extra` adds instruction candidates (pair_id -> texts, method llm_rewrite)."""
    images = _images()
    photos = [r["image_id"] for r in images if r["kind"] == "image"]
    mask = next(r["image_id"] for r in images if r["kind"] == "mask")
    shards.write_table(os.path.join(run_dir, "ingest", "images"), pa.Table.from_pylist(images, schema_for("images")),
                       schema_for("images"), table="images")
    pairs, instr = [], []
    for i in range(n_pairs):
        task, subtask, n_in, has_mask = SHAPES[i % len(SHAPES)]
        pid = f"p{i:06d}"
        src = photos[i % len(photos)]
        tgt = photos[(i * 3 + 1) % len(photos)]
        extra_ids = [photos[(i + 2) % len(photos)]] if n_in == 2 else []
        pairs.append({"pair_id": pid, "source_id": src, "target_id": tgt, "task": task, "subtask": subtask,
                      "mask_id": mask if has_mask else None, "extra_input_ids": extra_ids, "cluster_id": i % 7,
                      "set_id": i, "provenance": json.dumps({"stage": "sample"})})
        ind = "{image1} and {image2}" if n_in == 2 else "{image}"
        texts = [(f"{subtask} {ind} (item {i})", "template", None, {"template": f"{task}/{subtask}#0"}),
                 (f"please {subtask} {ind}, variant for item {i}", "llm_rewrite", "tiny-llm", {"rewrite_of": 0})]
        if task == "natural":
            analysis = {"differences": [f"the lighting changes in item {i}"], "commonalities": ["same subject"]}
            texts[0] = (f"change the lighting of {ind} (item {i})", "mllm_llm", "tiny-mllm+tiny-llm",
                        {"natural": "mllm_llm", "analysis": analysis})
        texts += [(t, "llm_rewrite", "tiny-llm", {"rewrite_of": 0}) for t in (extra or {}).get(pid, [])]
        for v, (text, method, model, prov) in enumerate(texts):
            instr.append({"pair_id": pid, "variant": v, "instruction": text, "method": method, "model": model,
                          "rejected": [], "provenance": json.dumps(prov)})
    shards.write_table(os.path.join(run_dir, "pair", "pairs"), pa.Table.from_pylist(pairs, PAIRS),
                       schema_for("pairs"), table="pairs")
    shards.write_table(os.path.join(run_dir, "instruct", "instructions"), pa.Table.from_pylist(instr, INSTRUCTIONS),
                       schema_for("instructions"), table="instructions")
    return {"images": len(images), "pairs": len(pairs), "instructions": len(instr)}
