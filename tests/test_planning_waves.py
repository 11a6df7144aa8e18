"""Ingest's duplicate decision and synthesize's planning run in waves on workers (issue 12, item 1).

Checked against single-process references on small data: ingest's cross-unit duplicates equal
the in-memory rule whatever the bucket and shuffle-unit counts; synthesize's output is the same
for the same images in other ingest layouts and unit sizes; and the driver's `plan`,
`next_wave` and `finish` read no rows at all (row reads raise while they run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from acedata import copies, dedupe, shards
from acedata.digest import run_digest
from acedata.images import encode
from acedata.kept import CROSS_UNIT, read_kept
from acedata.pipeline import run_stages
from acedata.schemas import IMAGES, conform
from acedata.stages.ingest import Ingest, IngestConfig
from acedata.stages.synthesize import Synthesize, SynthesizeConfig
from acedata.synth import plan as synth_plan


def _png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    return encode(Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), "PNG")


def _dup_corpus(d) -> list[str]:
    """Three sources; copies of one image across sources, across units of one source, inside one unit."""
    layout = {"a": [0, 1, 2, 3, 4, 5, 1], "b": [6, 3, 5, 7, 3, 8], "c": [9, 0, 9, 8, 2, 10]}
    roots = []
    for name, images in layout.items():
        root = os.path.join(str(d), name)
        os.makedirs(root)
        for k, i in enumerate(images):
            with open(os.path.join(root, f"f{k:02d}.png"), "wb") as f:
                f.write(_png(i))
        roots.append(root)
    return roots


def _reference_duplicates(stage: Ingest, images_dir: str) -> list[tuple[str, str]]:
    """The rule on one process: of the stored copies of an image, all but the smallest order key."""
    t = shards.read_table(images_dir, columns=["image_id", "source_uri"])
    by_id: dict[str, list[str]] = defaultdict(list)
    for i, u in zip(t.column("image_id").to_pylist(), t.column("source_uri").to_pylist()):
        by_id[i].append(u)
    return sorted((u, i) for i, uris in by_id.items() for u in sorted(uris, key=stage.order_key)[1:])


def _cross_unit_rows(dup_dir: str) -> list[tuple[str, str]]:
    out = []
    for unit in shards.committed_units(dup_dir):
        if unit.startswith(CROSS_UNIT):
            for s in shards.unit_fragment(dup_dir, unit)["shards"]:
                t = pq.read_table(os.path.join(dup_dir, s["file"]))
                out += list(zip(t.column("source_uri").to_pylist(), t.column("image_id").to_pylist()))
    return sorted(out)


@pytest.mark.parametrize("rows_per_bucket,rows_per_shuffle", [(1 << 20, 1 << 20), (2, 3), (5, 1)])
def test_ingest_cross_unit_duplicates_equal_the_in_memory_rule(tmp_path, monkeypatch, rows_per_bucket,
                                                                rows_per_shuffle):
    monkeypatch.setattr(copies, "ROWS_PER_BUCKET", rows_per_bucket)
    monkeypatch.setattr(copies, "ROWS_PER_SHUFFLE", rows_per_shuffle)
    roots = _dup_corpus(tmp_path / "corpus")
    cfg = IngestConfig(name="ingest", sources=roots, files_per_unit=2)
    out = str(tmp_path / "run")
    s = run_stages([cfg], out, executor="local")["stages"][0]
    images_dir, dup_dir = f"{out}/ingest/images", f"{out}/ingest/duplicates"
    got = _cross_unit_rows(dup_dir)
    assert got == _reference_duplicates(Ingest(cfg, None), images_dir)
    assert len(got) == s["cross_unit_duplicates"] >= 6
    decide_units = [u for u in shards.committed_units(dup_dir) if u.startswith(CROSS_UNIT)]
    assert len(decide_units) == copies.bucket_count(s["counts"]["inputs"])
    c = s["counts"]
    assert c["images"] == 11 and c["inputs"] == 19 == c["images"] + c["duplicates"] + c["quarantine"]
    kept = read_kept(images_dir, ["image_id", "source_uri"])
    assert kept.num_rows == 11 == len(set(kept.column("image_id").to_pylist()))
    assert not os.path.exists(f"{out}/ingest/_shuffle")  # scratch removed by finish


def test_copies_decide_is_independent_of_buckets(tmp_path):
    """Synthesize's rule (smallest photo id, then unit, then row) gives one answer for any bucket count."""
    d = str(tmp_path / "images")
    rng = np.random.default_rng(3)
    for k, u in enumerate(("img-b00002", "img-b00000", "ref-b00001")):
        ids = [f"x{int(i)}" for i in rng.integers(0, 12, 9)]
        ids = list(dict.fromkeys(ids))  # a unit stores an image once; a photo is in one unit
        rows = [{"image_id": i, "source_uri": f"synth://s/p{int(rng.integers(0, 5))}-{2 - k}", "width": 1, "height": 1,
                 "format": "PNG", "image": {"bytes": i.encode(), "path": None}, "kind": "mask"} for i in ids]
        w = shards.ShardWriter(d, IMAGES, unit=u)
        w.write(conform(pa.Table.from_pylist(rows, IMAGES), IMAGES))
        w.commit()
    everything = copies._unit_rows(d, ["img-b00000", "img-b00002", "ref-b00001"])
    want = sorted((r["source_uri"], r["image_id"]) for r in dedupe.later_copies(d, rank=synth_plan.copy_rank))
    assert want  # the data holds copies
    places = []
    for n in (1, 3, 8):
        got = []
        for b in range(n):
            part = everything.filter(pa.array(copies.shuffle.bucket_of(everything.column("image_id"), n) == b))
            got += copies.decide(part, synth_plan.copy_rank).to_pylist()
        assert sorted((r["source_uri"], r["image_id"]) for r in got) == sorted(want)
        places.append(sorted((r["unit"], r["part"], r["row"]) for r in got))  # the losing copies' places
    assert places[0] == places[1] == places[2] and len(places[0]) == len(want)


# --- synthesize -----------------------------------------------------------------------------


def _synth_cfg(**kw) -> SynthesizeConfig:
    base = {"name": "synthesize", "synthesizers": ["grayscale", "inpaint_box", "mosaic", "canny", "reference"],
                "per_image": 2, "max_side": 64, "chain_fraction": 0.5, "images_per_unit": 4}
    return SynthesizeConfig(**{**base, **kw})


def _run_synth(demo_corpus, out, files_per_unit: int, **kw) -> dict:
    roots = [os.path.join(demo_corpus, g) for g in ("astronaut", "chelsea", "coffee")]
    return run_stages([IngestConfig(name="ingest", sources=roots, files_per_unit=files_per_unit), _synth_cfg(**kw)],
                      str(out), executor="local")["stages"][1]


def _synth_digests(out) -> dict:
    return {k: v for k, v in run_digest(str(out))["tables"].items() if k.startswith("synthesize/")}


def _kept_images(out) -> set:
    t = read_kept(f"{out}/synthesize/images").to_pylist()
    return {(r["image_id"], r["source_uri"], r["meta"], hashlib.sha256(r["image"]["bytes"]).hexdigest()) for r in t}


def test_synthesize_output_independent_of_ingest_layout_and_unit_sizes(demo_corpus, tmp_path, monkeypatch):
    one = _run_synth(demo_corpus, tmp_path / "one", files_per_unit=64)  # 3 ingest shards
    _run_synth(demo_corpus, tmp_path / "many", files_per_unit=1)  # 12 ingest shards
    assert shards.count_rows(f"{tmp_path}/one/ingest/images") == shards.count_rows(f"{tmp_path}/many/ingest/images")
    assert len(shards.list_shards(f"{tmp_path}/many/ingest/images")) == 12
    assert one["counts"]["photos"] == 12 and one["reference_sets"] == "ingest_groups"
    assert {"low_level/grayscale", "reference_generation/multi_reference"} <= set(one["pairs_by_task"])
    assert _synth_digests(tmp_path / "one") == _synth_digests(tmp_path / "many")
    # other unit sizes and bucket counts: the same pairs and kept images (which units stored a
    # copy of an image two photos drew may differ; the kept copy does not)
    monkeypatch.setattr(copies, "ROWS_PER_BUCKET", 3)
    monkeypatch.setattr(copies, "ROWS_PER_SHUFFLE", 2)
    small = _run_synth(demo_corpus, tmp_path / "small", files_per_unit=5, images_per_unit=1, groups_per_unit=1)
    assert small["units"] > one["units"]
    a, b = _synth_digests(tmp_path / "one"), _synth_digests(tmp_path / "small")
    for t in ("synthesize/pairs", "synthesize/quarantine"):
        assert a[t] == b[t], t
    assert _kept_images(tmp_path / "one") == _kept_images(tmp_path / "small")
    assert small["pairs_by_task"] == one["pairs_by_task"] and small["counts"]["images"] == one["counts"]["images"]


def test_max_images_is_a_hash_sample_of_image_ids(demo_corpus, tmp_path):
    s = _run_synth(demo_corpus, tmp_path / "a", files_per_unit=64, max_images=5, synthesizers=["grayscale"])
    t = _run_synth(demo_corpus, tmp_path / "b", files_per_unit=2, max_images=5, synthesizers=["grayscale"])
    ids = sorted(set(shards.read_table(f"{tmp_path}/a/ingest/images", columns=["image_id"]).column(0).to_pylist()))
    threshold = int(5 / len(ids) * 2**64)
    want = [i for i in ids if synth_plan.sampled(i, threshold)]
    assert s["counts"]["photos"] == t["counts"]["photos"] == len(want) and 1 <= len(want) < len(ids)
    prov = shards.read_table(f"{tmp_path}/a/synthesize/pairs", columns=["provenance"]).column(0).to_pylist()
    assert {json.loads(p)["origin_image_id"] for p in prov} == set(want)
    assert _synth_digests(tmp_path / "a") == _synth_digests(tmp_path / "b")


# --- the driver reads no rows -----------------------------------------------------------------


class RowRead(AssertionError):
    pass


def _guard_driver(monkeypatch) -> tuple[list[str], dict[str, int]]:
    """Row reads (Parquet data pages) raise while a stage's plan / next_wave / finish runs; footers
    and JSON manifests stay readable. Returns (the guarded calls made, the guard's state)."""
    state = {"driver": 0}
    calls: list[str] = []

    def guarded(name, fn):
        def wrapper(*a, **kw):
            if state["driver"]:
                raise RowRead(f"{name} read rows on the driver")
            return fn(*a, **kw)
        return wrapper

    for name in ("read", "iter_batches", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, name, guarded(f"ParquetFile.{name}", getattr(pq.ParquetFile, name)))
    monkeypatch.setattr(pq, "read_table", guarded("read_table", pq.read_table))

    def driver(cls, name):
        fn = getattr(cls, name)

        def wrapper(self, *a, **kw):
            calls.append(f"{cls.kind}.{name}")
            state["driver"] += 1
            try:
                return fn(self, *a, **kw)
            finally:
                state["driver"] -= 1
        monkeypatch.setattr(cls, name, wrapper)

    for cls in (Ingest, Synthesize):
        for name in ("plan", "next_wave", "finish"):
            driver(cls, name)
    return calls, state


def test_driver_planning_reads_no_rows(demo_corpus, tmp_path, monkeypatch):
    calls, state = _guard_driver(monkeypatch)
    state["driver"] += 1  # the guard itself: a row read on the driver raises
    with pytest.raises(RowRead):
        shards.read_table(_one_parquet(tmp_path))
    assert shards.count_rows(_one_parquet(tmp_path)) == 1  # footers stay readable
    state["driver"] -= 1
    roots = [os.path.join(demo_corpus, g) for g in ("astronaut", "chelsea", "coffee")]
    shutil.copytree(roots[0], tmp_path / "copy")  # copies across sources: the duplicate waves run
    cfgs = [IngestConfig(name="ingest", sources=[*roots, str(tmp_path / "copy")], files_per_unit=3),
            _synth_cfg(max_images=8)]
    run = run_stages(cfgs, str(tmp_path / "run"), executor="local")
    assert run["stages"][0]["cross_unit_duplicates"] == 4
    assert run["stages"][1]["counts"]["pairs"] > 0
    assert {"ingest.plan", "ingest.next_wave", "ingest.finish", "synthesize.plan", "synthesize.next_wave",
            "synthesize.finish"} <= set(calls)


def _one_parquet(tmp_path) -> str:
    p = str(tmp_path / "one.parquet")
    pq.write_table(pa.table({"x": [1]}), p)
    return p
