"""Ingest: every kind of bad input ends in quarantine with the right reason; counts add up."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from acedata import shards
from acedata.images import Limits, Rejected, decode, encode
from acedata.kept import read_kept
from acedata.pipeline import run_stages
from acedata.stages.ingest import IngestConfig


def _ingest(sources, out, executor="local", **kw):
    cfg = IngestConfig(name="ingest", sources=[str(s) for s in sources], **kw)
    return run_stages([cfg], str(out), executor=executor)["stages"][0]


def _table(out, name):
    path = os.path.join(str(out), "ingest", name)
    # images: the kept view (each image_id once); committed shards may also hold listed duplicates
    return read_kept(path) if name == "images" else shards.read_table(path)


def test_odd_inputs_exact_counts_and_reasons(demo_corpus, tmp_path):
    odd = os.path.join(demo_corpus, "odd")
    with open(os.path.join(demo_corpus, ".corpus.json")) as f:
        expect = json.load(f)["odd"]
    summary = _ingest([odd], tmp_path)
    c = summary["counts"]
    images = _table(tmp_path, "images")
    quarantine = _table(tmp_path, "quarantine")
    dups = _table(tmp_path, "duplicates")

    want_reasons = Counter(v for v in expect.values() if v != "image")
    got = Counter(quarantine.column("reason").to_pylist())
    assert got == want_reasons
    by_name = {os.path.basename(u): r for u, r in zip(quarantine["source_uri"].to_pylist(), quarantine["reason"].to_pylist())}
    for name, outcome in expect.items():
        if outcome != "image":
            assert by_name[name] == outcome, name
    assert images.num_rows + dups.num_rows == sum(v == "image" for v in expect.values())
    assert c["inputs"] == len(expect) == images.num_rows + dups.num_rows + quarantine.num_rows

    rows = {os.path.basename(r["source_uri"]): r for r in images.to_pylist()}
    assert rows["cmyk.jpg"]["orig_mode"] == "CMYK"
    assert rows["sixteen_bit.png"]["orig_mode"].startswith("I")
    assert rows["png_named_as.jpg"]["orig_format"] == "PNG"  # sniffed by content, not extension
    assert rows["animated.gif"]["meta"] and json.loads(rows["animated.gif"]["meta"])["frames"] == 3
    ex = rows["exif_rotated.jpg"]
    assert (ex["width"], ex["height"]) == (ex["orig_height"], ex["orig_width"])  # EXIF rotation applied
    for r in images.to_pylist():
        im = Image.open(io.BytesIO(r["image"]["bytes"]))
        assert im.mode == "RGB" and im.size == (r["width"], r["height"])
    assert shards.validate(os.path.join(str(tmp_path), "ingest", "images")) == []


def test_group_metadata_and_duplicates_across_units(demo_corpus, tmp_path):
    astro = os.path.join(demo_corpus, "astronaut")
    # The same folder twice, in different units: every image of the second copy is a duplicate.
    copy = tmp_path / "copy"
    copy.mkdir()
    for n in os.listdir(astro):
        with open(os.path.join(astro, n), "rb") as f, open(copy / n, "wb") as g:
            g.write(f.read())
    summary = _ingest([astro, copy], tmp_path / "out", files_per_unit=3)
    c = summary["counts"]
    images = _table(tmp_path / "out", "images")
    n = len([x for x in os.listdir(astro) if x.endswith(".jpg")])
    assert images.num_rows == n and c["duplicates"] == n and c["inputs"] == 2 * n
    assert set(images["group"].to_pylist()) == {"astronaut"}
    assert all(cap and "astronaut" in cap for cap in images["caption"].to_pylist())
    assert len(set(images["image_id"].to_pylist())) == n
    # the copy kept is the first source's (source order in the spec), whatever the unit order
    assert all(u.startswith(astro + os.sep) for u in images["source_uri"].to_pylist())
    assert shards.validate(os.path.join(str(tmp_path / "out"), "ingest", "images")) == []


def _jpeg(color, size=(64, 48)) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG")


def test_parquet_and_webdataset_sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jpg").write_bytes(_jpeg((200, 10, 10)))
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(_jpeg((1, 2, 3)))
    table = pa.table(
        {
            "image": [{"bytes": _jpeg((10, 200, 10)), "path": None}, None, None, None,
                      {"bytes": b"garbage", "path": None}],
            "path": [None, "ok.jpg", "../outside.jpg", None, None],
            "caption": ["green", "red", "escape", "nothing", "broken"],
            "url": ["http://a", "http://b", None, None, None],
        }
    )
    pq.write_table(table, src / "rows.parquet")

    # img2dataset layout: a tar of key.jpg/key.txt/key.json plus a per-shard Parquet of metadata
    tar_path = src / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for key, member, data in [
            ("000000001", "jpg", _jpeg((10, 10, 200))),
            ("000000001", "txt", b"a blue image"),
            ("000000001", "json", json.dumps({"url": "http://c", "license": "cc-by"}).encode()),
            ("000000002", "txt", b"caption without image"),
            ("000000003", "jpg", b"\xff\xd8\xff truncated"),
        ]:
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"key": ["000000001"], "status": ["success"]}), src / "00000.parquet")

    c = _ingest([src], tmp_path / "out")["counts"]
    images = {r["caption"]: r for r in _table(tmp_path / "out", "images").to_pylist()}
    q = Counter(_table(tmp_path / "out", "quarantine")["reason"].to_pylist())
    # ok.jpg is read twice (loose, and through the "red" row's path): one copy is kept
    assert {"green", "a blue image"} < set(images) and len(set(images) & {"red", None}) == 1
    assert images["a blue image"]["license"] == "cc-by" and images["a blue image"]["url"] == "http://c"
    assert images["green"]["url"] == "http://a"
    # garbage bytes in the Parquet row and the tar's broken JPEG header are both not images
    assert q == Counter({"outside_root": 1, "malformed_row": 1, "not_an_image": 2, "no_image_in_sample": 1})
    dups = c.get("duplicates", 0)
    assert c["inputs"] == 1 + 5 + 3 == len(images) + dups + sum(q.values())
    assert dups == 1  # ok.jpg is read twice: loose, and by the Parquet row's path


def test_decode_limits():
    big = encode(Image.new("RGB", (300, 200), (5, 5, 5)), "PNG")
    with pytest.raises(Rejected) as e:
        decode(big, Limits(max_pixels=10_000))
    assert e.value.reason == "too_many_pixels"
    d = decode(big, Limits(max_side=150))
    assert d.image.size == (150, 100) and (d.orig_width, d.orig_height) == (300, 200)
    la = Image.new("LA", (50, 50), (128, 0))
    d = decode(encode(la, "PNG"))
    assert d.image.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white


def test_ingest_on_ray_and_rerun_resumes(demo_corpus, tmp_path, ray_local):
    out = tmp_path / "out"
    first = _ingest([demo_corpus], out, executor="ray", files_per_unit=16)
    assert first["counts"]["inputs"] == first["counts"]["images"] + first["counts"]["duplicates"] + first["counts"]["quarantine"]
    # A rerun with the same config skips the stage and reports the same counts.
    again = run_stages([IngestConfig(name="ingest", sources=[demo_corpus], files_per_unit=16)], str(out),
                       executor="local")
    assert again["stages"][0].get("skipped") is True
    assert again["stages"][0]["counts"] == first["counts"]


def test_unit_ids_do_not_depend_on_where_the_corpus_or_run_lies(demo_corpus, tmp_path):
    import shutil

    astro = os.path.join(demo_corpus, "astronaut")
    moved = tmp_path / "somewhere" / "else"
    shutil.copytree(astro, moved)
    _ingest([astro], tmp_path / "one", files_per_unit=2)
    _ingest([str(moved)], tmp_path / "deeper" / "two", files_per_unit=2)
    # shard names carry a per-attempt id (write-once objects); the unit ids are what must match
    units = [sorted(shards.committed_units(os.path.join(str(r), "ingest", "images")))
             for r in (tmp_path / "one", tmp_path / "deeper" / "two")]
    assert units[0] == units[1] and len(units[0]) > 1
