"""Listed copies are named by place (storing unit, shard part, row): a reader of one images shard
looks up only its unit's bucket of the listing, and a file ingested twice under one source_uri
keeps one copy (a listing by (source_uri, image_id) named both copies, and readers skipped both)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from image_worlds import ingest_copied, tar_source

from acedata import copies, kept, shards
from acedata.kept import Kept, read_kept
from acedata.pipeline import run_stages
from acedata.stages.embed import EmbedConfig
from acedata.stages.ingest import IngestConfig

TINY = {"name": "acedata-tiny-siglip", "random_init": True}


def test_same_file_twice_under_one_uri_keeps_one_copy(tmp_path):
    src = tar_source(tmp_path)
    out = str(tmp_path / "run")
    cfgs = [IngestConfig(name="ingest", sources=[os.path.join(src, "00000.tar"), src]),
            EmbedConfig(name="embed", model=TINY, images_per_unit=1)]
    summary = run_stages(cfgs, out, executor="local")["stages"]
    stored = shards.read_table(f"{out}/ingest/images", ["source_uri", "image_id"]).to_pylist()
    assert len(stored) == 4 and len({(r["source_uri"], r["image_id"]) for r in stored}) == 2  # same uri twice
    assert summary[0]["counts"]["images"] == 2 and summary[0]["cross_unit_duplicates"] == 2
    rows = read_kept(f"{out}/ingest/images", ["source_uri", "image_id"]).to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted({r["image_id"] for r in stored})  # each once, none lost
    emb = shards.read_table(f"{out}/embed/embeddings", ["image_id"]).column(0).to_pylist()
    assert sorted(emb) == sorted({r["image_id"] for r in stored})
    assert summary[1]["counts"]["skipped_duplicate"] == 2


@pytest.fixture
def copied(tmp_path, monkeypatch) -> str:
    """12 images, copied into two more sources (one of them a tar of the same files), ingested in
    units of 2 files; the listing split into many buckets."""
    monkeypatch.setattr(copies, "ROWS_PER_BUCKET", 4)
    return ingest_copied(tmp_path)


def test_a_shard_reads_one_bucket_of_the_listing(copied, monkeypatch):
    images, dup = f"{copied}/ingest/images", f"{copied}/ingest/duplicates"
    listed = shards.read_table(dup, ["unit", "part", "row"]).to_pylist()
    places = {(r["unit"], r["part"], r["row"]) for r in listed if r["unit"] is not None}
    assert len(places) == 12 + 6  # every copy of b and of the tar loses to a's
    index = kept.listing_index(dup)
    n, parts = index
    assert n > 3 and len(parts) > 1
    opened: list[str] = []
    real = shards.open_parquet

    def spy(uri):
        opened.append(uri)
        return real(uri)

    monkeypatch.setattr(shards, "open_parquet", spy)
    found = set()
    for shard in shards.list_shards(images):
        opened.clear()
        unit, part = shards.shard_place(shard)
        rows = Kept([images]).skipped(shard)
        found |= {(unit, part, int(r)) for r in rows}
        bucket = {f for b, fs in parts.items() for f in fs if b == int(copies.shuffle.bucket_of([unit], n)[0])}
        assert set(opened) <= bucket  # the listing's other buckets are never opened
    assert found == places
    # the kept view: each image once, the first source's copy
    rows = read_kept(images, ["image_id", "source_uri"]).to_pylist()
    assert len(rows) == 12 and all("/a/" in r["source_uri"] for r in rows)


def test_filter_by_place_matches_the_listing_row_by_row(copied):
    """Kept.filter on slices of a shard (as a reader of row-group units sees them) drops exactly
    the listed rows."""
    images = f"{copied}/ingest/images"
    k = Kept([images])
    total = 0
    for shard in shards.list_shards(images):
        t = shards.open_parquet(shard).read(columns=["image_id"])
        t = t.append_column("r", pa.array(np.arange(t.num_rows)))
        skip = set(k.skipped(shard).tolist())
        got = [k.filter(shard, t.slice(s, 1), s).column("r").to_pylist() for s in range(t.num_rows)]
        assert [r for g in got for r in g] == [r for r in range(t.num_rows) if r not in skip]
        total += t.num_rows - len(skip)
    assert total == 12
