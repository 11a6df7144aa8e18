"""Small LCU shards built from the real photographs that ship with scikit-image.

Used by the tests and by `make demo` when no assembled LCU table is at hand. Edits are real
image operations (grayscale, Canny edges, masked repainting, horizontal flip) so the pairs are
learnable; one sample carries a history CU and one is text-to-image.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter, ImageOps

from acedata.schemas import LCU, schema_for
from acedata.shards import write_table

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry"]


def _png(im: Image.Image) -> dict:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": None}


def photo(name: str, size: tuple[int, int]) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    im = Image.fromarray(arr).convert("RGB")
    return ImageOps.fit(im, size, Image.BICUBIC)


def _row(sid: str, task: str, subtask: str, instruction: str, inputs: list, target: Image.Image,
         history: list | None = None) -> dict:
    history = history or []
    return {
        "sample_id": sid, "task": task, "subtask": subtask, "instruction": instruction,
        "inputs": inputs, "target": _png(target), "history": history, "num_turns": len(history) + 1,
        "width": target.width, "height": target.height, "instruction_method": "template", "pair_id": sid,
        "source_ids": [], "scores": [], "provenance": '{"stage": "demo_lcu"}',
    }


def build_rows(size: tuple[int, int] = (128, 96), photos: list[str] | None = None) -> list[dict]:
    rows = []
    w, h = size
    for i, name in enumerate(photos or PHOTOS):
        src = photo(name, size)
        gray = ImageOps.grayscale(src).convert("RGB")
        edges = src.convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB")
        rows.append(_row(f"{name}-gray", "low_level", "grayscale", "turn {image} into a black and white photo",
                         [{"image": _png(src), "mask": None}], gray))
        rows.append(_row(f"{name}-canny", "controllable", "canny", "draw a photo that follows the edges of {image}",
                         [{"image": _png(edges), "mask": None}], src))
        mask = Image.new("L", size, 0)
        mask.paste(255, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        holed = src.copy()
        holed.paste((128, 128, 128), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        rows.append(_row(f"{name}-inpaint", "repainting", "inpainting", "fill in the masked region of {image}",
                         [{"image": _png(holed), "mask": _png(mask)}], src))
        if i % 2 == 0:  # a two-turn chain: flip, then grayscale on top of the flipped image
            flipped = ImageOps.mirror(src)
            hist = [{"instruction": "mirror {image} left to right", "inputs": [{"image": _png(src), "mask": None}],
                     "target": _png(flipped)}]
            # frames: target, history input ({image}), current input ({image1}) - acedata/lcu.py
            rows.append(_row(f"{name}-chain", "semantic_editing", "multi_turn",
                             "now make {image1} black and white", [{"image": _png(flipped), "mask": None}],
                             ImageOps.grayscale(flipped).convert("RGB"), hist))
        else:
            rows.append(_row(f"{name}-t2i", "text_to_image", "caption", f"a photograph of {name}", [], src))
    return rows


def build(out_dir: str, size: tuple[int, int] = (128, 96), photos: list[str] | None = None,
          rows_per_group: int = 4) -> str:
    """Write an lcu table (manifest + shards) under out_dir; small row groups so ranks can split it."""
    rows = build_rows(size, photos)
    schema = schema_for("lcu")
    table = pa.Table.from_pylist(rows, schema=LCU).cast(schema)
    avg = max(1, table.nbytes // table.num_rows)
    write_table(out_dir, table, schema, table="lcu", row_group_bytes=avg * rows_per_group)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description="write demo LCU shards from scikit-image photographs")
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--sample-image", help="also save one input photo here (for `acedata generate`)")
    a = p.parse_args()
    build(a.out, (a.width, a.height))
    if a.sample_image:
        photo("coffee", (a.width, a.height)).save(a.sample_image)
    print(a.out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
