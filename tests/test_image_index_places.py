"""The image index drops the rows the duplicates listing names by place (unit, part, row in the
shard), as `Kept` does: a file ingested twice under one source_uri has two stored copies with the
same (source_uri, image_id), and the reader serves the one `Kept` keeps, once (built index and
in-memory index alike); a unit-built index flags exactly the listed places."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from image_worlds import ingest_copied, tar_source, tree_bytes

from acedata import copies, image_index, image_index_build, image_index_files, shards
from acedata.image_index import ImageReader, MemIndex, PartIndex, parts_dir
from acedata.kept import Kept
from acedata.pipeline import run_stages
from acedata.schemas import IMAGES
from acedata.stages.ingest import IngestConfig


def _row_offsets(uri: str) -> np.ndarray:
    md = shards.open_parquet(uri).metadata
    sizes = np.array([md.row_group(g).num_rows for g in range(md.num_row_groups)], np.int64)
    return np.cumsum(sizes) - sizes


def _kept_places(images: str) -> set[tuple[str, int]]:
    """(shard file, row in it) of every row `Kept` keeps."""
    k = Kept([images])
    out = set()
    for uri in shards.list_shards(images):
        n = shards.open_parquet(uri).metadata.num_rows
        skip = set(k.skipped(uri).tolist())
        out |= {(os.path.basename(uri), r) for r in range(n) if r not in skip}
    return out


def _served_places(reader: ImageReader, ids: list[str]) -> set[tuple[str, int]]:
    """(shard file, row in it) of the row the reader serves for each id."""
    out = set()
    for s, g, r, *_ in reader._lookup(ids).values():
        uri = reader._uris[s]
        out.add((os.path.basename(uri), int(_row_offsets(uri)[g]) + r))
    return out


def _listed_places(images: str) -> set[tuple[str, int, int]]:
    dup = shards.read_table(os.path.join(os.path.dirname(images), "duplicates"), ["unit", "part", "row"]).to_pylist()
    return {(r["unit"], r["part"], r["row"]) for r in dup if r["unit"] is not None}


def _dropped_places(images: str) -> set[tuple[str, int, int]]:
    """(unit, part, row in the shard) of every index row flagged `dropped` in the partition files."""
    files = [s["file"] for s in shards.read_manifest(images)["shards"]]
    d = parts_dir(images)
    out = set()
    for name in sorted(os.listdir(d)):
        if not name.endswith(".parquet"):
            continue
        for row in pq.read_table(os.path.join(d, name)).to_pylist():
            if row["dropped"]:
                f = files[row["shard"]]
                unit, part = shards.shard_place(f)
                out.add((unit, part, int(_row_offsets(os.path.join(images, f))[row["row_group"]]) + row["row"]))
    return out


def _ingest_twice(tmp_path) -> str:
    """The tar alone and inside its folder: two stored copies of each member, one source_uri."""
    src = tar_source(tmp_path)
    out = str(tmp_path / "run")
    run_stages([IngestConfig(name="ingest", sources=[os.path.join(src, "00000.tar"), src])], out, executor="local")
    return f"{out}/ingest/images"


def test_same_file_twice_under_one_uri_is_served_once(tmp_path):
    images = _ingest_twice(tmp_path)
    stored = shards.read_table(images, ["source_uri", "image_id", "image"]).to_pylist()
    ids = sorted({r["image_id"] for r in stored})
    assert len(stored) == 4 and len(ids) == 2 and len({(r["source_uri"], r["image_id"]) for r in stored}) == 2
    want = _kept_places(images)
    assert len(want) == 2  # Kept: one copy of each image
    data = {r["image_id"]: r["image"]["bytes"] for r in stored}
    for built in (True, False):
        if not built:  # no index for the table's content: the reader indexes it in memory
            shutil.rmtree(parts_dir(images))
        reader = ImageReader([images])
        assert isinstance(reader._indexes[0], PartIndex if built else MemIndex)
        assert _served_places(reader, ids) == want  # the copy Kept keeps, not both copies dropped
        assert sorted(reader.ids()) == ids and len(reader) == 2
        assert reader.image_bytes(ids) == data
        assert sorted(reader.sizes()) == ids


@pytest.mark.parametrize("world", ["twice", "copied"])
def test_unit_built_index_drops_the_listed_places(tmp_path, monkeypatch, world):
    monkeypatch.setattr(copies, "ROWS_PER_BUCKET", 4)  # the listing in several buckets
    images = _ingest_twice(tmp_path) if world == "twice" else f"{ingest_copied(tmp_path)}/ingest/images"
    run = os.path.dirname(os.path.dirname(images))
    inline, dist = (os.path.join(str(tmp_path), c, "ingest", "images") for c in ("inline", "dist"))
    for c in (inline, dist):
        shutil.copytree(os.path.dirname(images), os.path.dirname(c))
        shutil.rmtree(parts_dir(c))
    assert run not in inline
    monkeypatch.setattr(image_index_files, "ROWS_PER_PARTITION", 2)  # several partitions
    image_index.ensure_index(inline)
    monkeypatch.setattr(image_index_build, "INLINE_MAX_ROWS", 0)
    monkeypatch.setattr(image_index_build, "MAP_ROWS", 4)
    monkeypatch.setattr(image_index_build, "MAP_SHARDS", 2)
    assert image_index.ensure_index(dist, executor="local")["written"] == 1
    assert tree_bytes(parts_dir(dist)) == tree_bytes(parts_dir(inline))  # the same bytes either way
    assert len(os.listdir(parts_dir(dist))) > 2  # partitions and _index.json
    listed = _listed_places(dist)
    assert listed and _dropped_places(dist) == listed  # exactly the listed places, nothing more
    stored = shards.read_table(dist, ["image_id"]).column(0).to_pylist()
    reader = ImageReader([dist])
    assert isinstance(reader._indexes[0], PartIndex)
    assert _served_places(reader, sorted(set(stored))) == _kept_places(dist)
    assert len(reader) == len(set(stored)) == len(stored) - len(listed)


def test_partition_rows_carry_their_row_in_the_shard(tmp_path):
    """A shard of several row groups: each index row's place is its row group's offset + its row."""
    from test_image_index_build import _images

    t = str(tmp_path / "images")
    w = shards.ShardWriter(t, IMAGES, unit="u0", max_rows=1000, row_group_bytes=900)
    w.write(_images(list(range(50))))
    (s,) = w.commit()
    pf = shards.open_parquet(os.path.join(t, s.file))
    assert pf.metadata.num_row_groups > 3
    rows = image_index_files.to_part(image_index_files.build_shard_index(pf, s.file), 7)
    assert rows.column("shard_row").to_pylist() == list(range(50))
    assert set(rows.column("unit").to_pylist()) == {"u0"} and set(rows.column("part").to_pylist()) == {0}
    assert rows.column("image_id").to_pylist() == pf.read(columns=["image_id"]).column(0).to_pylist()
