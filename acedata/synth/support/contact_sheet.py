"""Contact sheets: one PNG per task family showing sample pairs, so a person can look at them.

Each row is one pair: its inputs in order (source, further inputs), its mask, then the
target, each labelled; the row is titled task/subtask, and beside the images stands the pair's
instruction (from the run's instructions tables, when instruct has run) so image and text are
checked together. A later turn of a multi-turn chain shows the whole chain, oldest turn first.
Layers with alpha are drawn over a checkerboard. Rows are drawn round-robin over subtasks so
every subtask shows up.
"""

from __future__ import annotations

import io
import random
import textwrap
from collections import defaultdict
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from acedata import shards, storage
from acedata.errors import UserError
from acedata.lookup import ImageStore

LABEL_H = 14
TITLE_W = 150
PAD = 4
TEXT_W = 360  # the instruction column
LINE_H = 12  # the default bitmap font's line height
WRAP = 56  # characters per instruction line


def find_tables(run_dir: str, kinds: tuple[str, ...] = ("pairs", "images", "instructions")) -> dict[str, list[str]]:
    """Table paths of a run directory by kind (from _run.json, else by folder)."""
    run_file = storage.join(run_dir, "_run.json")
    if storage.is_file(run_file):
        tables = storage.read_json(run_file).get("tables", {})
        found = {k: list(tables.get(k, [])) for k in kinds}
    else:
        found = {k: [storage.join(run_dir, s, k) for s in storage.subdirs(run_dir)
                     if storage.is_file(storage.join(run_dir, s, k, "_manifest.json"))] for k in kinds}
    if not found["pairs"]:
        raise UserError(f"{run_dir}: no pairs table found (run a pipeline with a synthesize or pair stage first)")
    return found


def first_instructions(tables: list[str]) -> dict[str, str]:
    """pair_id -> its first instruction (variant 0: the template or the first accepted text)."""
    best: dict[str, tuple[int, str]] = {}
    for t in tables:
        for r in shards.read_table(t, columns=["pair_id", "variant", "instruction"]).to_pylist():
            if r["pair_id"] not in best or r["variant"] < best[r["pair_id"]][0]:
                best[r["pair_id"]] = (r["variant"], r["instruction"])
    return {k: v for k, (_, v) in best.items()}


def chain_of(p: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The pair and the earlier turns it builds on, oldest first (a chain's parents are pairs too)."""
    chain = [p]
    while chain[0].get("parent_pair_id") in by_id and len(chain) < 32:
        chain.insert(0, by_id[chain[0]["parent_pair_id"]])
    return chain


def text_lines(p: dict[str, Any], by_id: dict[str, dict[str, Any]],
               instructions: dict[str, str]) -> list[tuple[str, bool]]:
    """The instruction column of one row as (line, is the pair's own turn): the instruction, or
    each turn of its chain numbered, oldest first."""
    if not instructions:
        return [("(no instructions table: run the instruct stage)", True)]
    chain = chain_of(p, by_id)
    lines: list[tuple[str, bool]] = []
    for k, q in enumerate(chain, 1):
        text = instructions.get(q["pair_id"], "(no instruction)")
        prefix = f"turn {k}: " if len(chain) > 1 else ""
        lines += [(line, q is p) for line in textwrap.wrap(prefix + text, WRAP, subsequent_indent="  ")]
    return lines


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


def render(rows: list[dict[str, Any]], images: dict[str, bytes], family: str, cell: int,
           texts: list[list[tuple[str, bool]]] | None = None) -> Image.Image:
    """The sheet: per row a title, the image cells and (given `texts`) the instruction lines."""
    texts = texts or [[] for _ in rows]
    text_x = TITLE_W + max(len(cells_of(p)) for p in rows) * (cell + PAD) + PAD
    width = text_x + (TEXT_W if any(texts) else 0)
    heights = [max(cell + LABEL_H, len(t) * LINE_H) + PAD for t in texts]
    sheet = Image.new("RGB", (width, 24 + sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((PAD, 6), f"{family}: {len(rows)} sample pairs", fill=(0, 0, 0), font=font)
    y = 24
    for p, lines, h in zip(rows, texts, heights):
        title = p["subtask"] + ("\n(chained)" if p.get("parent_pair_id") else "")
        draw.multiline_text((PAD, y + cell // 2 - 8), title, fill=(20, 20, 120), font=font)
        for c, (label, image_id) in enumerate(cells_of(p)):
            x = TITLE_W + c * (cell + PAD)
            sheet.paste(_thumb(images.get(image_id), cell), (x, y))
            draw.text((x + 2, y + cell + 1), label, fill=(60, 60, 60), font=font)
        for k, (line, own) in enumerate(lines):  # the pair's own turn in black, earlier turns grey
            draw.text((text_x, y + k * LINE_H), line, fill=(0, 0, 0) if own else (110, 110, 110), font=font)
        draw.line([(0, y + h - 2), (width, y + h - 2)], fill=(225, 225, 225))
        y += h
    return sheet



def write_contact_sheets(run_dir: str, out_dir: str | None = None, per_family: int = 6, cell: int = 128,
                         seed: int = 0, progress: bool = True) -> list[str]:
    """One PNG per task family under `out_dir` (default RUN/contact_sheets); returns the paths."""
    from tqdm import tqdm

    tables = find_tables(run_dir)
    pairs = [p for t in tables["pairs"] for p in shards.read_table(t).to_pylist()]
    if not pairs:
        raise UserError(f"{run_dir}: the pairs tables are empty; nothing to draw")
    picked = pick_rows(pairs, per_family, seed)
    by_id = {p["pair_id"]: p for p in pairs}
    instructions = first_instructions(tables["instructions"])
    store = ImageStore(tables["images"])
    out_dir = storage.absolute(out_dir or storage.join(run_dir, "contact_sheets"))
    written = []
    for family, rows in tqdm(picked.items(), desc="contact sheets", unit="family", disable=not progress):
        ids = [i for p in rows for _, i in cells_of(p)]
        texts = [text_lines(p, by_id, instructions) for p in rows]
        sheet = render(rows, store.image_bytes(ids), family, cell, texts)
        path = storage.join(out_dir, f"{family}.png")
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        storage.write_bytes(path, buf.getvalue())
        written.append(path)
    return written
