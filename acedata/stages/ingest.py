"""Ingest: image collections -> the content-addressed `images` table.

Every input ends in exactly one of `images`, `duplicates` (an exact pixel duplicate
of a kept image) or `quarantine`, so inputs = images + duplicates + quarantined.

Committed shards are never rewritten. A duplicate inside one unit never reaches the
images table; copies of one image in several units all stay in their shards, and two
more waves of units (`acedata.copies`: a shuffle by image_id, then one unit per bucket)
list every copy but one in the `duplicates` table (see `acedata.kept`): the copy kept is
the one with the smallest (source index, path inside the source) key, so the choice
depends on the spec and the corpus only, never on unit scheduling or bucket counts. The
driver holds unit ids and counts only; `finish` checks the accounting from manifests.
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

from acedata import copies, shards
from acedata.config import StageConfig, run_only
from acedata.errors import UserError
from acedata.images import Limits, Rejected, bombs_as_errors, decode, image_cell
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
    # 2: cross-unit duplicates listed by `cross-unit-bNNNNN` units (was one finish-written unit);
    # 3: listed by place (unit, part, row), committed by the storing unit's bucket (`cross-unit-nN-iI`)
    version = 3

    def input_digest(self) -> dict[str, Any]:
        # file bytes hashed in the run's id scheme: a sha256 run's key is what it always was
        return {"sources": [source_digest(r, self.config.source_digest, scheme=self.ctx.id_scheme)
                            for r in self.config.sources]}

    def plan(self) -> list[WorkUnit]:
        units: list[WorkUnit] = []
        for i, root in enumerate(self.config.sources):
            found = list_units(root, self.config.files_per_unit)
            if not found and not self.config.allow_empty:
                raise UserError(f"source {root!r} holds no files to ingest; check the path, "
                                "or set allow_empty: true to accept an empty source")
            units.extend(WorkUnit(content_unit_id(i, root, uid, payload), payload) for uid, payload in found)
        self._ingest_units = [u.id for u in units]
        return units

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        """Wave 1 buckets the stored copies by image_id, wave 2 decides each bucket, wave 3 lists
        the losing copies by the unit that stored them (`acedata.copies`).

        The bucket count follows the number of inputs: content only, never worker counts."""
        if wave == 0:
            self._copy_buckets = copies.bucket_count(counts.get("inputs", 0))
            return copies.shuffle_units(self._ingest_units, counts.get("images", 0), self._copy_buckets)
        if wave == 1:
            return copies.decide_units(self._copy_buckets)
        if wave == 2:
            return copies.index_units(self._copy_buckets, counts.get("copies_decided", 0))
        return []

    def _rank(self, uri: str, unit: str, row: int) -> tuple:
        return self.order_key(uri), unit, row

    def order_key(self, uri: str) -> tuple[int, str]:
        """Where an input sits in the spec: (source index, its path inside that source)."""
        roots = getattr(self, "_roots", None)
        if roots is None:  # once per stage, not per row a decide unit ranks
            roots = self._roots = [(r, (r + "/", r + "#")) for r in map(source_root, self.config.sources)]
        for i, (root, under) in enumerate(roots):
            if uri == root or uri.startswith(under):
                return i, uri[len(root):]
        return len(self.config.sources), uri

    def process(self, unit: WorkUnit) -> UnitResult:
        if copies.is_copies_unit(unit):
            return copies.run(unit, self.ctx.stage_dir, self.ctx.out("images"), self._rank)
        c: IngestConfig = self.config
        limits = Limits(c.max_pixels, c.min_side, c.max_aspect, c.max_side)
        rows: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        dups: list[dict[str, Any]] = []
        seen: set[str] = set()
        inputs = 0
        with bombs_as_errors():  # once per unit, not per image (see `decode`)
            for rec in read_unit(unit.payload, c.max_file_bytes):
                inputs += 1
                if rec.error:
                    bad.append(_quarantine(rec, *rec.error))
                    continue
                try:
                    d = decode(rec.data, limits, self.ctx.id_scheme)
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
        """Check the accounting from manifests and unit counts (no rows read) and drop the scratch."""
        copies.cleanup(self.ctx.stage_dir)
        counts.pop("copies_shuffled", None)
        counts.pop("copies_decided", None)
        cross = counts.pop("cross_unit_duplicates", 0)  # stored copies the decide units listed
        images = shards.count_rows(self.ctx.out("images")) - cross  # each image_id once
        dup = shards.count_rows(self.ctx.out("duplicates"))
        quarantined = shards.count_rows(self.ctx.out("quarantine"))
        counts.update(images=images, duplicates=dup, quarantine=quarantined)
        if images + dup + quarantined != counts.get("inputs", 0):
            raise RuntimeError(f"ingest lost rows: inputs {counts.get('inputs')} != {images}+{dup}+{quarantined}")
        return {"cross_unit_duplicates": cross}


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
