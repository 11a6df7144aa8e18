"""Assemble's distributed planner (waves on workers) against the single-process reference.

A generated world with every shape the planner must get right: synthesis chains longer
than max_history, a branching parent, a synthesis edit on top of a mined pair, mining sets,
multi-input CUs (frame limits), a long path of images (several star rounds), duplicated pair
ids and instruction variants across tables (the first wins), images in two tables, missing
images, reviews (edit, accept, reject in the middle of a chain, orphan), captions. The
distributed rows — in shard order — must equal the reference's rows exactly, at several
bucket counts; and the driver must never read a row.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from acedata import shards, shuffle
from acedata.assemble import reference, split
from acedata.assemble.records import EDGES
from acedata.images import encode, image_cell, pixel_id
from acedata.review.table import append_reviews, review_id
from acedata.runtime import run_stage
from acedata.schemas import IMAGES, INSTRUCTIONS, PAIRS
from acedata.stage import RunContext
from acedata.stages.assemble import Assemble, AssembleConfig
from acedata.unionfind import group_roots

T0 = dt.datetime(2026, 2, 1, 8, 0, tzinfo=dt.UTC)


def _image(k: int) -> dict:
    im = Image.new("RGB", (6 + k % 5, 4 + k % 3), (k * 37 % 256, k * 91 % 256, k * 13 % 256))
    return {"image_id": pixel_id(im), "source_uri": f"gen://{k}", "width": im.width, "height": im.height,
            "format": "PNG", "image": image_cell(encode(im, "PNG")), "kind": "image"}


def _pair(pid: str, src: str, tgt: str, task: str = "low_level", **kw) -> dict:
    return {"pair_id": pid, "source_id": src, "target_id": tgt, "task": task, "subtask": "x",
            "provenance": json.dumps({"gen": pid}), **kw}


def _ins(pid: str, v: int, text: str) -> dict:
    return {"pair_id": pid, "variant": v, "instruction": text, "method": "template", "model": None}


def _review(pid: str, decision: str, minute: int, **kw) -> dict:
    at = T0 + dt.timedelta(minutes=minute)
    return {"review_id": review_id(pid, "ann", at, "review_app"), "pair_id": pid, "annotator": "ann",
            "decision": decision, "decided_at": at, "origin": "review_app", **kw}


def _world(root: str) -> dict[str, list[str]]:
    imgs = [_image(k) for k in range(70)]
    i = [r["image_id"] for r in imgs]
    pairs, instr = [], []

    def add(pid: str, src: int, tgt: int, texts: list[str] | None = None, **kw) -> None:
        pairs.append(_pair(pid, i[src], i[tgt], **kw))
        for v, t in enumerate(texts if texts is not None else [f"{pid} {{image}}", f"redo {pid} on {{image}}"]):
            instr.append(_ins(pid, v, t))

    for k in range(6):  # a synthesis chain 0->1->...->6, longer than max_history
        add(f"syn{k}", k, k + 1, parent_pair_id=f"syn{k - 1}" if k else None)
    add("branch", 6, 7, parent_pair_id="syn5")  # a second child of syn5
    add("badparent", 20, 21, parent_pair_id="syn2")  # parent's target is not its source: no history
    add("midreject", 7, 8, parent_pair_id="branch")
    add("after_reject", 8, 9, parent_pair_id="midreject")
    for a in range(10, 15):  # mining set 1: all ordered pairs of five images
        for b in range(10, 15):
            if a != b:
                add(f"m1-{a}-{b}", a, b, task="natural_edit", set_id=1)
    for a, b in [(15, 16), (16, 17), (17, 15)]:  # mining set 2: a cycle, one pair unlabelled
        add(f"m2-{a}-{b}", a, b, texts=[] if a == 17 else None, task="natural_edit", set_id=2)
    add("on_mined", 12, 18, parent_pair_id="m1-11-12")  # a synthesis edit on top of a mined pair
    add("multi1", 22, 23, texts=["mix {image1} with {image2}"], extra_input_ids=[i[24], i[25]])
    add("multi2", 23, 26, texts=["then {image1} and {image2}"], extra_input_ids=[i[27]], parent_pair_id="multi1")
    add("multi3", 26, 28, texts=["last {image}"], parent_pair_id="multi2")
    for k in range(40, 54):  # a long path of images: its component takes several star rounds
        add(f"path{k}", k, k + 1, task="controllable")
    add("missing", 30, 31, mask_id="f" * 64)  # its mask is in no images table
    add("child_of_missing", 31, 32, parent_pair_id="missing")
    add("badref", 33, 34, texts=["use {image2}", "fine {image}"])
    dup_pairs = [_pair("syn0", i[60], i[61])]  # loses to the first table's syn0
    dup_instr = [_ins("syn1", 0, "loses {image}"), _ins("syn1", 2, "third {image}")]
    instr += [_ins(f"t2i:{i[45]}", 0, "a caption in the path"), _ins(f"t2i:{i[62]}", 0, "a lone caption"),
              _ins(f"t2i:{'e' * 64}", 0, "no such image"), _ins("nopair", 0, "orphan {image}")]
    reviews = [_review("midreject", "reject", 1, reject_reason="not_an_edit"),
               _review("syn3", "edit", 2, instruction="reviewed {image}", chosen_method="human"),
               _review("m1-10-11", "accept", 3, chosen_variant=1),
               _review("badref", "edit", 4, instruction="still {image3}", chosen_method="human"),
               _review("ghost", "reject", 5, reject_reason="other")]
    tables = {"images": [os.path.join(root, "imgA"), os.path.join(root, "imgB")],
              "pairs": [os.path.join(root, "pairsA"), os.path.join(root, "pairsB")],
              "instructions": [os.path.join(root, "instrA"), os.path.join(root, "instrB")]}
    # images 0..49 in A, 40..69 in B (overlap: the first table wins); several shards each
    shards.write_table(tables["images"][0], pa.Table.from_pylist(imgs[:50], IMAGES), IMAGES, max_rows=13)
    shards.write_table(tables["images"][1], pa.Table.from_pylist(imgs[40:], IMAGES), IMAGES, max_rows=11)
    shards.write_table(tables["pairs"][0], pa.Table.from_pylist(pairs, PAIRS), PAIRS, max_rows=17)
    shards.write_table(tables["pairs"][1], pa.Table.from_pylist(dup_pairs, PAIRS), PAIRS)
    shards.write_table(tables["instructions"][0], pa.Table.from_pylist(instr, INSTRUCTIONS), INSTRUCTIONS, max_rows=29)
    shards.write_table(tables["instructions"][1], pa.Table.from_pylist(dup_instr, INSTRUCTIONS), INSTRUCTIONS)
    append_reviews(root, reviews)
    return tables


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    root = str(tmp_path_factory.mktemp("plan"))
    return root, _world(root)


def _distributed(root: str, tables: dict, name: str, **cfg) -> tuple[Assemble, dict, dict, list]:
    stage = Assemble(AssembleConfig(name=name, dataset_card=False, **cfg), RunContext(root, os.path.join(root, name), tables))
    summary = run_stage(stage, "local")
    rows = {t: shards.read_table(stage.ctx.out(t)).to_pylist() for t in ("lcu", "lcu_validation")}
    return stage, summary, rows, shards.read_table(stage.ctx.out("quarantine")).to_pylist()


def _key(q: dict) -> tuple:
    return (q["reason"], q["item_id"], q["detail"])


CONFIGS = [
    {"max_history": 3, "validation_fraction": 0.4, "rows_per_unit": 5, "shuffle_rows": 10**6},
    {"max_history": 3, "validation_fraction": 0.4, "rows_per_unit": 5, "shuffle_rows": 9},
    {"max_history": 3, "validation_fraction": 0.4, "rows_per_unit": 7, "shuffle_rows": 2, "seed": 3},
    {"max_history": 2, "instruction_variants": "one", "max_condition_frames": 4, "include_t2i": False,
     "rows_per_unit": 4, "shuffle_rows": 5, "seed": 1},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["one-bucket", "buckets-9", "buckets-2", "one-variant"])
def test_distributed_plan_equals_reference(world, cfg):
    root, tables = world
    name = "asm-" + "-".join(f"{v}" for v in cfg.values())
    stage, summary, rows, q = _distributed(root, tables, name, **cfg)
    want = reference.plan(stage.config, tables["images"], tables["pairs"], tables["instructions"],
                          stage.review_tables())
    ref_rows = reference.rows(want, tables["images"])
    for t in ("lcu", "lcu_validation"):
        assert [r["sample_id"] for r in rows[t]] == [r["sample_id"] for r in ref_rows[t]], t  # the same order
        assert rows[t] == ref_rows[t], t  # and the same rows, image bytes included
    assert sorted(map(_key, q)) == sorted(map(_key, want.quarantine))
    for k, v in want.counts.items():
        assert summary["counts"][k] == v, k
    assert not os.path.exists(os.path.join(root, name, "_scratch"))
    if cfg["shuffle_rows"] < 10:
        assert summary["units"] > 30  # really partitioned: many buckets per wave


def test_world_has_the_shapes_it_claims(world):
    """The reference plan of the generated world exercises what the comparison relies on."""
    root, tables = world
    c = AssembleConfig(name="x", max_history=3, validation_fraction=0.4)
    p = reference.plan(c, tables["images"], tables["pairs"], tables["instructions"], [os.path.join(root, "review", "reviews")])
    samples = [s for part in p.samples.values() for s in part]
    chains = {s["chain"][-1]: s["chain"] for s in samples if len(s["chain"]) > 1}
    assert chains["syn5"] == ["syn2", "syn3", "syn4", "syn5"]  # cut at max_history
    assert chains["branch"] == ["syn3", "syn4", "syn5", "branch"]
    assert chains["on_mined"][-2:] == ["m1-11-12", "on_mined"] and len(chains["on_mined"]) == 4
    assert chains["multi3"] == ["multi1", "multi2", "multi3"]
    assert "after_reject" not in chains and "badparent" not in chains and "child_of_missing" not in chains
    reasons = {(q["item_id"], q["reason"]) for q in p.quarantine}
    assert {("midreject", "review_rejected"), ("missing", "missing_image"), ("badref", "bad_indicator"),
            ("ghost", "orphan_review"), ("nopair", "orphan_instruction"), ("m2-17-15", "no_instruction")} <= reasons
    assert p.samples["train"] and p.samples["validation"]
    syn0 = next(s for s in samples if s["chain"] == ["syn0"])
    assert syn0["pairs"]["syn0"]["provenance"] == json.dumps({"gen": "syn0"})  # the first pairs table won
    syn1 = {s["variants"][0]: s for s in samples if s["chain"] == ["syn1"]}
    assert sorted(syn1) == [0, 1, 2] and syn1[0]["instructions"]["syn1"]["0"]["instruction"] == "syn1 {image}"


def test_driver_reads_no_rows(world, monkeypatch):
    """plan() and next_wave() see manifests and counts only: reading any row on the driver fails."""
    root, tables = world
    on_driver = {"now": False}

    def guard(fn):
        def wrapped(*a, **kw):
            assert not on_driver["now"], f"the driver called {fn.__name__}"
            return fn(*a, **kw)
        return wrapped

    for mod, name in [(shards, "open_parquet"), (shards, "read_table"), (shards, "iter_batches"),
                      (shuffle, "read_bucket")]:
        monkeypatch.setattr(mod, name, guard(getattr(mod, name)))

    class Watched(Assemble):
        def plan(self):
            on_driver["now"] = True
            try:
                return super().plan()
            finally:
                on_driver["now"] = False

        def next_wave(self, wave, counts):
            on_driver["now"] = True
            try:
                return super().next_wave(wave, counts)
            finally:
                on_driver["now"] = False

    stage = Watched(AssembleConfig(name="watched", dataset_card=False, validation_fraction=0.4, shuffle_rows=9),
                    RunContext(root, os.path.join(root, "watched"), tables))
    summary = run_stage(stage, "local")
    assert summary["counts"]["lcu"] + summary["counts"]["lcu_validation"] > 50


@pytest.mark.parametrize("buckets", [1, 3, 16])
def test_star_rounds_find_the_components(tmp_path, buckets):
    """Large/small-star rounds over a partitioned edge list give every node its component's smallest node."""
    rng = np.random.default_rng(buckets)
    nodes = [f"n{k:04d}" for k in rng.permutation(300)]
    edges = [(nodes[k], nodes[k + 1]) for k in range(120)]  # one long path
    edges += [(nodes[a], nodes[b]) for a, b in rng.integers(120, 300, (90, 2))]  # random sparse graph
    scratch = str(tmp_path)
    t = pa.table({"key": [a for a, b in edges] + [b for a, b in edges],
                  "nbr": [b for a, b in edges] + [a for a, b in edges]}, schema=EDGES)
    shuffle.write_buckets(t, "key", buckets, split.edges_dir(scratch, 0), "w")
    r = 0
    while True:
        unsettled = sum(split.star_round(r, r % 2 == 0, b, scratch, buckets, f"u{b}").get("asm_unsettled", 0)
                        for b in range(buckets))
        if r % 2 == 0 and unsettled == 0:
            break
        r += 1
        assert r < 60
    label: dict[str, str] = {}
    for b in range(buckets):
        nb = defaultdict(set)
        e = shuffle.read_bucket(split.edges_dir(scratch, r), b, schema=EDGES)
        for u, v in zip(e.column("key").to_pylist(), e.column("nbr").to_pylist()):
            nb[u].add(v)
        label |= {u: min(min(vs), u) for u, vs in nb.items()}
    want = group_roots([a, b] for a, b in edges)
    assert label == want
    assert r > 2  # the path needed several rounds


@pytest.mark.slow
def test_plan_on_object_storage_equals_reference(world, s3_server):
    """Scratch buckets and outputs on S3 (moto on loopback): the same rows, and no scratch left behind."""
    _, tables = world
    out = f"s3://{s3_server.bucket}/asm-plan"
    stage = Assemble(AssembleConfig(name="s3", dataset_card=False, validation_fraction=0.4, rows_per_unit=30,
                                    shuffle_rows=100), RunContext(out, f"{out}/s3", tables))
    run_stage(stage, "local")
    want = reference.rows(reference.plan(stage.config, tables["images"], tables["pairs"], tables["instructions"],
                                         stage.review_tables()), tables["images"])
    for t in ("lcu", "lcu_validation"):
        assert shards.read_table(stage.ctx.out(t)).to_pylist() == want[t], t
    assert not [k for k in s3_server.keys("asm-plan/s3/_scratch")]


@pytest.mark.parametrize("op", ["chain", "rebucket", "label", "locate", "read", "build"])
def test_crash_in_a_later_wave_resumes_to_the_same_rows(world, monkeypatch, op):
    """A unit of a later wave fails once; the rerun redoes only uncommitted units and gives the same rows."""
    root, tables = world
    cfg = {"validation_fraction": 0.4, "rows_per_unit": 6, "shuffle_rows": 9}
    c = AssembleConfig(name="ref", **cfg)
    want = reference.plan(c, tables["images"], tables["pairs"], tables["instructions"],
                          [os.path.join(root, "review", "reviews")])
    clean, clean_q = reference.rows(want, tables["images"]), want.quarantine
    ran: list[str] = []
    real = Assemble.process

    def failing(self, unit):
        ran.append(unit.id)
        if unit.payload["op"] == op and unit.payload["bucket"] == 1 and not failing.failed:
            failing.failed = True
            raise RuntimeError("injected")
        return real(self, unit)

    failing.failed = False
    monkeypatch.setattr(Assemble, "process", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _distributed(root, tables, f"crash-{op}", **cfg)
    first = list(ran)
    _, _, rows, q = _distributed(root, tables, f"crash-{op}", **cfg)
    assert rows == clean and sorted(map(_key, q)) == sorted(map(_key, clean_q))  # as a clean run gives
    redone = set(ran[len(first):]) & set(first[:-1])
    assert not redone, redone  # committed units of every wave are not run again


def _star_step_sets(key: list[str], nbr: list[str], large: bool) -> tuple[list[str], list[str], int]:
    """The star step as per-node Python sets (what star_round did before it was vectorised)."""
    nbrs: dict[str, set[str]] = defaultdict(set)
    for u, v in zip(key, nbr):
        if u != v:
            nbrs[u].add(v)
    src: list[str] = []
    dst: list[str] = []
    unsettled = 0
    for u, nb in sorted(nbrs.items()):
        m = min(min(nb), u)
        if large:
            unsettled += int(m < u and len(nb) > 1)
            linked = [v for v in nb if v > u]
        else:
            linked = [v for v in nb if v < u] + [u]
        for v in sorted(linked):
            if v != m:
                src += [v, m]
                dst += [m, v]
    return src, dst, unsettled


@pytest.mark.parametrize("large", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_star_step_matches_per_node_sets(large, seed):
    """The vectorised step emits exactly the per-node step's rows, in its order (repeats, self-loops,
    ids of different lengths and non-ASCII ids included), and counts the same unsettled nodes."""
    rng = np.random.default_rng(seed)
    ids = [f"n{k}" for k in range(60)] + ["é1", "z", "Ω", "n", "n00", "\U0001f600"]
    key = [ids[i] for i in rng.integers(0, len(ids), 400)]
    nbr = [ids[i] for i in rng.integers(0, len(ids), 400)] if seed else key[::-1]
    chunked = [pa.chunked_array([pa.array(x[:150], pa.string()), pa.array(x[150:], pa.string())]) for x in (key, nbr)]
    src, dst, unsettled = split.star_step(*chunked, large)
    assert (src.to_pylist(), dst.to_pylist(), unsettled) == _star_step_sets(key, nbr, large)
    empty = pa.chunked_array([], pa.string())
    a, z, n = split.star_step(empty, empty, large)
    assert (a.to_pylist(), z.to_pylist(), n) == ([], [], 0)


def test_fetch_serves_the_copy_the_reader_keeps(tmp_path, monkeypatch):
    """Image bytes come by the fetch waves: an id stored twice, its first copy listed in the sibling
    `duplicates` table (an older by-key listing), is served from the second copy, as the reader does;
    shards of several row groups, read two groups at a time."""
    from acedata.assemble import fetch
    from acedata.schemas import DUPLICATES

    monkeypatch.setattr(fetch, "GROUPS_PER_READ", 2)

    imgs = [_image(k) for k in range(8)]
    ids = [r["image_id"] for r in imgs]
    first = {**imgs[1], "source_uri": "gen://first-copy", "image": image_cell(encode(Image.new("RGB", (3, 3)), "PNG"))}
    rows = [imgs[0], first, *imgs[2:], imgs[1]]  # id 1: a listed copy first, the kept one last
    images = str(tmp_path / "w" / "images")
    shards.write_table(images, pa.Table.from_pylist(rows, IMAGES), IMAGES, max_rows=5, row_group_bytes=1)
    assert shards.open_parquet(shards.list_shards(images)[0]).metadata.num_row_groups == 5
    shards.write_table(str(tmp_path / "w" / "duplicates"),
                       pa.Table.from_pylist([{"source_uri": "gen://first-copy", "image_id": ids[1]}], DUPLICATES),
                       DUPLICATES, unit="cross-unit")
    pairs = [_pair(f"p{k}", ids[k], ids[k + 1]) for k in range(7)]
    instr = [_ins(f"p{k}", 0, f"edit {k} {{image}}") for k in range(7)]
    tables = {"images": [images], "pairs": [str(tmp_path / "pairs")], "instructions": [str(tmp_path / "instr")]}
    shards.write_table(tables["pairs"][0], pa.Table.from_pylist(pairs, PAIRS), PAIRS)
    shards.write_table(tables["instructions"][0], pa.Table.from_pylist(instr, INSTRUCTIONS), INSTRUCTIONS)
    cfg = {"validation_fraction": 0.3, "rows_per_unit": 2, "shuffle_rows": 3, "reviews": False}
    stage, _, got, _ = _distributed(str(tmp_path), tables, "dups", **cfg)
    want = reference.rows(reference.plan(stage.config, tables["images"], tables["pairs"], tables["instructions"], []),
                          tables["images"])
    assert got == want
    row = next(r for t in got.values() for r in t if r["pair_id"] == "p1")
    assert row["inputs"][0]["image"]["bytes"] == imgs[1]["image"]["bytes"]  # the kept copy, not the listed one
