"""Contact sheets: one PNG per task family showing sample pairs, so a person can look at them.

Each row is one pair: its inputs in order (source, further inputs), its mask, then the
target, each labelled; the row is titled task/subtask. Layers with alpha are drawn over
a checkerboard. Rows are drawn round-robin over subtasks so every subtask shows up.
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections import defaultdict
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from acedata import shards
from acedata.errors import UserError
from acedata.image_index import ImageReader

LABEL_H = 14
TITLE_W = 150
PAD = 4


def find_tables(run_dir: str) -> tuple[list[str], list[str]]:
    """(pairs tables, images tables) of a run directory (from _run.json, else by folder)."""
    run_file = os.path.join(run_dir, "_run.json")
    if os.path.isfile(run_file):
        with open(run_file) as f:
            tables = json.load(f).get("tables", {})
        pairs, images = tables.get("pairs", []), tables.get("images", [])
    else:
        pairs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(run_dir, "*", "pairs", "_manifest.json")))
        images = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(run_dir, "*", "images", "_manifest.json")))
    if not pairs:
        raise UserError(f"{run_dir}: no pairs table found (run a pipeline with a synthesize or pair stage first)")
    return pairs, images


def pick_rows(pairs: list[dict[str, Any]], per_family: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    rnd = random.Random(seed)
    by_family: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for p in pairs:
        by_family[p["task"]][p["subtask"]].append(p)
    out = {}
    for family, subs in sorted(by_family.items()):
        pools = {k: rnd.sample(v, len(v)) for k, v in sorted(subs.items())}
        rows: list[dict[str, Any]] = []
        while len(rows) < per_family and any(pools.values()):
            for k in list(pools):
                if pools[k] and len(rows) < per_family:
                    rows.append(pools[k].pop())
        out[family] = rows
    return out


def _checker(size: tuple[int, int], step: int = 8) -> Image.Image:
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    for y in range(0, size[1], step):
        for x in range((y // step) % 2 * step, size[0], 2 * step):
            d.rectangle([x, y, x + step - 1, y + step - 1], fill=(205, 205, 205))
    return im


def _thumb(data: bytes | None, cell: int) -> Image.Image:
    import io

    canvas = Image.new("RGB", (cell, cell), (235, 235, 235))
    if data is None:
        ImageDraw.Draw(canvas).text((PAD, cell // 2), "missing", fill=(200, 0, 0))
        return canvas
    im = Image.open(io.BytesIO(data))
    im.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    x, y = (cell - im.width) // 2, (cell - im.height) // 2
    if im.mode in ("RGBA", "LA"):
        bg = _checker(im.size)
        bg.paste(im.convert("RGBA"), (0, 0), im.convert("RGBA"))
        im = bg
    canvas.paste(im.convert("RGB"), (x, y))
    return canvas


def cells_of(p: dict[str, Any]) -> list[tuple[str, str]]:
    extras = p.get("extra_input_ids") or []
    cells = [("source" if not extras else "input 1", p["source_id"])]
    cells += [(f"input {k + 2}", e) for k, e in enumerate(extras)]
    if p.get("mask_id"):
        cells.append(("mask", p["mask_id"]))
    cells.append(("target", p["target_id"]))
    return cells


def render(rows: list[dict[str, Any]], images: dict[str, bytes], family: str, cell: int) -> Image.Image:
    width = TITLE_W + max(len(cells_of(p)) for p in rows) * (cell + PAD) + PAD
    row_h = cell + LABEL_H + PAD
    sheet = Image.new("RGB", (width, 24 + len(rows) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((PAD, 6), f"{family}: {len(rows)} sample pairs", fill=(0, 0, 0), font=font)
    for r, p in enumerate(rows):
        y = 24 + r * row_h
        title = p["subtask"] + ("\n(chained)" if p.get("parent_pair_id") else "")
        draw.multiline_text((PAD, y + cell // 2 - 8), title, fill=(20, 20, 120), font=font)
        for c, (label, image_id) in enumerate(cells_of(p)):
            x = TITLE_W + c * (cell + PAD)
            sheet.paste(_thumb(images.get(image_id), cell), (x, y))
            draw.text((x + 2, y + cell + 1), label, fill=(60, 60, 60), font=font)
    return sheet


def write_contact_sheets(run_dir: str, out_dir: str | None = None, per_family: int = 6, cell: int = 128,
                         seed: int = 0, progress: bool = True) -> list[str]:
    """One PNG per task family under `out_dir` (default RUN/contact_sheets); returns the paths."""
    from tqdm import tqdm

    pairs_tables, image_tables = find_tables(run_dir)
    pairs = [p for t in pairs_tables for p in shards.read_table(t).to_pylist()]
    if not pairs:
        raise UserError(f"{run_dir}: the pairs tables are empty; nothing to draw")
    picked = pick_rows(pairs, per_family, seed)
    store = ImageReader(image_tables)
    out_dir = out_dir or os.path.join(run_dir, "contact_sheets")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for family, rows in tqdm(picked.items(), desc="contact sheets", unit="family", disable=not progress):
        ids = [i for p in rows for _, i in cells_of(p)]
        sheet = render(rows, store.image_bytes(ids, missing="skip"), family, cell)
        path = os.path.join(out_dir, f"{family}.png")
        sheet.save(path)
        written.append(path)
    return written
