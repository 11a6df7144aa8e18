"""Synthesize's plan, in waves: the driver reads manifests and unit fragments, never rows.

What a photo gets depends only on its image_id and the spec: its synthesizers (`rotation`),
its random seeds (`Synthesize._rng`), whether `max_images` samples it (`sampled`); never shard
layout, unit sizes or how many units there are. The waves (`Synthesize.next_wave`):

0. `scan-*`: one unit per shard of every input images table, of their `duplicates` tables and
   (with a group synthesizer) of the `pairs` tables; each writes photo rows, listed copies or
   mined-set members to hash buckets by image_id (`acedata.shuffle`).
1. `img-bNNNNN`: one unit per photo bucket: skips listed copies, keeps one row per image_id
   (first table, then shard, then row: `ImageReader`'s rule), applies the sample, synthesizes
   each photo (image_id order) and writes subject-set members (mined `set_id`, ingest `group`)
   to buckets by set.
2. `sets-bNNNNN` (group synthesizers only): counts sets of >= 2 members by origin: mined sets
   when there is any, else ingest groups (the stage's rule since it has had reference pairs).
3. `ref-bNNNNN`: one unit per set bucket: reference pairs from the chosen origin's sets
   (members in image_id order, the first `reference_max_set`).
4. `copies-*`, `cross-unit-*` (`acedata.copies`): images two units both drew; the copy drawn
   from the smallest photo id is kept.

`max_images` is a hash-threshold sample: a photo is read when a hash of its image_id falls below
max_images / R of the hash range, R the input tables' kept rows (manifest rows less listed
copies), so about max_images photos (fewer when the tables also hold masks or conditions); the
same photos whatever the layout, and a larger cap keeps every photo a smaller one took.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from acedata import copies, shards, shuffle
from acedata.kept import Kept, cross_unit_rows, keep_mask, listed_by_key, row_key
from acedata.stage import RunContext, UnitResult, WorkUnit

SCRATCH = "_shuffle/synth"
PHOTO_ROWS = pa.schema([("image_id", pa.string()), ("group", pa.string()), ("source_uri", pa.string()),
                        ("t", pa.int32()), ("s", pa.int32()), ("r", pa.int64())])
LISTED = pa.schema([("image_id", pa.string()), ("source_uri", pa.string())])
MEMBERS = pa.schema([("image_id", pa.string()), ("set_key", pa.string())])
MINED, GROUP = "m:", "g:"  # set keys: a mined set_id or an ingest group
ROUTE_PHOTOS = 100_000  # photos per photo unit when only group synthesizers run (see first_wave)


def h64(*parts: Any) -> int:
    """A stable 64-bit hash of `parts` (the same on every machine, process and run)."""
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "big")


def rotation(seed: int, image_id: str) -> int:
    """Where a photo starts in the synthesizer rotation (`per_image`): a seeded hash of its id."""
    return h64("rotate", seed, image_id)


def set_index(seed: int, set_key: str) -> int:
    return h64("set", seed, set_key)


def sampled(image_id: str, threshold: int | None) -> bool:
    return threshold is None or h64("sample", image_id) < threshold


def _dir(stage_dir: str, part: str) -> str:
    return posixpath.join(stage_dir, SCRATCH, part)


# --- driver ----------------------------------------------------------------------------


class WavePlan:
    """The driver's state for one run: bucket counts, the phase of each wave, a few tallies."""

    def __init__(self, config: Any, ctx: RunContext, image_synths: bool, group_synths: bool) -> None:
        self.config, self.ctx = config, ctx
        self.image_synths, self.group_synths = image_synths, group_synths
        self.phases: list[str] = []
        self.writers: list[str] = []  # units that wrote images
        self.stored = 0
        self.reference_origin = "not requested"

    def first_wave(self) -> list[WorkUnit]:
        c = self.config
        tables = self.ctx.input("images")
        rows = sum(shards.count_rows(t) - cross_unit_rows(t) for t in tables)
        photos = min(rows, c.max_images) if c.max_images else rows
        self.threshold = int(c.max_images / rows * 2**64) if c.max_images and c.max_images < rows else None
        # Without an image synthesizer a photo unit only routes set members (ids, no pixels): a
        # routing bucket holds up to ROUTE_PHOTOS of them, not a synthesis unit's few photos.
        per_unit = c.photos_per_unit() if self.image_synths or c.images_per_unit is not None else ROUTE_PHOTOS
        self.n = shuffle.bucket_count(photos, per_unit)
        self.m = shuffle.bucket_count(photos, c.sets_per_unit() * c.reference_max_set) if self.group_synths else 0
        units = []
        for t, table in enumerate(tables):
            for s, uri in enumerate(shards.list_shards(table)):
                units.append(WorkUnit(f"scan-t{t:03d}-{s:06d}", {"scan": "photos", "shard": uri, "t": t, "s": s,
                                                                  "buckets": self.n, "threshold": self.threshold}))
            dup = posixpath.join(posixpath.dirname(table.rstrip("/")), "duplicates")
            if listed_by_key(table):  # an older listing; a by-place one is looked up by each photo scan
                units += [WorkUnit(f"scan-t{t:03d}-dup-{s:06d}", {"scan": "listed", "shard": uri, "buckets": self.n})
                          for s, uri in enumerate(shards.list_shards(dup))]
        if self.group_synths:
            for p, table in enumerate(self.ctx.inputs.get("pairs", [])):
                units += [WorkUnit(f"scan-p{p:03d}-{s:06d}", {"scan": "members", "shard": uri, "buckets": self.n})
                          for s, uri in enumerate(shards.list_shards(table))]
        return self._phase("scan", units)

    def _phase(self, name: str, units: list[WorkUnit]) -> list[WorkUnit]:
        self.phases.append(name)
        return units

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        phase = self.phases[wave]
        if phase in ("img", "ref"):
            self.stored += counts.get("images", 0)
        if phase == "scan":
            units = [WorkUnit(f"img-b{b:05d}", {"photos": b, "per_image": self.image_synths,
                                                "set_buckets": self.m}) for b in range(self.n)]
            if self.image_synths:
                self.writers += [u.id for u in units]
            return self._phase("img", units)
        if phase == "img" and self.group_synths:
            return self._phase("sets", [WorkUnit(f"sets-b{b:05d}", {"count_sets": b}) for b in range(self.m)])
        if phase == "sets":
            origin = MINED if counts.get("sets_mined") else GROUP if counts.get("sets_grouped") else None
            self.reference_origin = {MINED: "pair_mining_sets", GROUP: "ingest_groups", None: "none"}[origin]
            if origin is not None:
                units = [WorkUnit(f"ref-b{b:05d}", {"ref_sets": b, "origin": origin}) for b in range(self.m)]
                self.writers += [u.id for u in units]
                return self._phase("ref", units)
        if phase in ("img", "sets", "ref"):
            self.copy_buckets = copies.bucket_count(self.stored)
            return self._phase("copies", copies.shuffle_units(self.writers, self.stored, self.copy_buckets))
        if phase == "copies":
            return self._phase("decide", copies.decide_units(self.copy_buckets))
        if phase == "decide":
            return self._phase("index", copies.index_units(self.copy_buckets, counts.get("copies_decided", 0)))
        return []


def copy_rank(uri: str, unit: str, row: int) -> tuple:
    """Synthesize's rule for an image two units drew: the copy from the smallest photo id is kept
    (`synth://<synthesizer>/<photo id>`), then the unit (img before ref), then the row."""
    return uri.rsplit("/", 1)[-1], unit, row


# --- workers -----------------------------------------------------------------------------


def is_bookkeeping(unit: WorkUnit) -> bool:
    """Units that only move ids (scan, set counts): no synthesizer runs in them."""
    return "scan" in unit.payload or "count_sets" in unit.payload


def bookkeeping(unit: WorkUnit, stage_dir: str) -> UnitResult:
    p = unit.payload
    if "count_sets" in p:
        sets = _sets(stage_dir, p["count_sets"])
        return UnitResult({}, {"sets_mined": sum(k.startswith(MINED) and len(v) >= 2 for k, v in sets.items()),
                               "sets_grouped": sum(k.startswith(GROUP) and len(v) >= 2 for k, v in sets.items())})
    pf = shards.open_parquet(p["shard"])
    names = pf.schema_arrow.names
    if p["scan"] == "listed":
        t = pf.read(columns=["image_id", "source_uri"])
        shuffle.write_buckets(t, "image_id", p["buckets"], _dir(stage_dir, "listed"), unit.id)
        return UnitResult({}, {})
    if p["scan"] == "members":
        t = pf.read(columns=["source_id", "target_id", "set_id"])
        t = t.filter(pc.is_valid(t.column("set_id")))
        key = pa.array([f"{MINED}{s}" for s in t.column("set_id").to_pylist()], pa.string())
        m = pa.concat_tables([pa.table({"image_id": t.column(c), "set_key": key}, MEMBERS)
                              for c in ("source_id", "target_id")])
        shuffle.write_buckets(m, "image_id", p["buckets"], _dir(stage_dir, "members"), unit.id)
        return UnitResult({}, {})
    t = pf.read(columns=[c for c in ("image_id", "kind", "group", "source_uri") if c in names])
    n = t.num_rows
    keep = [(k is None or k == "image") and sampled(i, p["threshold"]) for i, k in
            zip(t.column("image_id").to_pylist(), t.column("kind").to_pylist() if "kind" in names else [None] * n)]
    for r in Kept().skipped(p["shard"]):  # listed copies, by place (an older listing: the "listed" scan)
        keep[r] = False
    rows = pa.table({"image_id": t.column("image_id"),
                     "group": t.column("group") if "group" in names else pa.nulls(n, pa.string()),
                     "source_uri": t.column("source_uri") if "source_uri" in names else pa.nulls(n, pa.string()),
                     "t": pa.array([p["t"]] * n, pa.int32()), "s": pa.array([p["s"]] * n, pa.int32()),
                     "r": pa.array(range(n), pa.int64())}, PHOTO_ROWS).filter(pa.array(keep, pa.bool_()))
    shuffle.write_buckets(rows, "image_id", p["buckets"], _dir(stage_dir, "photos"), unit.id)
    return UnitResult({}, {})


def photo_unit(unit: WorkUnit, stage_dir: str) -> tuple[list[str], dict[str, int]]:
    """The bucket's photos (image_id order) and, when sets are wanted, their set memberships
    written to the set buckets."""
    p, b = unit.payload, unit.payload["photos"]
    part = shuffle.read_bucket(_dir(stage_dir, "photos"), b, schema=PHOTO_ROWS)
    listed = shuffle.read_bucket(_dir(stage_dir, "listed"), b, schema=LISTED)
    if listed.num_rows and part.num_rows:
        skip = {row_key(u, i) for u, i in zip(listed.column("source_uri").to_pylist(),
                                              listed.column("image_id").to_pylist())}
        mask = keep_mask(part.column("source_uri"), part.column("image_id"), skip)
        part = part if mask is None else part.filter(mask)
    part = part.sort_by([("image_id", "ascending"), ("t", "ascending"), ("s", "ascending"), ("r", "ascending")])
    group: dict[str, str | None] = {}
    for i, g in zip(part.column("image_id").to_pylist(), part.column("group").to_pylist()):
        group.setdefault(i, g)  # the first copy's row (sorted by table, shard, row)
    ids = list(group)
    if p["set_buckets"]:
        members = shuffle.read_bucket(_dir(stage_dir, "members"), b, schema=MEMBERS)
        mined = [(k, i) for i, k in zip(members.column("image_id").to_pylist(), members.column("set_key").to_pylist())
                 if i in group]
        grouped = [(GROUP + g, i) for i, g in group.items() if g]
        rows = pa.table({"image_id": [i for _, i in mined + grouped], "set_key": [k for k, _ in mined + grouped]},
                        MEMBERS)
        shuffle.write_buckets(rows, "set_key", p["set_buckets"], _dir(stage_dir, "sets"), unit.id)
    return ids, {"photos": len(ids)}


def _sets(stage_dir: str, b: int) -> dict[str, list[str]]:
    """The subject sets of one set bucket: key -> distinct members in image_id order."""
    t = shuffle.read_bucket(_dir(stage_dir, "sets"), b, schema=MEMBERS)
    sets: dict[str, set[str]] = defaultdict(set)
    for i, k in zip(t.column("image_id").to_pylist(), t.column("set_key").to_pylist()):
        sets[k].add(i)
    return {k: sorted(v) for k, v in sorted(sets.items())}


def ref_sets(unit: WorkUnit, stage_dir: str, max_set: int, seed: int) -> list[tuple[int, list[str]]]:
    """(set index, members) of the chosen origin's sets of >= 2 members in this unit's bucket."""
    p = unit.payload
    if "ref_sets" not in p:
        return []
    return [(set_index(seed, k), members[:max_set]) for k, members in _sets(stage_dir, p["ref_sets"]).items()
            if k.startswith(p["origin"]) and len(members) >= 2]


# --- the summary, tallied by units ------------------------------------------------------------


def tally(tables: dict[str, pa.Table]) -> dict[str, int]:
    """Per-unit counts `finish` sums instead of reading the pairs and quarantine tables back."""
    out: dict[str, int] = defaultdict(int)
    pairs = tables.get("pairs")
    if pairs is not None and pairs.num_rows:
        for task, sub in zip(pairs.column("task").to_pylist(), pairs.column("subtask").to_pylist()):
            out[f"by_task.{task}/{sub}"] += 1
        out["chained_pairs"] = pairs.num_rows - pairs.column("parent_pair_id").null_count
    bad = tables.get("quarantine")
    if bad is not None:
        for r in bad.column("reason").to_pylist():
            out[f"reason.{r}"] += 1
    return dict(out)


def pop_tally(counts: dict[str, int]) -> tuple[dict[str, int], int, dict[str, int]]:
    """(pairs by task/subtask, chained pairs, quarantine reasons), taken out of `counts`."""
    per = {k.split(".", 1)[1]: counts.pop(k) for k in sorted(counts) if k.startswith("by_task.")}
    reasons = {k.split(".", 1)[1]: counts.pop(k) for k in sorted(counts) if k.startswith("reason.")}
    for k in ("sets_mined", "sets_grouped", "copies_shuffled", "copies_decided"):
        counts.pop(k, None)
    return per, counts.pop("chained_pairs", 0), reasons
