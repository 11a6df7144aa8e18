"""Shard IO: size bounds, atomic commits, manifests, validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq

from acedata import schemas, shards
from acedata.cli import main


def _quarantine_rows(n: int, detail_len: int = 50) -> pa.Table:
    return pa.Table.from_pylist(
        [{"source_uri": f"s{i}", "stage": "t", "reason": "r", "detail": "x" * detail_len} for i in range(n)],
        schemas.QUARANTINE,
    )


def test_shards_are_bounded_by_rows_and_bytes(tmp_path):
    d = str(tmp_path / "t")
    w = shards.ShardWriter(d, schemas.QUARANTINE, unit="u", max_rows=300)
    for _ in range(4):
        w.write(_quarantine_rows(250))
    w.commit()
    m = shards.finalize_manifest(d, schemas.QUARANTINE)
    assert m["rows"] == 1000 and [s["rows"] for s in m["shards"]] == [300, 300, 300, 100]

    d2 = str(tmp_path / "t2")
    w = shards.ShardWriter(d2, schemas.QUARANTINE, unit="u", max_bytes=20_000, row_group_bytes=4_000)
    w.write(_quarantine_rows(1000, detail_len=100))
    w.commit()
    m2 = shards.finalize_manifest(d2, schemas.QUARANTINE)
    assert m2["rows"] == 1000 and len(m2["shards"]) > 3
    # row groups are sized for streaming: several per shard
    pf = pq.ParquetFile(os.path.join(d2, m2["shards"][0]["file"]))
    assert pf.num_row_groups > 1
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert sum(b.num_rows for b in shards.iter_batches(d2, batch_size=64)) == 1000
    assert shards.validate(d2) == []


def test_image_bytes_are_stored_without_a_second_compression(tmp_path):
    """JPEG/WebP/PNG bytes go in as they are; every other column, image paths included, is zstd."""
    d = str(tmp_path / "images")
    rows = [{"image_id": f"{i:064x}", "source_uri": f"/x/{i}.jpg", "width": 8, "height": 8, "format": "JPEG",
             "image": {"bytes": os.urandom(3000), "path": None}, "kind": "image"} for i in range(20)]
    shards.write_table(d, pa.Table.from_pylist(rows, schemas.IMAGES), schemas.IMAGES, unit="u")
    pf = pq.ParquetFile(os.path.join(d, shards.read_manifest(d)["shards"][0]["file"]))
    codecs = {pf.metadata.row_group(0).column(i).path_in_schema: pf.metadata.row_group(0).column(i).compression
              for i in range(pf.metadata.num_columns)}
    assert codecs.pop("image.bytes") == "UNCOMPRESSED"
    assert set(codecs.values()) == {"ZSTD"} and "image.path" in codecs and "meta" in codecs
    assert pf.read().to_pylist()[3]["image"] == rows[3]["image"]
    assert shards.codecs_of(schemas.PAIRS) == "zstd"


def test_killed_writer_leaves_no_listed_partial_shard(tmp_path):
    d = str(tmp_path / "t")
    # A first unit commits; a second writer process dies mid-shard (SIGKILL-like _exit).
    shards.write_table(d, _quarantine_rows(10), schemas.QUARANTINE, unit="good")
    script = textwrap.dedent(
        f"""
        import os, pyarrow as pa
        from acedata import schemas, shards
        w = shards.ShardWriter({d!r}, schemas.QUARANTINE, unit="dying", max_rows=50)
        rows = pa.Table.from_pylist([{{"source_uri": str(i), "stage": "t", "reason": "r"}} for i in range(120)],
                                    schemas.QUARANTINE)
        w.write(rows)   # two full shards renamed, a third still open under a temporary name
        os._exit(9)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert any(n.startswith(".tmp-") for n in os.listdir(d)), "the open shard should exist only as a temp file"
    assert "dying" not in shards.committed_units(d)
    m = shards.finalize_manifest(d, schemas.QUARANTINE)
    assert m["rows"] == 10
    assert all(s["file"].startswith("good-") for s in m["shards"])
    assert shards.read_table(d).num_rows == 10
    # the dead writer's renamed-but-uncommitted shards are visible to validate as unlisted files
    problems = shards.validate(d)
    assert problems and all("not listed" in p for p in problems)


def test_validate_catches_corruption_missing_and_count_mismatch(tmp_path, capsys):
    d = str(tmp_path / "t")
    w = shards.ShardWriter(d, schemas.QUARANTINE, unit="u", max_rows=40)
    w.write(_quarantine_rows(100))
    w.commit()
    shards.finalize_manifest(d, schemas.QUARANTINE, table="quarantine")
    assert shards.validate(d) == []
    assert main(["validate", d]) == 0

    m = shards.read_manifest(d)
    first = os.path.join(d, m["shards"][0]["file"])
    with open(first, "r+b") as f:  # flip a byte in the middle of the shard
        f.seek(os.path.getsize(first) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    problems = shards.validate(d)
    assert any("sha256 mismatch" in p for p in problems)
    assert main(["validate", d]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out

    os.remove(os.path.join(d, m["shards"][1]["file"]))
    assert any("missing" in p for p in shards.validate(d))

    m["shards"][2]["rows"] += 1
    with open(os.path.join(d, shards.MANIFEST), "w") as f:
        json.dump(m, f)
    assert any("rows, manifest says" in p for p in shards.validate(d))


def test_validate_rejects_wrong_schema_and_unknown_path(tmp_path, capsys):
    d = str(tmp_path / "clusters")
    wrong = pa.table({"image_id": ["a"], "cluster_id": pa.array([1], pa.int64()), "distance": [0.1]})
    shards.write_table(d, wrong, wrong.schema, table="clusters")
    m = shards.read_manifest(d)
    m["table"] = "clusters"
    with open(os.path.join(d, shards.MANIFEST), "w") as f:
        json.dump(m, f)
    assert any("schema differs" in p for p in shards.validate(d))
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_file_uri_and_single_file_reads(tmp_path):
    d = str(tmp_path / "t")
    shards.write_table(d, _quarantine_rows(7), schemas.QUARANTINE)
    uri = "file://" + d
    assert shards.count_rows(uri) == 7
    assert shards.read_table(uri).num_rows == 7
    one = shards.list_shards(d)[0]
    assert shards.read_table(one).num_rows == 7
