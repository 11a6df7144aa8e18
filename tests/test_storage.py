"""The filesystem layer on a local disk, fsspec's memory://, and a real S3-compatible server.

The S3 tests talk to moto's standalone server (tests/s3_server.py) over HTTP on loopback,
through the same pyarrow S3 filesystem a cluster would use against AWS.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import uuid

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from unit_kill import KILL_POINTS, color_stage, die_in_unit, ingested_images, stage_rows

from acedata import runtime, shards, storage
from acedata.cli import main
from acedata.mining.synthetic import generate


@pytest.fixture(params=["local", "memory", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "memory":
        return f"memory://acedata-{uuid.uuid4().hex[:8]}"
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.bucket}/{uuid.uuid4().hex[:8]}"


def test_helpers_round_trip_on_every_filesystem(root):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    storage.save_npy(storage.join(root, "x", "c.npy"), a)
    storage.write_json(storage.join(root, "x", "m.json"), {"k": 1})
    storage.write_parquet(storage.join(root, "y", "p.parquet"), pa.table({"v": [1, 2]}))
    assert np.array_equal(storage.load_npy(storage.join(root, "x", "c.npy")), a)
    assert storage.read_json(storage.join(root, "x", "m.json")) == {"k": 1}
    assert storage.read_parquet(storage.join(root, "y", "p.parquet")).column("v").to_pylist() == [1, 2]
    assert storage.subdirs(root) == ["x", "y"]
    assert [(os.path.basename(d), sorted(f)) for d, _, f in storage.walk(root)] == [
        (os.path.basename(root), []), ("x", ["c.npy", "m.json"]), ("y", ["p.parquet"])]
    assert not any(n.startswith(".tmp") for _, _, f in storage.walk(root) for n in f)  # no temp debris
    storage.delete_dir(storage.join(root, "x"))
    assert not storage.exists_uri(storage.join(root, "x", "c.npy")) and storage.subdirs(root) == ["y"]
    storage.delete_dir(storage.join(root, "never-made"))  # a missing scratch dir is fine


def test_streamed_output_appears_whole_or_not_at_all(root):
    target = storage.join(root, "out", "records.jsonl")
    with pytest.raises(RuntimeError), storage.open_output(target) as f:
        f.write(b"half a file")
        raise RuntimeError("the writer failed")
    assert not storage.exists_uri(target)
    assert [n for _, _, files in storage.walk(root) for n in files] == []  # no temp or partial object left
    with storage.open_output(target) as f:
        f.write(b"a\nb\n")
    assert storage.read_bytes(target) == b"a\nb\n"


def test_relative_paths_are_made_absolute_where_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert storage.absolute("s3://b/runs/x") == "s3://b/runs/x"
    assert storage.resolve("runs/x")[1] == str(tmp_path / "runs" / "x")


def test_table_write_read_validate_on_every_filesystem(root):
    from acedata import schemas

    d = storage.join(root, "t")
    rows = pa.Table.from_pylist([{"source_uri": str(i), "stage": "t", "reason": "r"} for i in range(130)],
                                schemas.QUARANTINE)
    w = shards.ShardWriter(d, schemas.QUARANTINE, unit="u1", max_rows=50)
    w.write(rows)
    w.commit()
    m = shards.finalize_manifest(d, schemas.QUARANTINE)
    assert m["rows"] == 130 and len(m["shards"]) == 3
    assert all(shards.shard_unit(s["file"]) == "u1" for s in m["shards"])
    assert shards.read_table(d).num_rows == 130 and shards.validate(d) == []
    # the sha256 hashed while streaming matches the object as stored
    fs, p = storage.resolve(d)
    assert [shards.sha256_file(fs, f"{p}/{s['file']}") for s in m["shards"]] == [s["sha256"] for s in m["shards"]]


def test_memory_and_s3_runs_keep_cluster_and_pair_scratch_off_the_local_disk(root, tmp_path, monkeypatch, capsys):
    """The issue's repro: `--out memory://run` put centroids.npy in ./run/cluster and then failed."""
    if "://" not in root:
        pytest.skip("a local root is the baseline, covered by test_mining_stages")
    monkeypatch.chdir(tmp_path)
    g = generate(n_coarse=3, fine_per_coarse=2, group_size=6, near_dups=0, bridges=0, seed=3)
    emb = storage.join(root, "emb.parquet")
    arr = pa.array(g.x.astype(np.float32).tolist(), pa.list_(pa.float32(), g.x.shape[1]))
    storage.write_parquet(emb, pa.table({"image_id": g.ids, "embedding": arr}))
    out = storage.join(root, "run")
    assert main(["pair", "--embeddings", emb, "--out", out, "--k", "3", "--tau-low", "0.7", "--tau-high", "0.97",
                 "--min-pair-sim", "0.7", "--executor", "local", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert os.listdir(tmp_path) == []  # nothing landed in the working directory
    assert storage.exists_uri(storage.join(out, "cluster", "centroids.npy"))
    assert not storage.exists_uri(storage.join(out, "pair", "_partitions"))  # scratch removed at finish
    pairs = shards.read_table(storage.join(out, "pair", "pairs"))
    assert pairs.num_rows == summary["stages"][1]["counts"]["pairs"] > 0
    assert shards.validate(storage.join(out, "pair", "pairs")) == []


# --- the commit protocol on an object store: a worker killed at each step --------------------


@pytest.fixture(scope="module")
def s3_images(s3_server, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("s3corpus")
    return ingested_images(str(d / "corpus"), f"s3://{s3_server.bucket}/protocol-input", seed=1)


@pytest.mark.parametrize("where", KILL_POINTS)
def test_s3_unit_killed_while_committing_is_redone_exactly(s3_server, s3_images, where):
    clean = color_stage(s3_images, f"s3://{s3_server.bucket}/clean-{where}")
    runtime.run_stage(clean, executor="local")
    expected = stage_rows(clean)

    out = f"s3://{s3_server.bucket}/crash-{where}"
    stage = color_stage(s3_images, out)
    units = stage.plan()
    runtime.execute_unit(stage, units[0])
    kept = shards.unit_fragment(stage.ctx.out("embeddings"), units[0].id)
    child = multiprocessing.get_context("spawn").Process(
        target=die_in_unit, args=(s3_images, out, 1, where, s3_server.env()))
    child.start()
    child.join(120)
    assert child.exitcode == 137, "the worker did not die where it was meant to"

    table = stage.ctx.out("embeddings")
    listed = shards.finalize_manifest(table, stage.output_schema("embeddings"))
    prefix = f"crash-{where}/stats/embeddings/"
    left = [k[len(prefix):] for k in s3_server.keys(prefix) if k.endswith(".parquet")]
    if where == "mid_shard":  # an unfinished upload is invisible: no object, no temp name
        assert all(shards.shard_unit(n) == units[0].id for n in left)
    elif where == "before_fragment":  # the shards are uploaded under their final names, but nothing lists them
        assert any(shards.shard_unit(n) == units[1].id for n in left)
    if where != "before_done":
        assert units[1].id not in shards.committed_units(table)
        assert {s["file"] for s in listed["shards"]} == {s["file"] for s in kept["shards"]}
    assert units[1].id not in runtime.done_units(f"{out}/stats")

    summary = runtime.run_stage(color_stage(s3_images, out), executor="local")  # the rerun
    assert stage_rows(stage) == expected
    assert summary["counts"]["embeddings"] == len(expected)
    assert shards.validate(table) == []  # no unlisted leftovers, every sha256 matches
    assert shards.unit_fragment(table, units[0].id) == kept  # the committed unit was not touched
