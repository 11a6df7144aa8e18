"""A small run directory with images, pairs and curated instructions tables, exported with the
real `acedata export-captioner` code, plus the tiny captioner config used by the captioner tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

INSTRUCTIONS = [
    "Turn {image} into a watercolor painting.",
    "Remove the red car from {image}.",
    "Add falling snow to {image}.",
    "Make {image} look like a pencil sketch.",
    "Replace the sky in {image} with a sunset.",
    "Blur the background of {image}.",
]


def noise_image(seed: int, size: tuple[int, int] = (64, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_run(root: Path, n: int = 4, task: str = "semantic_editing", extra: int = 0) -> Path:
    """RUN/{src/images, src/pairs, instruct/instructions}: n pairs of noise images, one instruction each
    (the pair's `extra` extra inputs make multi-input records)."""
    from acedata import shards
    from acedata.images import encode, image_cell, pixel_id
    from acedata.schemas import IMAGES, PAIRS
    from acedata.schemas import INSTRUCTIONS as ISCHEMA

    run = root / "run"
    rows, pairs, instr = [], [], []
    for k in range(n):
        ims = [noise_image(100 * k + j) for j in range(2 + extra)]
        ids = [pixel_id(im) for im in ims]
        rows += [{"image_id": i, "source_uri": f"mem://{k}/{j}", "width": im.width, "height": im.height,
                  "format": "PNG", "image": image_cell(encode(im)), "kind": "image"}
                 for j, (i, im) in enumerate(zip(ids, ims))]
        pairs.append({"pair_id": f"p{k}", "source_id": ids[0], "target_id": ids[-1], "task": task,
                      "subtask": "x", "extra_input_ids": ids[1:-1] or None})
        text = INSTRUCTIONS[k % len(INSTRUCTIONS)]
        if extra:
            text = text.replace("{image}", "{image1}") + " Use {image2} as the reference."
        instr.append({"pair_id": f"p{k}", "variant": 0, "instruction": text, "method": "template",
                      "model": None, "rejected": [], "provenance": "{}"})
    shards.write_table(str(run / "src" / "images"), pa.Table.from_pylist(rows, IMAGES), IMAGES, table="images")
    shards.write_table(str(run / "src" / "pairs"), pa.Table.from_pylist(pairs, PAIRS), PAIRS, table="pairs")
    shards.write_table(str(run / "instruct" / "instructions"), pa.Table.from_pylist(instr, ISCHEMA), ISCHEMA,
                       table="instructions")
    return run


def export(run: Path, out: Path) -> Path:
    from acedata.instruct.export import export_captioner_data, find_tables

    export_captioner_data(find_tables(str(run), "instructions"), find_tables(str(run), "pairs"),
                          find_tables(str(run), "images"), str(out))
    return out


TINY_CONFIG = """
model:
  path: {model}
  tiny: {{family: {family}, seed: 0, hidden_size: 64, layers: 2, tile: 32, max_tiles: 2}}
finetune: {finetune}
lora: {{r: 8, alpha: 16, dropout: {dropout}}}
freeze_vision: false
data: {{batch_size: 4, eval_fraction: {eval_fraction}}}
optim: {{lr: 3.0e-3, warmup_steps: 0, grad_clip: 1.0}}
steps: {steps}
seed: 0
checkpoint_every: {every}
keep_checkpoints: 10
cpu_threads: 1
"""


def write_config(path: Path, model_dir: Path, steps: int = 60, every: int = 30, finetune: str = "full",
                 dropout: float = 0.0, eval_fraction: float = 0.0, family: str = "internvl",
                 **extra: str) -> Path:
    text = TINY_CONFIG.format(model=model_dir, steps=steps, every=every, finetune=finetune, dropout=dropout,
                              eval_fraction=eval_fraction, family=family)
    for k, v in extra.items():
        text += f"{k}: {v}\n"
    path.write_text(text)
    return path
