"""Ingest: image collections -> the content-addressed `images` table.

Every input ends in exactly one of `images`, `duplicates` (an exact pixel duplicate
of a kept image) or `quarantine`, so inputs = images + duplicates + quarantined.

Committed shards are never rewritten. A duplicate inside one unit never reaches the
images table; copies of one image in several units all stay in their shards, and
`finish` lists every copy but one in the `duplicates` table (see `acedata.kept`): the
copy kept is the one with the smallest (source index, path inside the source) key, so
the choice depends on the spec and the corpus only, never on unit scheduling.
Unit ids hash the source's index in the spec and paths relative to the source root,
so moving the corpus or the run directory changes no id, and a corpus in a bucket
(`s3://b/x`) gives the ids (and the rows) of the same files on a disk (`/tmp/x`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from acedata import shards
from acedata.config import StageConfig, run_only
from acedata.errors import UserError
from acedata.images import Limits, Rejected, decode, image_cell
from acedata.kept import CROSS_UNIT, commit_cross_unit, dropped_uris
from acedata.schemas import DUPLICATES, IMAGES, QUARANTINE
from acedata.source_digest import source_digest
from acedata.source_roots import source_root
from acedata.sources import Record, list_units, read_unit
from acedata.stage import Stage, UnitResult, WorkUnit, register


class IngestConfig(StageConfig):
    sources: list[str] = Field(min_length=1)  # folders, .parquet files, WebDataset .tar files
    # Limits are range-checked: a 0 would quarantine every input and still exit 0.
    max_pixels: int = Field(64_000_000, gt=0)
    min_side: int = Field(32, ge=1)
    max_aspect: float = Field(8.0, ge=1.0)  # long side / short side, so never below 1
    max_side: int | None = Field(4096, gt=0)
    max_file_bytes: int = Field(200 << 20, gt=0)
    files_per_unit: int = Field(64, ge=1)
    # A source with no files at all is almost always a wrong path; say so unless allowed.
    allow_empty: bool = False
    # How resume detects a changed corpus: file bytes (exact) or (size, mtime) (cheap at scale).
    source_digest: Literal["content", "metadata"] = run_only("content")



def _relative(obj: Any, root: str) -> Any:
    """`obj` with the source root taken off every path in it."""
    if isinstance(obj, str):
        return obj[len(root):] if obj == root or obj.startswith(root + "/") else obj
    if isinstance(obj, list):
        return [_relative(x, root) for x in obj]
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    return obj


# Reader hints that a listing may add (object sizes, sidecar names): not part of a unit's identity.
HINTS = ("sizes", "sidecars")


def content_unit_id(index: int, root: str, uid: str, payload: dict[str, Any]) -> str:
    """A unit id from the source's index and the unit's paths relative to its root (local or URI)."""
    core = {k: v for k, v in payload.items() if k not in HINTS}
    rel = json.dumps([index, _relative(core, source_root(root))], sort_keys=True)
    return f"{uid.split('-', 1)[0]}-{hashlib.sha256(rel.encode()).hexdigest()[:16]}"


@register
class Ingest(Stage):
    kind = "ingest"
    Config = IngestConfig
    outputs = {"images": IMAGES, "quarantine": QUARANTINE, "duplicates": DUPLICATES}

    def input_digest(self) -> dict[str, Any]:
        return {"sources": [source_digest(r, self.config.source_digest) for r in self.config.sources]}

    def plan(self) -> list[WorkUnit]:
        units: list[WorkUnit] = []
        for i, root in enumerate(self.config.sources):
            found = list_units(root, self.config.files_per_unit)
            if not found and not self.config.allow_empty:
                raise UserError(f"source {root!r} holds no files to ingest; check the path, "
                                "or set allow_empty: true to accept an empty source")
            units.extend(WorkUnit(content_unit_id(i, root, uid, payload), payload) for uid, payload in found)
        return units

    def order_key(self, uri: str) -> tuple[int, str]:
        """Where an input sits in the spec: (source index, its path inside that source)."""
        for i, root in enumerate(self.config.sources):
            root = source_root(root)
            if uri == root or uri.startswith((root + "/", root + "#")):
                return i, uri[len(root):]
        return len(self.config.sources), uri

    def process(self, unit: WorkUnit) -> UnitResult:
        c: IngestConfig = self.config
        limits = Limits(c.max_pixels, c.min_side, c.max_aspect, c.max_side)
        rows: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        dups: list[dict[str, Any]] = []
        seen: set[str] = set()
        inputs = 0
        for rec in read_unit(unit.payload, c.max_file_bytes):
            inputs += 1
            if rec.error:
                bad.append(_quarantine(rec, *rec.error))
                continue
            try:
                d = decode(rec.data, limits)
            except Rejected as r:
                bad.append(_quarantine(rec, r.reason, r.detail))
                continue
            except Exception as e:  # noqa: BLE001 - an unexpected decoder failure must not lose the row
                bad.append(_quarantine(rec, "decode_error", f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            if d.image_id in seen:
                dups.append({"source_uri": rec.uri, "image_id": d.image_id})
                continue
            seen.add(d.image_id)
            rows.append(_image_row(rec, d))
        return UnitResult(
            {
                "images": pa.Table.from_pylist(rows, IMAGES),
                "quarantine": pa.Table.from_pylist(bad, QUARANTINE),
                "duplicates": pa.Table.from_pylist(dups, DUPLICATES),
            },
            {"inputs": inputs},
        )

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        """List copies of one image held by several units in `duplicates` (no shard changes)."""
        images_dir, dup_dir = self.ctx.out("images"), self.ctx.out("duplicates")
        commit_cross_unit(dup_dir, self.cross_unit_duplicates)
        cross = sum(s["rows"] for s in shards.unit_fragment(dup_dir, CROSS_UNIT)["shards"])
        stored = shards.count_rows(images_dir)
        dup = shards.count_rows(dup_dir)
        quarantined = shards.count_rows(self.ctx.out("quarantine"))
        images = stored - cross  # each image_id once
        counts.update(images=images, duplicates=dup, quarantine=quarantined)
        if images + dup + quarantined != counts.get("inputs", 0):
            raise RuntimeError(f"ingest lost rows: inputs {counts.get('inputs')} != {images}+{dup}+{quarantined}")
        if len(dropped_uris([images_dir])) != dup:
            raise RuntimeError("ingest: duplicates table lists a source_uri twice")
        return {"cross_unit_duplicates": cross}

    def cross_unit_duplicates(self) -> list[dict[str, str]]:
        """Every stored copy of an image but the one with the smallest order key.

        Reads only `image_id`/`source_uri`; memory is linear in the number of images.
        """
        best: dict[str, tuple[tuple[int, str], str]] = {}
        later: list[dict[str, str]] = []
        for batch in shards.iter_batches(self.ctx.out("images"), columns=["image_id", "source_uri"], batch_size=65536):
            for image_id, uri in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                key = self.order_key(uri)
                prev = best.get(image_id)
                if prev is None:
                    best[image_id] = (key, uri)
                    continue
                loser = uri if prev[0] < key else prev[1]
                if prev[0] > key:
                    best[image_id] = (key, uri)
                later.append({"source_uri": loser, "image_id": image_id})
        return sorted(later, key=lambda r: (r["image_id"], self.order_key(r["source_uri"])))


def _quarantine(rec: Record, reason: str, detail: str) -> dict[str, Any]:
    return {"source_uri": rec.uri, "stage": "ingest", "reason": reason, "detail": detail}


def _image_row(rec: Record, d) -> dict[str, Any]:
    meta = dict(rec.meta)
    known = {k: meta.pop(k, None) for k in ("caption", "url", "license", "group")}
    if d.frames > 1:
        meta["frames"] = d.frames
    return {
        "image_id": d.image_id,
        "source_uri": rec.uri,
        "width": d.image.width,
        "height": d.image.height,
        "format": d.format,
        "image": image_cell(d.data),
        "kind": "image",
        "orig_width": d.orig_width,
        "orig_height": d.orig_height,
        "orig_format": d.orig_format,
        "orig_mode": d.orig_mode,
        **{k: (str(v) if v is not None else None) for k, v in known.items()},
        "meta": json.dumps(meta, default=str) if meta else None,
    }
