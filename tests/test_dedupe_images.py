"""Images tables hold each image_id once, even when two units draw the same image."""

from __future__ import annotations

import collections
import os

import pyarrow as pa

from acedata import dedupe, shards
from acedata.pipeline import run_stages
from acedata.schemas import IMAGES, conform
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig


def _rows(ids: list[str], unit: str) -> pa.Table:
    return conform(pa.Table.from_pylist([{"image_id": i, "source_uri": f"synth://{unit}/{i}", "width": 1,
                                          "height": 1, "format": "PNG", "image": {"bytes": i.encode(), "path": None},
                                          "kind": "mask"} for i in ids], IMAGES), IMAGES)


def _table(tmp_path) -> str:
    d = str(tmp_path / "images")
    for unit, ids in (("img-00001", ["b", "c", "a"]), ("img-00000", ["a", "x"]), ("img-00002", ["c", "d", "c"])):
        w = shards.ShardWriter(d, IMAGES, unit=unit)
        w.write(_rows(ids, unit))
        w.commit()
    shards.finalize_manifest(d, IMAGES, table="images")
    return d


def test_first_unit_keeps_each_image(tmp_path):
    d = _table(tmp_path)
    assert dedupe.drop_later_copies(d) == 3  # a (img-00001), c and c (img-00002)
    shards.finalize_manifest(d, IMAGES, table="images")
    t = shards.read_table(d, ["image_id", "source_uri"]).to_pylist()
    assert sorted(r["image_id"] for r in t) == ["a", "b", "c", "d", "x"]
    owner = {r["image_id"]: r["source_uri"].split("/")[2] for r in t}
    assert owner["a"] == "img-00000" and owner["c"] == "img-00001"  # unit-id order, not write order
    assert shards.validate(d) == []
    assert dedupe.drop_later_copies(d) == 0  # idempotent


def test_crash_after_the_swap_is_cleaned_by_the_rerun(tmp_path):
    d = _table(tmp_path)
    fs, p = shards.resolve(d)
    frag = shards.unit_fragment(d, "img-00002")
    before = frag["shards"][0]["file"]
    dedupe.drop_later_copies(d)
    # simulate the crash: the superseded shard was not yet deleted
    with fs.open_output_stream(f"{p}/{before}") as f:
        f.write(b"left over")
    dedupe.drop_later_copies(d)
    shards.finalize_manifest(d, IMAGES, table="images")
    assert not os.path.exists(f"{p}/{before}") and shards.validate(d) == []


def test_synthesize_images_are_unique(demo_corpus, tmp_path):
    out = str(tmp_path / "run")
    cfgs = [IngestConfig(name="ingest", sources=[os.path.join(demo_corpus, "chelsea"),
                                                 os.path.join(demo_corpus, "coffee")]),
            SynthesizeConfig(name="synthesize", synthesizers=["remove_add", "grayscale", "inpaint_box"],
                             images_per_unit=1, max_side=96, chain_fraction=0)]
    run = run_stages(cfgs, out, executor="local")
    ids = shards.read_table(f"{out}/synthesize/images", ["image_id"]).column(0).to_pylist()
    assert ids and max(collections.Counter(ids).values()) == 1
    assert run["stages"][1]["counts"]["images"] == len(ids)
    assert shards.validate(f"{out}/synthesize/images") == []
