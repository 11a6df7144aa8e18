"""The partitioned image index: the distributed build (local and Ray) writes what the inline build
writes, a crashed build resumes, and the reader reads only the partitions and row groups it needs."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from image_worlds import tree_bytes

from acedata import image_index, image_index_build, image_index_files, shards
from acedata.image_index import PARTS_META, ImageReader, PartIndex, parts_dir
from acedata.kept import row_key
from acedata.schemas import DUPLICATES, IMAGES, conform
from acedata.shuffle import bucket_of


def _images(ids: list[int], uri: str = "mem://{}") -> pa.Table:
    n = len(ids)
    return conform(pa.table({
        "image_id": [f"{i:064x}" for i in ids], "source_uri": [uri.format(i) for i in ids],
        "width": [8 + i % 5 for i in ids], "height": [9] * n, "format": ["PNG"] * n,
        "image": [{"bytes": uri.format(i).encode() + i.to_bytes(4, "big"), "path": None} for i in ids],
        "kind": ["mask" if i % 7 == 0 else "image" for i in ids]}), IMAGES)


def _world(path: str, n: int = 900, units: int = 4) -> dict[str, str]:
    """An images table of `units` units (shards of at most 70 rows, small row groups), where the last
    unit holds second copies of some images of the first; the sibling duplicates table lists, per
    copied image, one of the two copies (sometimes the first one: then the later copy is served).
    Returns image_id -> the source_uri a reader must serve."""
    per = n // units
    copies = list(range(0, per, 3))
    for u in range(units):
        w = shards.ShardWriter(path, IMAGES, unit=f"u{u}", max_rows=70, row_group_bytes=900)
        w.write(_images(list(range(u * per, (u + 1) * per))))
        if u == units - 1:
            w.write(_images(copies, "mem://copy-{}"))
        image_index.write_index(path, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(path, IMAGES, table="images")
    serve = {f"{i:064x}": f"mem://{i}" for i in range(units * per)}
    listed = []
    for i in copies:
        if i % 2:  # the first copy loses: the later one is served
            listed.append({"source_uri": f"mem://{i}", "image_id": f"{i:064x}"})
            serve[f"{i:064x}"] = f"mem://copy-{i}"
        else:
            listed.append({"source_uri": f"mem://copy-{i}", "image_id": f"{i:064x}"})
    dup = os.path.join(os.path.dirname(path), "duplicates")
    for u, part in enumerate((listed[: len(listed) // 2], listed[len(listed) // 2:])):  # two units, two shards
        w = shards.ShardWriter(dup, DUPLICATES, unit=f"cross-unit-{u}")
        w.write(pa.Table.from_pylist(part, DUPLICATES))
        w.commit()
    shards.finalize_manifest(dup, DUPLICATES, table="duplicates")
    return serve


def _check_served(table: str, serve: dict[str, str]) -> None:
    reader = ImageReader([table])
    assert reader.scanned_shards == 0 and isinstance(reader._indexes[0], PartIndex)
    ids = sorted(serve)
    got = reader.rows(ids, ["source_uri", "image"])
    assert {i: r["source_uri"] for i, r in got.items()} == serve
    assert all(r["image"]["bytes"].startswith(serve[i].encode()) for i, r in got.items())
    assert sorted(reader.ids()) == ids and len(reader) == len(ids)


def _two_copies(tmp_path, n: int = 900) -> tuple[str, str, dict[str, str]]:
    a = str(tmp_path / "a" / "images")
    serve = _world(a, n)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    return a, str(tmp_path / "b" / "images"), serve


@pytest.mark.parametrize("rows_per_partition,map_rows,map_shards", [(1 << 20, 1 << 20, 512), (97, 150, 3), (13, 50, 1)])
def test_distributed_build_writes_what_the_inline_build_writes(tmp_path, monkeypatch, rows_per_partition, map_rows,
                                                               map_shards):
    monkeypatch.setattr(image_index_files, "ROWS_PER_PARTITION", rows_per_partition)
    monkeypatch.setattr(image_index_files, "GROUP_ROWS", 16)  # several row groups per partition
    inline, dist, serve = _two_copies(tmp_path)
    assert image_index.ensure_index(inline)["written"] == 1
    monkeypatch.setattr(image_index_build, "INLINE_MAX_ROWS", 0)
    monkeypatch.setattr(image_index_build, "MAP_ROWS", map_rows)
    monkeypatch.setattr(image_index_build, "MAP_SHARDS", map_shards)
    for s in shards.read_manifest(dist)["shards"][::2]:  # units that died before indexing their shards
        os.remove(os.path.join(dist, image_index.INDEX_DIR, image_index.index_name(s["file"], s["sha256"])))
    assert image_index.ensure_index(dist, executor="local") == {"written": 1, "removed": 1}  # removed: the scratch
    want = tree_bytes(parts_dir(inline))
    assert tree_bytes(parts_dir(dist)) == want
    assert sorted(os.listdir(os.path.join(dist, image_index.INDEX_DIR))) == sorted(
        os.listdir(os.path.join(inline, image_index.INDEX_DIR)))  # the missing shard indexes written, no scratch
    assert len(want) - 1 == image_index_files.partition_count(shards.read_manifest(inline)["rows"])
    for t in (inline, dist):
        _check_served(t, serve)


def test_distributed_build_on_ray(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(image_index_files, "ROWS_PER_PARTITION", 211)
    inline, dist, serve = _two_copies(tmp_path)
    image_index.ensure_index(inline)
    monkeypatch.setattr(image_index_build, "INLINE_MAX_ROWS", 0)
    monkeypatch.setattr(image_index_build, "MAP_ROWS", 300)
    assert image_index.ensure_index(dist, executor="ray", concurrency=2)["written"] == 1
    assert tree_bytes(parts_dir(dist)) == tree_bytes(parts_dir(inline))
    _check_served(dist, serve)


def test_build_resumes_after_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(image_index_files, "ROWS_PER_PARTITION", 150)
    inline, dist, serve = _two_copies(tmp_path)
    image_index.ensure_index(inline)
    monkeypatch.setattr(image_index_build, "INLINE_MAX_ROWS", 0)
    monkeypatch.setattr(image_index_build, "MAP_ROWS", 200)
    real_write, real_process = image_index_build.write_partition, image_index_build.IndexBuild.process

    def dies_at_partition_3(fs, path, t):
        if path.endswith("p00003.parquet"):
            raise OSError("worker lost")
        real_write(fs, path, t)

    ran: list[str] = []

    def process(self, unit):
        ran.append(unit.id)
        return real_process(self, unit)

    monkeypatch.setattr(image_index_build, "write_partition", dies_at_partition_3)
    monkeypatch.setattr(image_index_build.IndexBuild, "process", process)
    with pytest.raises(OSError, match="worker lost"):
        image_index.ensure_index(dist)
    assert not os.path.exists(os.path.join(parts_dir(dist), PARTS_META))  # no index until it is whole
    first = list(ran)
    assert "reduce-00003" in first and "reduce-00004" not in first
    reader = ImageReader([dist])  # meanwhile readers index in memory: still right
    assert not isinstance(reader._indexes[0], PartIndex)
    assert {i: r["source_uri"] for i, r in reader.rows(sorted(serve), ["source_uri"]).items()} == serve
    ran.clear()
    monkeypatch.setattr(image_index_build, "write_partition", real_write)
    assert image_index.ensure_index(dist)["written"] == 1
    assert ran and all(u.startswith("reduce-") for u in ran)  # the map wave and partitions 0-2 are not redone
    assert ran[0] == "reduce-00003"
    assert tree_bytes(parts_dir(dist)) == tree_bytes(parts_dir(inline))
    _check_served(dist, serve)
    assert not [n for n in os.listdir(os.path.join(dist, image_index.INDEX_DIR)) if n.startswith("_build-")]


def test_changed_duplicates_listing_is_never_served_stale(tmp_path):
    t = str(tmp_path / "images")
    serve = _world(t, 300, 2)
    image_index.ensure_index(t)
    old = parts_dir(t)
    _check_served(t, serve)
    image_id = next(i for i, u in serve.items() if u.startswith("mem://copy-"))
    # the listing changes: now the later copy loses (a rerun of the duplicates wave, say)
    dup = str(tmp_path / "duplicates")
    w = shards.ShardWriter(dup, DUPLICATES, unit="cross-unit-9")
    w.write(pa.Table.from_pylist([{"source_uri": serve[image_id], "image_id": image_id}], DUPLICATES))
    w.commit()
    shards.finalize_manifest(dup, DUPLICATES, table="duplicates")
    assert parts_dir(t) != old
    # both copies listed now: the id has no kept row
    assert image_id not in ImageReader([t])
    assert image_index.ensure_index(t) == {"written": 1, "removed": 1}  # the new index; the old one gone
    assert not os.path.exists(old)
    reader = ImageReader([t])
    assert isinstance(reader._indexes[0], PartIndex) and image_id not in reader
    # an explicit skip list replaces the table's listing
    explicit = ImageReader([t], skip_rows={row_key(serve[image_id], image_id)})
    assert explicit.rows([image_id], ["source_uri"])[image_id]["source_uri"] != serve[image_id]


def test_lookup_reads_only_the_partitions_and_row_groups_it_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(image_index_files, "ROWS_PER_PARTITION", 64)
    monkeypatch.setattr(image_index_files, "GROUP_ROWS", 8)
    t = str(tmp_path / "images")
    serve = _world(t, 1200, 3)
    image_index.ensure_index(t)
    n_parts = image_index_files.partition_count(shards.read_manifest(t)["rows"])
    assert n_parts > 10
    opened: list[str] = []
    real = pq.ParquetFile.read_row_groups

    def read_row_groups(pf, groups, columns=None, **kw):
        if columns is not None and "dropped" in columns:
            opened.append((id(pf), tuple(groups)))
        return real(pf, groups, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", read_row_groups)
    reader = ImageReader([t])
    idx = reader._indexes[0]
    ids = random.Random(3).sample(sorted(serve), 10)
    got = reader.rows(ids, ["source_uri"])
    assert {i: r["source_uri"] for i, r in got.items()} == {i: serve[i] for i in ids}
    parts = set(bucket_of(ids, n_parts).tolist())
    assert set(idx._bounds) == parts  # only the ids' partitions' footers were read
    assert len(opened) == len(parts)  # one read per partition
    assert reader.index_groups_read <= 2 * len(ids)  # the groups whose min/max can hold an id
    assert reader.index_rows_read <= 2 * len(ids) * 8
    before = reader.index_groups_read
    assert reader.present(ids + ["f" * 64]) == set(ids)  # the same groups: from the LRU
    assert reader.index_groups_read == before
    small = ImageReader([t], index_groups=2)  # a batch over many groups, read a few groups at a time
    assert {i: r["source_uri"] for i, r in small.rows(sorted(serve), ["source_uri"]).items()} == serve
    assert reader.infos(ids[:2]) == {i: {"width": int(i, 16) % 5 + 8, "height": 9,
                                         "kind": "mask" if int(i, 16) % 7 == 0 else "image"} for i in ids[:2]}


@pytest.mark.parametrize("rows", [100_000, 200_000])
def test_lookup_reads_a_few_row_groups_whatever_the_table_size(tmp_path, monkeypatch, rows):
    """10 ids from a table of 100k or 200k rows: the same bound on index rows read (a few row groups),
    and the reader holds only row-group bounds, not the table."""
    monkeypatch.setattr(image_index_files, "GROUP_ROWS", 1024)
    t = str(tmp_path / "images")
    ids = np.arange(rows)
    w = shards.ShardWriter(t, IMAGES, unit="u", max_rows=50_000)
    for lo in range(0, rows, 50_000):
        part = ids[lo: lo + 50_000]
        n = len(part)
        w.write(conform(pa.table({"image_id": pa.array([f"{i:064x}" for i in part.tolist()]),
                                  "source_uri": pa.array(["mem://x"] * n), "width": pa.array(np.full(n, 4, np.int32)), "height": pa.array(np.full(n, 4, np.int32)),
                                  "image": pa.array([{"bytes": b"x", "path": None}] * n, IMAGES.field("image").type)}),
                        IMAGES))
    image_index.write_index(t, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(t, IMAGES, table="images")
    image_index.ensure_index(t)
    reader = ImageReader([t])
    wanted = [f"{i:064x}" for i in random.Random(0).sample(range(rows), 10)]
    assert set(reader.image_bytes(wanted)) == set(wanted)
    assert reader.index_rows_read <= 2 * 10 * 1024 < rows // 4
    idx = reader._indexes[0]
    assert isinstance(idx, PartIndex)
    assert sum(len(b[0]) for b in idx._bounds.values()) <= rows // 1024 + 1  # one bound per row group
