"""Ingest sources on object storage: a corpus in a bucket ingests exactly like the same files on disk.

A real S3-compatible server (moto, `s3_server` fixture) and fsspec's `memory://` hold copies
of small corpora (real photographs from skimage.data, sidecar metadata, non-images, a
WebDataset tar, a Parquet table). Ingest from the URI and from a local copy must give the
same unit ids, the same `acedata digest` of every ingest table and the same quarantine
reasons; ingest's resume key must follow the objects' content.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from acedata import shards, storage
from acedata.cli import main
from acedata.digest import run_digest
from acedata.pipeline import run_stages
from acedata.source_digest import source_digest
from acedata.sources import list_units, read_unit
from acedata.stages.ingest import IngestConfig, content_unit_id


def _photo(name: str, fmt: str, side: int = 96) -> bytes:
    img = Image.fromarray(getattr(skimage.data, name)())
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _folder_corpus(d) -> None:
    files = {
        "camera.png": _photo("camera", "PNG"),
        "astronaut.jpg": _photo("astronaut", "JPEG"),
        "astronaut.json": json.dumps({"caption": "an astronaut", "url": "http://x/a", "license": "cc0"}).encode(),
        "sub/coffee.png": _photo("coffee", "PNG"),
        "sub/coffee.txt": b"a cup of coffee\n",
        "sub/deeper/cat.jpg": _photo("chelsea", "JPEG"),
        "sub/camera-again.png": _photo("camera", "PNG"),  # the same pixels: a duplicate
        "notes.pdf": b"%PDF-1.4 not an image",
        "tiny.png": _photo("camera", "PNG", side=8),  # below min_side
        ".DS_Store": b"hidden, skipped",
    }
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "wb") as f:
            f.write(data)


def _upload(local: str, uri: str) -> None:
    for dirpath, _, names in os.walk(local):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                storage.write_bytes(storage.join(uri, os.path.relpath(p, local)), f.read())


def _reasons(run: str) -> Counter:
    return Counter(shards.read_table(storage.join(run, "ingest", "quarantine"))["reason"].to_pylist())


def _units(run: str) -> list[str]:
    return sorted(shards.committed_units(storage.join(run, "ingest", "images")))


@pytest.fixture
def bucket(s3_server) -> str:
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:8]}"


def test_folder_corpus_from_s3_ingests_like_its_local_copy(bucket, tmp_path, capsys):
    local = str(tmp_path / "corpus")
    _folder_corpus(local)
    _upload(local, bucket + "/corpus")
    digests, reasons, units = [], [], []
    for src, out in ((local, str(tmp_path / "run-local")), (bucket + "/corpus/", bucket + "/run")):
        assert main(["ingest", src, "--out", out, "--executor", "local", "--json"]) == 0
        capsys.readouterr()
        assert main(["digest", out]) == 0
        digests.append(capsys.readouterr().out)
        reasons.append(_reasons(out))
        units.append(_units(out))
    assert digests[0] == digests[1] and "ingest/images" in digests[0]
    assert reasons[0] == reasons[1] == Counter({"not_an_image": 1, "too_small": 1}), reasons
    assert units[0] == units[1] and units[0]
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in shards.read_table(bucket + "/run/ingest/images").to_pylist()}
    assert rows["astronaut.jpg"]["caption"] == "an astronaut" and rows["astronaut.jpg"]["license"] == "cc0"
    assert rows["coffee.png"]["caption"] == "a cup of coffee"
    assert rows["coffee.png"]["source_uri"] == bucket + "/corpus/sub/coffee.png"  # a URI readers can open
    assert ".DS_Store" not in rows
    d = run_digest(bucket + "/run")["tables"]
    assert d["ingest/images"]["rows"] == 4 and d["ingest/duplicates"]["rows"] == 1


def _parquet_and_tar_corpus(d) -> None:
    os.makedirs(os.path.join(d, "imgs"))
    with open(os.path.join(d, "imgs", "rocket.png"), "wb") as f:
        f.write(_photo("rocket", "PNG"))
    pq.write_table(pa.table({
        "image": [{"bytes": _photo("astronaut", "JPEG"), "path": None}, None, None, None],
        "path": [None, "imgs/rocket.png", "../../escape.png", None],
        "caption": ["astronaut row", "rocket by path", "escapes", "nothing"],
    }), os.path.join(d, "rows.parquet"))
    with tarfile.open(os.path.join(d, "shard-00000.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("0001.jpg", _photo("chelsea", "JPEG")), ("0001.txt", b"a cat"),
                           ("0002.png", _photo("coffee", "PNG")), ("0002.json", b'{"url": "http://c"}'),
                           ("0003.txt", b"no image here"), ("0004.png", os.urandom(5000))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_parquet_and_tar_sources_on_s3(bucket, tmp_path):
    local = str(tmp_path / "corpus")
    _parquet_and_tar_corpus(local)
    _upload(local, bucket + "/pt")
    runs = {}
    for name, root in (("local", local), ("s3", bucket + "/pt")):
        # a folder holding both, and the tar named on its own (a single-object root)
        cfg = IngestConfig(name="ingest", sources=[root, storage.join(root, "shard-00000.tar")], max_file_bytes=10_000)
        out = str(tmp_path / f"run-{name}")
        counts = run_stages([cfg], out, executor="local")["stages"][0]["counts"]
        runs[name] = (counts, _reasons(out), run_digest(out)["digest"], _units(out))
    assert runs["local"] == runs["s3"]
    counts, reasons, _, _ = runs["s3"]
    assert counts["inputs"] == counts["images"] + counts["duplicates"] + counts["quarantine"] == 1 + 4 + 2 * 4
    # the coffee PNG in the tar (12.7 kB) exceeds max_file_bytes=10000, read via the folder and
    # via the tar named on its own; the rocket (8.4 kB) is read loose and by a row's path
    assert reasons == Counter({"file_too_large": 2, "no_image_in_sample": 2, "not_an_image": 2,
                               "outside_root": 1, "malformed_row": 1}), reasons
    assert counts["images"] == 3 and counts["duplicates"] == 2  # astronaut, rocket, cat; rocket and cat twice


def test_parquet_and_tar_rows_read_from_s3(bucket, tmp_path):
    local = str(tmp_path / "corpus")
    _parquet_and_tar_corpus(local)
    _upload(local, bucket + "/pt")
    out = bucket + "/run-pt"
    c = run_stages([IngestConfig(name="ingest", sources=[bucket + "/pt/"])], out, executor="local")["stages"][0]["counts"]
    rows = {r["caption"]: r for r in shards.read_table(storage.join(out, "ingest", "images")).to_pylist()}
    assert {"astronaut row", "rocket by path", "a cat"} <= set(rows)
    assert rows["a cat"]["source_uri"] == bucket + "/pt/shard-00000.tar#0001"
    assert rows["rocket by path"]["source_uri"] == bucket + "/pt/rows.parquet#rg=0&row=1"
    assert _reasons(out) == Counter({"outside_root": 1, "malformed_row": 1, "no_image_in_sample": 1,
                                     "not_an_image": 1})
    # the loose imgs/rocket.png and the row naming it hold the same pixels: one is a duplicate
    assert c == {**c, "inputs": 1 + 4 + 4, "duplicates": 1}


def test_memory_listing_matches_local(tmp_path):
    local = str(tmp_path / "corpus")
    _folder_corpus(local)
    mem = f"memory://acedata-src-{uuid.uuid4().hex[:8]}"
    _upload(local, mem)

    def ids(root: str) -> list[str]:
        return [content_unit_id(0, root, uid, p) for uid, p in list_units(root, files_per_unit=3)]

    assert ids(local) == ids(mem + "/") == ids("file://" + local) and len(ids(local)) == 3
    assert source_digest(local) == source_digest(mem) == source_digest("file://" + local)
    # the listed size bounds a read before any byte is fetched, as a local file's stat does
    errors = [[r.error for _, p in list_units(root, files_per_unit=3) for r in read_unit(p, 100)]
              for root in (local, mem)]
    assert errors[0] == errors[1] and sum(e is not None and e[0] == "file_too_large" for e in errors[1]) >= 5
    # one object named as the source: read whole, through the same bounds
    one = list_units(mem + "/camera.png")
    assert [r.uri for r in read_unit(one[0][1], 1 << 20) if r.data] == [mem + "/camera.png"]
    assert [r.error[0] for r in read_unit(one[0][1], 100)] == ["file_too_large"]


def test_changed_object_on_s3_changes_the_resume_key(bucket, tmp_path):
    local = str(tmp_path / "corpus")
    _folder_corpus(local)
    src = bucket + "/resume"
    _upload(local, src)
    assert source_digest(src) == source_digest(local)  # content mode: where the corpus lies does not count
    meta = source_digest(src, "metadata")
    out = str(tmp_path / "run")
    cfgs = [IngestConfig(name="ingest", sources=[src])]
    first = run_stages(cfgs, out, executor="local")["stages"][0]
    assert run_stages(cfgs, out, executor="local")["stages"][0].get("skipped") is True
    storage.write_bytes(src + "/sub/coffee.txt", b"another caption\n")  # same size, new bytes
    assert source_digest(src) != source_digest(local)
    # metadata mode sees (size, last-modified); S3 dates objects to the second, so a same-size
    # rewrite within that second is its documented blind spot - a new size always shows
    storage.write_bytes(src + "/astronaut.json", b"{}")
    assert source_digest(src, "metadata") != meta
    again = run_stages(cfgs, out, executor="local")["stages"][0]
    assert not again.get("skipped") and again["counts"] == first["counts"]
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in shards.read_table(out + "/ingest/images").to_pylist()}
    assert rows["coffee.png"]["caption"] == "another caption" and rows["astronaut.jpg"]["caption"] is None
    storage.delete_file(src + "/notes.pdf")
    assert run_stages(cfgs, out, executor="local")["stages"][0]["counts"]["inputs"] == first["counts"]["inputs"] - 1


def test_missing_uri_source_is_one_clear_error(bucket, tmp_path):
    from acedata.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        run_stages([IngestConfig(name="ingest", sources=[bucket + "/nothing-here"])], str(tmp_path / "r"),
                   executor="local")
