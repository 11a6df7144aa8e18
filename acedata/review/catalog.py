"""What there is to review in a run: pairs, their instruction candidates, and their images.

Loaded once when the server starts. Pairs and instructions stay as Arrow tables with a
pair_id -> row index, so a run with millions of rows costs a few dicts, not millions of
Python objects. Images come through the run's image index (`acedata.image_index`): one
image is read from its row group when asked for; resized copies are kept in a bounded LRU cache (image ids are content hashes, so a
cached copy never goes stale).
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from acedata import shards
from acedata.errors import UserError
from acedata.image_index import ImageReader
from acedata.instruct.templates import indicators_for

T2I_PREFIX = "t2i:"
# Image ids are content hashes; anything else (slashes, dots, percent signs) is refused before lookup.
IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SIZES = (256, 512, 768, 1024, 1600)
PAIR_COLUMNS = ["pair_id", "source_id", "target_id", "task", "subtask", "mask_id", "extra_input_ids"]
INSTR_COLUMNS = ["pair_id", "variant", "instruction", "method", "model", "provenance"]


def run_tables(run_dir: str, table: str) -> list[str]:
    """Finished `table` folders directly under the stage folders of a run (local path or URI)."""
    fs, root = shards.resolve(run_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise UserError(f"run directory {run_dir!r} does not exist")
    out = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda i: i.path):
        if info.type != pafs.FileType.Directory or posixpath.basename(info.path).startswith((".", "_")):
            continue
        d = posixpath.join(info.path, table)
        if shards.exists(fs, posixpath.join(d, shards.MANIFEST)):
            out.append(d if "://" not in run_dir else run_dir.rstrip("/") + d[len(root.rstrip("/")):])
    return out


def _concat(tables: list[str], columns: list[str], schema_cols: list[str]) -> pa.Table:
    parts = []
    for t in tables:
        for s in shards.list_shards(t):
            pf = shards.open_parquet(s)
            have = [c for c in columns if c in pf.schema_arrow.names]
            part = pf.read(columns=have)
            for c in columns:
                if c not in have:
                    part = part.append_column(c, pa.nulls(part.num_rows, pa.string()))
            parts.append(part.select(schema_cols))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in schema_cols})
    return pa.concat_tables(parts, promote_options="permissive")


class Catalog:
    """The reviewable items of one run and the images they show."""

    def __init__(self, run_dir: str, cache_items: int = 512) -> None:
        self.run_dir = run_dir
        pairs_t, instr_t, images_t = (run_tables(run_dir, n) for n in ("pairs", "instructions", "images"))
        if not pairs_t and not instr_t:
            raise UserError(f"no pairs or instructions tables under {run_dir} (run the pipeline first)")
        self.pairs = _concat(pairs_t, PAIR_COLUMNS, PAIR_COLUMNS)
        self._pair_row: dict[str, int] = {}
        for i, pid in enumerate(self.pairs.column("pair_id").to_pylist()):
            self._pair_row.setdefault(pid, i)  # the first table wins when a pair appears twice
        instr = _concat(instr_t, INSTR_COLUMNS, INSTR_COLUMNS)
        order = pc.sort_indices(instr, [("pair_id", "ascending"), ("variant", "ascending")])
        self.instructions = instr.take(order)
        self._instr_span: dict[str, tuple[int, int]] = {}
        for i, pid in enumerate(self.instructions.column("pair_id").to_pylist()):
            lo, n = self._instr_span.get(pid, (i, 0))
            self._instr_span[pid] = (lo, n + 1)
        self.item_ids = sorted(set(self._pair_row) | {p for p in self._instr_span if p.startswith(T2I_PREFIX)})
        self._index_images(images_t)
        self._cache: OrderedDict[tuple[str, int], tuple[bytes, str]] = OrderedDict()
        self._cache_max = cache_items
        self._lock = threading.Lock()

    # --- items -------------------------------------------------------------------

    def __contains__(self, pair_id: str) -> bool:
        return pair_id in self._pair_row or (pair_id.startswith(T2I_PREFIX) and pair_id in self._instr_span)

    def __len__(self) -> int:
        return len(self.item_ids)

    def facets(self) -> pa.Table:
        """pair_id, task, subtask, methods (space-joined) for every item: what queues are built from."""
        methods: dict[str, set[str]] = {}
        for pid, m in zip(self.instructions.column("pair_id").to_pylist(),
                          self.instructions.column("method").to_pylist()):
            methods.setdefault(pid, set()).add(m)
        rows = {"pair_id": [], "task": [], "subtask": [], "methods": []}
        tasks = self.pairs.column("task").to_pylist()
        subtasks = self.pairs.column("subtask").to_pylist()
        for pid in self.item_ids:
            i = self._pair_row.get(pid)
            rows["pair_id"].append(pid)
            rows["task"].append(tasks[i] if i is not None else "text_to_image")
            rows["subtask"].append(subtasks[i] if i is not None else "caption")
            rows["methods"].append(" ".join(sorted(methods.get(pid, ()))))
        return pa.table(rows)

    def item(self, pair_id: str) -> dict[str, Any]:
        """Everything the item page shows for one pair."""
        if pair_id not in self:
            raise KeyError(pair_id)
        i = self._pair_row.get(pair_id)
        if i is not None:
            p = self.pairs.slice(i, 1).to_pylist()[0]
            input_ids = [p["source_id"], *(p.get("extra_input_ids") or [])]
            target, mask, task, subtask = p["target_id"], p.get("mask_id"), p["task"], p["subtask"]
        else:
            input_ids, target, mask = [], pair_id[len(T2I_PREFIX):], None
            task, subtask = "text_to_image", "caption"
        lo, n = self._instr_span.get(pair_id, (0, 0))
        candidates, analysis, seen = [], None, set()
        for r in self.instructions.slice(lo, n).to_pylist():
            key = " ".join(r["instruction"].split())
            if key in seen:  # the same text from a rerun's table
                continue
            seen.add(key)
            candidates.append({"n": len(candidates) + 1, "variant": r["variant"], "method": r["method"],
                               "model": r["model"], "instruction": r["instruction"]})
            prov = _json(r.get("provenance"))
            if analysis is None and isinstance(prov.get("analysis"), dict):
                analysis = prov["analysis"]
        return {"pair_id": pair_id, "task": task, "subtask": subtask, "inputs": input_ids, "mask": mask,
                "target": target, "n_inputs": len(input_ids),
                "indicators": indicators_for(len(input_ids)) if input_ids else [],
                "candidates": candidates, "analysis": analysis}

    def image_ids_of(self, item: dict[str, Any]) -> list[str]:
        return [i for i in (*item["inputs"], item["mask"], item["target"]) if i]

    # --- images ------------------------------------------------------------------

    def _index_images(self, tables: list[str]) -> None:
        self.reader = ImageReader(tables, cache_groups=4)  # the tables' image index, read once
        used: set[str] = set(self.pairs.column("source_id").to_pylist()) | set(self.pairs.column("target_id").to_pylist())
        used |= {m for m in self.pairs.column("mask_id").to_pylist() if m}
        used |= {x for xs in self.pairs.column("extra_input_ids").to_pylist() if xs for x in xs}
        used |= {p[len(T2I_PREFIX):] for p in self._instr_span if p.startswith(T2I_PREFIX)}
        self.served = self.reader.present(used)  # only images an item of this run shows

    def has_image(self, image_id: str) -> bool:
        return bool(IMAGE_ID.match(image_id)) and image_id in self.served

    def image(self, image_id: str, size: int) -> tuple[bytes, str]:
        """(bytes, media type) of an image scaled so its longer side is at most `size`."""
        key = (image_id, size)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        data = self.reader.image_bytes([image_id])[image_id]
        out = _resize(data, size, self.reader.kind(image_id) == "mask")
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return out


def _resize(data: bytes, size: int, mask: bool) -> tuple[bytes, str]:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when that is enough
    if max(im.size) > size:
        im.thumbnail((size, size), Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if mask or im.mode not in ("RGB", "L"):
        im.save(buf, "PNG")
        return buf.getvalue(), "image/png"
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue(), "image/jpeg"


def _json(text: str | None) -> dict[str, Any]:
    try:
        v = json.loads(text or "{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}
