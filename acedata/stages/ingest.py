"""Ingest: image collections -> the content-addressed `images` table.

Every input ends in exactly one of `images`, `duplicates` (an exact pixel duplicate
of a kept image) or `quarantine`, so inputs = images + duplicates + quarantined.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from pydantic import Field

from acedata import shards
from acedata.config import StageConfig
from acedata.errors import UserError
from acedata.images import Limits, Rejected, decode, image_cell
from acedata.schemas import DUPLICATES, IMAGES, QUARANTINE
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


@register
class Ingest(Stage):
    kind = "ingest"
    Config = IngestConfig
    outputs = {"images": IMAGES, "quarantine": QUARANTINE, "duplicates": DUPLICATES}

    def plan(self) -> list[WorkUnit]:
        units: list[WorkUnit] = []
        for root in self.config.sources:
            found = list_units(root, self.config.files_per_unit)
            if not found and not self.config.allow_empty:
                raise UserError(f"source {root!r} holds no files to ingest; check the path, "
                                "or set allow_empty: true to accept an empty source")
            units.extend(WorkUnit(uid, payload) for uid, payload in found)
        return units

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
        """Collapse exact duplicates across units: the first unit (in id order) keeps the image."""
        moved = collapse_cross_unit_duplicates(self.ctx.out("images"), self.ctx.out("duplicates"))
        images = shards.count_rows(self.ctx.out("images"))
        dup = shards.count_rows(self.ctx.out("duplicates"))
        quarantined = shards.count_rows(self.ctx.out("quarantine"))
        counts.update(images=images, duplicates=dup, quarantine=quarantined)
        if images + dup + quarantined != counts.get("inputs", 0):
            raise RuntimeError(f"ingest lost rows: inputs {counts.get('inputs')} != {images}+{dup}+{quarantined}")
        return {"cross_unit_duplicates": moved}


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


def collapse_cross_unit_duplicates(images_dir: str, duplicates_dir: str) -> int:
    """Rewrite the (few) shards holding a later copy of an image kept by an earlier unit.

    Reads only `image_id`/`source_uri`; memory is linear in the number of images.
    """
    manifest = shards.read_manifest(images_dir)
    if manifest is None:
        return 0
    seen: set[str] = set()
    moved: list[dict[str, str]] = []
    fs, d = shards.resolve(images_dir)
    changed_units: dict[str, list[dict[str, Any]]] = {}
    units = sorted(shards.committed_units(images_dir))
    # Pass 1 (read-only): which rows are later copies. Recorded before any shard changes,
    # so a crash part-way through pass 2 loses nothing.
    for unit in units:
        for s in shards.unit_fragment(images_dir, unit)["shards"]:
            ids = shards.open_parquet(f"{images_dir}/{s['file']}").read(columns=["image_id", "source_uri"]).to_pylist()
            for r in ids:
                if r["image_id"] in seen:
                    moved.append(r)
                seen.add(r["image_id"])
    if moved:
        if "cross-unit" in shards.committed_units(duplicates_dir):
            prior = shards.unit_fragment(duplicates_dir, "cross-unit")["shards"]
            prior_rows = [r for s in prior for r in shards.read_table(f"{duplicates_dir}/{s['file']}").to_pylist()]
            moved = prior_rows + [m for m in moved if m["source_uri"] not in {p["source_uri"] for p in prior_rows}]
        w = shards.ShardWriter(duplicates_dir, DUPLICATES, unit="cross-unit")
        w.write(pa.Table.from_pylist(moved, DUPLICATES))
        w.commit()
    seen = set()
    for unit in units:
        frag = shards.unit_fragment(images_dir, unit)
        new_shards = []
        for s in frag["shards"]:
            path, uri = f"{d}/{s['file']}", f"{images_dir}/{s['file']}"  # fs path, URI
            ids = shards.open_parquet(uri).read(columns=["image_id", "source_uri"])
            keep = [i not in seen for i in ids.column("image_id").to_pylist()]
            seen.update(ids.column("image_id").to_pylist())
            if all(keep):
                new_shards.append(s)
                continue
            full = shards.open_parquet(uri).read()
            kept = full.filter(pa.array(keep))
            tmp = f"{d}/.tmp-rewrite-{s['file']}"
            import pyarrow.parquet as pq

            pq.write_table(kept, tmp, compression="zstd", filesystem=fs)
            fs.move(tmp, path)
            new_shards.append(
                {"file": s["file"], "rows": kept.num_rows, "bytes": fs.get_file_info(path).size,
                 "sha256": shards.sha256_file(fs, path)}
            )
        if new_shards != frag["shards"]:
            changed_units[unit] = new_shards
    for unit, new_shards in changed_units.items():
        frag = shards.unit_fragment(images_dir, unit)
        frag["shards"] = new_shards
        shards.write_bytes_atomic(fs, f"{d}/{shards.UNITS_DIR}/{unit}.json", json.dumps(frag).encode())
    shards.finalize_manifest(images_dir, IMAGES, table="images")
    shards.finalize_manifest(duplicates_dir, DUPLICATES, table="duplicates")
    return len(moved)
