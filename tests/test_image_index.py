"""The image index (written by the stages that write images) and the one row-group reader."""

from __future__ import annotations

import json
import os
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from image_worlds import tree_bytes

from acedata import image_index, shards
from acedata.errors import UserError
from acedata.image_index import (
    INDEX_DIR,
    PARTS_META,
    ImageReader,
    UnknownImages,
    index_name,
    parts_dir,
    shared_reader,
)
from acedata.kept import dropped_uris, row_key
from acedata.pipeline import run_stages
from acedata.schemas import DUPLICATES, IMAGES
from acedata.shuffle import bucket_of
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig


def _images(n: int, start: int = 0) -> pa.Table:
    rows = [{"image_id": f"{i:064x}", "source_uri": f"mem://{i}", "width": 8 + i % 5, "height": 9,
             "format": "PNG", "image": {"bytes": os.urandom(40) + i.to_bytes(4, "big"), "path": None},
             "kind": "mask" if i % 7 == 0 else "image"} for i in range(start, start + n)]
    return pa.Table.from_pylist(rows, IMAGES)


def _table(path: str, n: int = 600, units: int = 3, merged: bool = True) -> dict[str, bytes]:
    """An images table of `units` units, several shards each, several small row groups per shard."""
    per = n // units
    for u in range(units):
        w = shards.ShardWriter(path, IMAGES, unit=f"u{u}", max_rows=90, row_group_bytes=1200)
        w.write(_images(per, u * per))
        image_index.write_index(path, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(path, IMAGES, table="images")
    if merged:
        assert image_index.ensure_index(path) == {"written": 1, "removed": 0}  # only the merged file is new
    full = shards.read_table(path, columns=["image_id", "image"]).to_pylist()
    return {r["image_id"]: r["image"]["bytes"] for r in full}


class _Reads:
    """Counts Parquet reads that touch the `image` column (an I/O count, not a timing)."""

    def __init__(self, monkeypatch) -> None:
        self.groups = 0
        self.whole = 0
        orig_group, orig_groups, orig_read = (pq.ParquetFile.read_row_group, pq.ParquetFile.read_row_groups,
                                              pq.ParquetFile.read)

        def group(pf, i, columns=None, **kw):
            self.groups += columns is None or "image" in columns
            return orig_group(pf, i, columns=columns, **kw)

        def groups(pf, gs, columns=None, **kw):
            self.groups += len(gs) if columns is None or "image" in columns else 0
            return orig_groups(pf, gs, columns=columns, **kw)

        def read(pf, columns=None, **kw):
            self.whole += columns is None or "image" in columns
            return orig_read(pf, columns=columns, **kw)

        monkeypatch.setattr(pq.ParquetFile, "read_row_group", group)
        monkeypatch.setattr(pq.ParquetFile, "read_row_groups", groups)
        monkeypatch.setattr(pq.ParquetFile, "read", read)


def _partition_rows(table: str) -> list[list[dict]]:
    """The rows of each partition file of the table's current partitioned index."""
    d = parts_dir(table)
    with open(os.path.join(d, PARTS_META)) as f:
        meta = json.load(f)
    return [pq.read_table(os.path.join(d, f"p{k:05d}.parquet")).to_pylist() for k in range(meta["partitions"])]


def _check_index_consistent(table: str) -> None:
    """Every row indexed, each entry pointing at the row that holds it; every id once in the kept view
    (copies listed in the sibling duplicates table aside); one index file per listed shard; the
    partitioned index holds exactly those rows, flagged, hashed to their partition and sorted."""
    manifest = shards.read_manifest(table)
    listed = dropped_uris([table])
    _, d = shards.resolve(table)
    files = sorted(os.listdir(os.path.join(d, INDEX_DIR)))
    parts = os.path.basename(parts_dir(table))
    assert files == sorted([parts, *(index_name(s["file"], s["sha256"]) for s in manifest["shards"])])
    per_shard = [pq.read_table(os.path.join(d, INDEX_DIR, index_name(s["file"], s["sha256"]))).to_pylist()
                 for s in manifest["shards"]]
    want = sorted((r["image_id"], k, r["row_group"], r["row"], r["width"], r["height"], r["kind"], r["source_uri"],
                   row_key(r["source_uri"], r["image_id"]) in listed) for k, rows in enumerate(per_shard) for r in rows)
    partitions = _partition_rows(table)
    got = []
    for k, rows in enumerate(partitions):
        keys = [(r["image_id"], r["shard"], r["row_group"], r["row"]) for r in rows]
        assert keys == sorted(keys)  # sorted by id, then shard, row group, row
        assert all(b == k for b in bucket_of([r["image_id"] for r in rows], len(partitions)))
        got += [tuple(r.values()) for r in rows]
    assert sorted(got) == want
    seen: set[str] = set()
    for s, idx in zip(manifest["shards"], per_shard):
        pf = pq.ParquetFile(os.path.join(d, s["file"]))
        groups = [pf.read_row_group(g, columns=["image_id", "width", "height", "kind"]).to_pylist()
                  for g in range(pf.metadata.num_row_groups)]
        assert len(idx) == s["rows"]
        for r in idx:
            assert r["shard"] == s["file"]
            row = groups[r["row_group"]][r["row"]]
            assert row["image_id"] == r["image_id"]
            assert (row["width"], row["height"], row["kind"]) == (r["width"], r["height"], r["kind"])
            if row_key(r["source_uri"], r["image_id"]) in listed:
                continue
            assert r["image_id"] not in seen
            seen.add(r["image_id"])
    assert len(seen) == manifest["rows"] - len(listed)


def test_index_written_by_ingest_and_synthesize(demo_corpus, tmp_path):
    astro = os.path.join(demo_corpus, "astronaut")
    copy = tmp_path / "copy"  # the same photos again in later units: ingest's finish rewrites shards
    shutil.copytree(astro, copy)
    out = str(tmp_path / "run")
    cfgs = [IngestConfig(name="ingest", sources=[demo_corpus, str(copy)], files_per_unit=8),
            SynthesizeConfig(name="synthesize", synthesizers=["grayscale", "inpaint_box"], max_images=6,
                             max_side=96, chain_fraction=0.0)]
    run = run_stages(cfgs, out, executor="local")
    assert run["stages"][0]["cross_unit_duplicates"] > 0
    tables = [f"{out}/ingest/images", f"{out}/synthesize/images"]
    for t in tables:
        _check_index_consistent(t)
    reader = ImageReader(tables)
    assert reader.scanned_shards == 0
    ids = shards.read_table(tables[1], columns=["image_id"]).column(0).to_pylist()
    want = {r["image_id"]: r["image"]["bytes"] for r in shards.read_table(tables[1], ["image_id", "image"]).to_pylist()}
    assert reader.image_bytes(ids) == want


def test_index_is_deterministic_and_write_once(tmp_path):
    a = str(tmp_path / "a")
    shards.write_table(a, _images(200), IMAGES, unit="u", row_group_bytes=2000, table="images")
    assert image_index.ensure_index(a) == {"written": 2, "removed": 0}  # the shard's and the partitioned one
    idx = os.path.join(a, INDEX_DIR)
    first = tree_bytes(idx)
    assert len(first) == 3  # the shard's index, one partition, _index.json
    before = {n: os.stat(os.path.join(idx, n)).st_mtime_ns for n in first}
    assert image_index.ensure_index(a) == {"written": 0, "removed": 0}  # never rewritten
    assert {n: os.stat(os.path.join(idx, n)).st_mtime_ns for n in first} == before
    shutil.rmtree(idx)  # built again from the same shards: the same names and bytes
    assert image_index.ensure_index(a) == {"written": 2, "removed": 0}
    assert tree_bytes(idx) == first


def test_reader_matches_full_read_for_random_subsets(tmp_path):
    t, u = str(tmp_path / "images"), str(tmp_path / "per_shard")
    rng = random.Random(0)
    # the same layout, indexed by the merged file and by per-shard files only
    for path, merged in ((t, True), (u, False)):
        full = _table(path, merged=merged)
        reader = ImageReader([path], cache_groups=3)
        assert len(reader) == len(full) and reader.scanned_shards == 0
        for k in (1, 7, 50, 300, len(full)):
            ids = rng.sample(sorted(full), k)
            assert reader.image_bytes(ids) == {i: full[i] for i in ids}
    r = reader.rows([ids[0]], ["image_id", "kind", "caption"])[ids[0]]
    assert set(r) == {"image_id", "kind", "caption"} and r["caption"] is None


def test_reads_only_the_needed_row_groups(tmp_path, monkeypatch):
    t = str(tmp_path / "images")
    full = _table(t)
    reader = ImageReader([t], cache_groups=4)
    # ids of two row groups of two different shards
    picked = {}
    for s in shards.list_shards(t)[:2]:
        pf = shards.open_parquet(s)
        ids = pf.read_row_group(1, columns=["image_id"]).column(0).to_pylist()
        picked[s] = ids
    wanted = [i for ids in picked.values() for i in ids[:3]]
    reads = _Reads(monkeypatch)
    got = reader.image_bytes(wanted)
    assert got == {i: full[i] for i in wanted}
    assert reads.groups == 2 and reads.whole == 0 and reader.row_groups_read == 2
    reader.image_bytes(list(reversed(wanted)))  # the same groups again: from the LRU
    assert reads.groups == 2
    total_groups = sum(shards.open_parquet(s).metadata.num_row_groups for s in shards.list_shards(t))
    assert total_groups > 10  # the table is much bigger than what was read


def test_tables_without_index_still_work_without_reading_bytes(tmp_path, monkeypatch):
    t = str(tmp_path / "images")
    full = _table(t)
    shutil.rmtree(os.path.join(t, INDEX_DIR))  # an older run
    single = str(tmp_path / "plain.parquet")  # a foreign Parquet file, no manifest
    pq.write_table(_images(30, 10_000), single, row_group_size=4)
    reads = _Reads(monkeypatch)
    reader = ImageReader([t, single])
    assert reads.groups == 0 and reads.whole == 0  # the fallback index reads metadata columns only
    assert reader.scanned_shards == len(shards.list_shards(t)) + 1
    ids = random.Random(1).sample(sorted(full), 40) + [f"{10_005:064x}"]
    got = reader.image_bytes(ids)
    assert all(got[i] == full[i] for i in ids[:-1]) and len(got) == 41
    assert reader.info(f"{10_003:064x}") == {"width": 11, "height": 9, "kind": "mask"}


def _rewrite_unit(t: str, unit: str, keep) -> None:
    """Replace a committed unit's shard by a filtered copy under a new name (an older layout that
    rewrote shards; the index must not trust an entry for a shard whose digest changed)."""
    fs, d = shards.resolve(t)
    frag = shards.unit_fragment(t, unit)
    s = frag["shards"][0]
    rows = shards.open_parquet(os.path.join(d, s["file"])).read()
    rows = rows.filter(pa.array([keep(i) for i in rows.column("image_id").to_pylist()]))
    name = s["file"][: -len(".parquet")] + "-rewritten.parquet"
    pq.write_table(rows, os.path.join(d, name))
    frag["shards"][0] = {"file": name, "rows": rows.num_rows, "bytes": os.path.getsize(os.path.join(d, name)),
                         "sha256": shards.sha256_file(fs, os.path.join(d, name))}
    with open(os.path.join(d, shards.UNITS_DIR, f"{unit}.json"), "w") as f:
        json.dump(frag, f)
    os.remove(os.path.join(d, s["file"]))


def test_rewritten_shard_gets_a_new_index_and_stale_one_is_ignored(tmp_path):
    t = str(tmp_path / "images")
    full = _table(t, n=300, units=2, merged=False)
    w = shards.ShardWriter(t, IMAGES, unit="u9")
    w.write(pa.concat_tables([_images(1, 0), _images(2, 5000)]))
    image_index.write_index(t, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(t, IMAGES, table="images")
    _rewrite_unit(t, "u9", lambda i: i != f"{0:064x}")
    shards.finalize_manifest(t, IMAGES, table="images")
    reader = ImageReader([t])
    assert reader.scanned_shards == 1  # the rewritten shard's index is not trusted
    assert reader.image_bytes([f"{5001:064x}", f"{0:064x}"])[f"{0:064x}"] == full[f"{0:064x}"]
    assert image_index.ensure_index(t) == {"written": 2, "removed": 1}  # new shard index + merged; old one gone
    _check_index_consistent(t)


def test_skipped_source_uris_resolve_ids_to_the_kept_copy(tmp_path):
    t = str(tmp_path / "images")
    _table(t, n=60, units=1)
    later = _images(1, 3)  # a second row of image 3 (same id), from another input
    later = later.set_column(later.schema.get_field_index("source_uri"), "source_uri", pa.array(["mem://copy"]))
    w = shards.ShardWriter(t, IMAGES, unit="u9")
    w.write(later)
    image_index.write_index(t, [s.__dict__ for s in w.commit()])
    shards.finalize_manifest(t, IMAGES, table="images")
    image_id = f"{3:064x}"
    assert ImageReader([t]).rows([image_id], ["source_uri"])[image_id]["source_uri"] == "mem://3"
    kept = ImageReader([t], skip_rows={row_key("mem://3", image_id)}).rows([image_id], ["source_uri", "image"])[image_id]
    assert kept["source_uri"] == "mem://copy" and kept["image"]["bytes"] == later.column("image")[0].as_py()["bytes"]
    # by default the rows the sibling `duplicates` table lists are skipped (ingest's losing copies:
    # a `cross-unit` unit; an older listing, by source_uri and image_id)
    dup = pa.Table.from_pylist([{"source_uri": "mem://3", "image_id": image_id}], DUPLICATES)
    shards.write_table(str(tmp_path / "duplicates"), dup, DUPLICATES, unit="cross-unit", table="duplicates")
    assert shared_reader([t]).rows([image_id], ["source_uri"])[image_id]["source_uri"] == "mem://copy"


def test_unknown_ids_are_a_clear_error(tmp_path):
    t = str(tmp_path / "images")
    full = _table(t, n=60, units=1)
    reader = ImageReader([t])
    known = next(iter(full))
    with pytest.raises(UnknownImages) as e:
        reader.image_bytes([known, "nope1", "nope2"])
    assert isinstance(e.value, KeyError) and isinstance(e.value, UserError)
    assert "2 image id(s) not in" in str(e.value) and "nope1" in str(e.value) and "\n" not in str(e.value)
    assert reader.image_bytes([known, "nope1"], missing="skip") == {known: full[known]}
    with pytest.raises(KeyError):
        reader.info("nope")


def test_shared_reader_is_opened_once_per_process(tmp_path):
    t = str(tmp_path / "images")
    _table(t, n=60, units=1)
    r1 = shared_reader([t])
    assert shared_reader([t]) is r1
    shards.write_table(t, _images(5, 900), IMAGES, unit="u7", table="images")  # the table changed
    r2 = shared_reader([t])
    assert r2 is not r1 and f"{900:064x}" in r2


@pytest.mark.parametrize("extra", [[], ["a\0", "\0"], ["x" * 300]])
def test_fallback_index_finds_awkward_ids(tmp_path, extra):
    """The in-memory index (no manifest) finds every id exactly: prefixes of other ids, non-ASCII,
    the empty id, ids with NUL and over-long ids (those two keep str keys), and nothing for unknown
    ids (a NUL-suffixed query never matches its prefix)."""
    ids = ["a", "ab", "abc", "b", "", "é", "Ω", "\U0001f600", "a b", *extra]
    rows = [{"image_id": i, "source_uri": f"mem://{k}", "width": k + 1, "height": 2, "format": "PNG",
             "image": {"bytes": bytes([k]), "path": None}, "kind": "image"} for k, i in enumerate(ids)]
    single = str(tmp_path / "plain.parquet")
    pq.write_table(pa.Table.from_pylist(rows, IMAGES), single, row_group_size=3)
    reader = ImageReader([single])
    want = {i: bytes([k]) for k, i in enumerate(ids)}
    assert reader.image_bytes(ids) == want
    assert reader.present([*ids, "a\0", "ab\0", "zz", "abcd", "x" * 299]) == set(ids)


def test_index_from_the_written_rows_equals_the_index_read_back(tmp_path):
    """A unit builds its shards' index from the row groups it kept while writing: the same rows,
    types and chunks as a build from the shard's own metadata columns (several shards and groups)."""
    path = str(tmp_path / "images")
    w = shards.ShardWriter(path, IMAGES, unit="u", max_rows=90, row_group_bytes=1200,
                           keep_columns=image_index.INDEX_COLUMNS)
    w.write(_images(250))
    infos = w.commit()
    assert len(infos) == 3 and sorted(w.kept) == sorted(s.file for s in infos)
    for s in infos:
        pf = pq.ParquetFile(os.path.join(path, s.file))
        assert pf.metadata.num_row_groups > 1
        built, read = image_index.index_rows(w.kept[s.file], s.file), image_index.build_shard_index(pf, s.file)
        assert built.equals(read, check_metadata=True) and built.num_rows == s.rows
        assert [c.num_chunks for c in built.columns] == [c.num_chunks for c in read.columns]
    written = {k: image_index.index_rows(v, k) for k, v in w.kept.items()}
    assert image_index.write_index(path, [s.__dict__ for s in infos], whole_table=False, written=written) == 3
