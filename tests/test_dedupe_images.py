"""Images tables show each image_id once, even when two units draw the same image, and no
committed shard is rewritten to get there: later copies are listed in `duplicates`."""

from __future__ import annotations

import collections
import os

import pyarrow as pa

from acedata import dedupe, shards
from acedata.kept import read_kept
from acedata.lookup import ImageStore
from acedata.pipeline import run_stages
from acedata.schemas import IMAGES, conform
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig


def _rows(ids: list[str], unit: str) -> pa.Table:
    # one source can yield several images: the uri names the source, not the row
    return conform(pa.Table.from_pylist([{"image_id": i, "source_uri": f"synth://{unit}/src", "width": 1,
                                          "height": 1, "format": "PNG", "image": {"bytes": i.encode(), "path": None},
                                          "kind": "mask"} for i in ids], IMAGES), IMAGES)


def _table(tmp_path) -> str:
    d = str(tmp_path / "images")
    for unit, ids in (("img-00001", ["b", "c", "a"]), ("img-00000", ["a", "x"]), ("img-00002", ["c", "d"])):
        w = shards.ShardWriter(d, IMAGES, unit=unit)
        w.write(_rows(ids, unit))
        w.commit()
    shards.finalize_manifest(d, IMAGES, table="images")
    return d


def test_first_unit_keeps_each_image(tmp_path):
    d = _table(tmp_path)
    later = dedupe.later_copies(d)
    # a: img-00000 is first in unit-id order (not write order); c: img-00001 before img-00002
    assert sorted((r["image_id"], r["source_uri"]) for r in later) == [
        ("a", "synth://img-00001/src"), ("c", "synth://img-00002/src")]
    assert dedupe.later_copies(d) == later  # read-only, so the same answer twice


def test_listed_copies_are_skipped_by_readers_without_rewriting(tmp_path):
    d = _table(tmp_path)
    before = {s["file"]: s["sha256"] for s in shards.read_manifest(d)["shards"]}
    dup = str(tmp_path / "duplicates")
    from acedata.schemas import DUPLICATES

    shards.write_table(dup, pa.Table.from_pylist(dedupe.later_copies(d), DUPLICATES), DUPLICATES, unit="cross-unit")
    kept = read_kept([d], ["image_id", "source_uri"]).to_pylist()
    assert sorted(r["image_id"] for r in kept) == ["a", "b", "c", "d", "x"]
    owner = {r["image_id"]: r["source_uri"].split("/")[2] for r in kept}
    assert owner["a"] == "img-00000" and owner["c"] == "img-00001"
    # b shares its source uri with the listed copy of a, and is still kept
    assert owner["b"] == "img-00001"
    assert ImageStore([d]).image_bytes(["a", "c"]) == {"a": b"a", "c": b"c"}
    assert {s["file"]: s["sha256"] for s in shards.read_manifest(d)["shards"]} == before
    assert shards.validate(d) == []


def test_synthesize_images_are_unique(demo_corpus, tmp_path):
    out = str(tmp_path / "run")
    cfgs = [IngestConfig(name="ingest", sources=[os.path.join(demo_corpus, "chelsea"),
                                                 os.path.join(demo_corpus, "coffee")]),
            SynthesizeConfig(name="synthesize", synthesizers=["remove_add", "grayscale", "inpaint_box"],
                             images_per_unit=1, max_side=96, chain_fraction=0)]
    run = run_stages(cfgs, out, executor="local")
    ids = read_kept([f"{out}/synthesize/images"], ["image_id"]).column(0).to_pylist()
    assert ids and max(collections.Counter(ids).values()) == 1
    assert run["stages"][1]["counts"]["images"] == len(ids)
    assert shards.validate(f"{out}/synthesize/images") == []
    assert shards.validate(f"{out}/synthesize/duplicates") == []
