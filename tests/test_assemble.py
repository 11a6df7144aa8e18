"""Assembly: LCU rows from pairs + instructions + images, multi-turn chains, splits, shards, card."""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
from collections import Counter

import polars as pl
import pyarrow.parquet as pq
import pytest
from assemble_world import assemble, build_world
from PIL import Image

from acedata import shards
from acedata.lcu import INDICATOR, IndicatorError, indicator, local_refs, renumber, renumber_lcu
from acedata.runtime import run_stage
from acedata.stage import RunContext
from acedata.stages.assemble import Assemble, AssembleConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_corpus):
    run = str(tmp_path_factory.mktemp("run"))
    w = build_world(run, demo_corpus)
    w["run"] = run
    w["summary"] = assemble(run, max_history=2, validation_fraction=0.3, rows_per_unit=7, seed=0)
    rows = []
    for t in ("lcu", "lcu_validation"):
        for r in shards.read_table(os.path.join(run, "assemble", t)).to_pylist():
            rows.append({**r, "split": t})
    w["rows"] = rows
    w["by_bytes"] = {hashlib.sha256(v).hexdigest(): k for k, v in w["images"].items()}
    return w


# --- indicator helpers --------------------------------------------------------------------


def test_indicator_tokens_and_renumbering():
    assert [indicator(i) for i in (0, 1, 9)] == ["{image}", "{image1}", "{image9}"]
    assert local_refs("put {image1} on {image2}, like {image}") == [1, 2, 1]
    assert renumber("blur {image}", 1, 0) == "blur {image}"
    assert renumber("blur {image}", 1, 3) == "blur {image3}"
    assert renumber("{image1} into {image2}", 2, 0) == "{image} into {image1}"
    assert renumber("{image1} into {image2}", 2, 4) == "{image4} into {image5}"
    # one pass: a rewritten token is never rewritten again
    assert renumber("{image2} then {image1}", 2, 1) == "{image2} then {image1}"
    assert renumber_lcu(["a {image}", "b {image}", "c {image1} {image2}"], [1, 1, 2]) == [
        "a {image}", "b {image1}", "c {image2} {image3}"]
    with pytest.raises(IndicatorError):
        renumber("{image3}", 2, 0)
    with pytest.raises(IndicatorError):
        renumber_lcu(["{image}"] * 10, [1] * 10)  # the target would need index 10


# --- rows ------------------------------------------------------------------------------------


def _ids(w, cells) -> list[str]:
    return [w["by_bytes"][hashlib.sha256(c["bytes"]).hexdigest()] for c in cells]


def test_row_counts_and_quarantine(world):
    w, rows = world, world["rows"]
    pairs = {p["pair_id"]: p for p in w["pairs"]}
    variants = Counter(i["pair_id"] for i in w["instr"] if "{image3}" not in i["instruction"]
                       and "{image2} in" not in i["instruction"])
    usable = {p for p in pairs if variants.get(p) and p != "missing"}
    single = [r for r in rows if r["num_turns"] == 1 and r["task"] != "text_to_image"]
    assert Counter(r["pair_id"] for r in single) == Counter({p: variants[p] for p in usable})
    multi = [r for r in rows if r["num_turns"] > 1]
    mined = [p for p in pairs if p.startswith("mined-")]
    # every mined pair B->C continues a path X->B of its set; chain2 and chain3 continue synthesis chains
    assert sorted(r["pair_id"] for r in multi) == sorted(["chain2", "chain3", *mined])
    assert {r["pair_id"]: r["num_turns"] for r in multi if r["pair_id"].startswith("chain")} == {"chain2": 2,
                                                                                                 "chain3": 3}
    assert all(r["num_turns"] == 3 for r in multi if r["pair_id"].startswith("mined-"))  # max_history=2
    t2i = [r for r in rows if r["task"] == "text_to_image"]
    assert len(t2i) == 1 and t2i[0]["inputs"] == [] and t2i[0]["history"] == []
    assert len({r["sample_id"] for r in rows}) == len(rows)
    q = shards.read_table(os.path.join(w["run"], "assemble", "quarantine")).to_pylist()
    assert Counter((r["reason"], r["item_id"]) for r in q) == Counter({
        ("no_instruction", "unlabelled"): 1, ("bad_indicator", "badref"): 1, ("bad_indicator", "repaint"): 1,
        ("missing_image", "missing"): 1, ("missing_image", "t2i:" + "f" * 64): 1, ("orphan_instruction", "nopair"): 1})
    c = w["summary"]["counts"]
    assert c["lcu"] + c["lcu_validation"] == len(rows) and c["quarantine"] == len(q)
    assert not os.path.exists(os.path.join(w["run"], "assemble", "_plan"))  # work files are cleaned up
    # every pair ends in a row or in quarantine
    assert {r["pair_id"] for r in rows} | {r["item_id"] for r in q} >= set(pairs)


def test_multi_turn_indicators_follow_frame_order(world):
    """Frames as the trainer builds them: target, then history inputs oldest first, then current inputs."""
    w = world
    pairs = {p["pair_id"]: p for p in w["pairs"]}
    texts = {(i["pair_id"], i["variant"]): i["instruction"] for i in w["instr"]}
    checked = 0
    for r in w["rows"]:
        if r["task"] == "text_to_image":
            continue
        cus = [*r["history"], {"instruction": r["instruction"], "inputs": r["inputs"], "target": r["target"]}]
        frames = [inp for cu in cus for inp in cu["inputs"]]  # condition frames 1..N
        n = len(frames)
        assert n <= 9
        assert _ids(w, [f["image"] for f in frames]) == r["source_ids"]
        prov = json.loads(r["provenance"])
        chain = prov["chain"]
        variants = [h["variant"] for h in prov["history_instructions"]] + [prov["instruction"]["variant"]]
        assert chain[-1] == r["pair_id"] and len(chain) == len(cus) == len(variants)
        k = 0
        for cu, pid, v in zip(cus, chain, variants):
            own = list(range(k, k + len(cu["inputs"])))  # condition frame k+1 carries index k
            k += len(cu["inputs"])
            p = pairs[pid]
            assert _ids(w, [cu["inputs"][0]["image"]]) == [p["source_id"]]
            assert _ids(w, [cu["target"]]) == [p["target_id"]]
            assert (cu["inputs"][0]["mask"] is not None) == (p.get("mask_id") is not None)
            original = texts[(pid, v)]
            used = [int(x or 0) for x in INDICATOR.findall(cu["instruction"])]
            assert INDICATOR.sub("@", original) == INDICATOR.sub("@", cu["instruction"])
            assert len(used) == len(local_refs(original)) > 0
            for index, j in zip(used, local_refs(original)):
                assert index == own[j - 1], (original, cu["instruction"], own)
                # the frame an indicator names holds the image the original instruction named
                want = [p["source_id"], *(p.get("extra_input_ids") or [])][j - 1]
                assert _ids(w, [frames[index]["image"]]) == [want]
        # chains are continuous: each history target is the next CU's first input
        for prev, nxt in itertools.pairwise(cus):
            assert prev["target"]["bytes"] == nxt["inputs"][0]["image"]["bytes"]
        checked += len(cus) > 1
    # every pair with a usable predecessor has a multi-turn row: the mined pairs of the 4-image set
    # (all ordered pairs) and the synthesis chain's second and third edits
    assert checked == len(w["mined"]) * (len(w["mined"]) - 1) + 2
    chain3 = next(r for r in w["rows"] if r["pair_id"] == "chain3" and r["num_turns"] == 3)
    # with instruction_variants "all", a history CU uses its pair's first accepted variant (chain1 has
    # two: variant 0 is the template, variant 1 the rewrite)
    assert [h["instruction"] for h in chain3["history"]] == ["turn {image} into black and white", "blur {image1} softly"]
    assert chain3["instruction"] == "remove the marked region from {image2}"
    ref = next(r for r in w["rows"] if r["pair_id"] == "ref")
    assert ref["instruction"] == "draw the subject of {image} in the style of {image1}"


def test_split_has_no_source_overlap(world):
    pairs = {p["pair_id"]: p for p in world["pairs"]}
    seen: dict[str, set[str]] = {"lcu": set(), "lcu_validation": set()}
    for r in world["rows"]:
        imgs = set(r["source_ids"])
        for pid in json.loads(r["provenance"]).get("chain", []):
            imgs.add(pairs[pid]["target_id"])
        seen[r["split"]] |= imgs
    assert seen["lcu"] and seen["lcu_validation"]
    assert not seen["lcu"] & seen["lcu_validation"]


def test_shuffle_is_seeded_and_spans_shards(world, tmp_path):
    run = world["run"]
    order = [r["sample_id"] for r in world["rows"] if r["split"] == "lcu"]
    assert len(shards.list_shards(os.path.join(run, "assemble", "lcu"))) > 1
    out = str(tmp_path)
    assemble(run, "again", out, max_history=2, validation_fraction=0.3, rows_per_unit=7, seed=0, dataset_card=False)
    again = shards.read_table(os.path.join(out, "again", "lcu"), ["sample_id"]).column("sample_id").to_pylist()
    assert again == order
    assemble(run, "reseed", out, max_history=2, validation_fraction=0.3, rows_per_unit=7, seed=1, dataset_card=False)
    other = shards.read_table(os.path.join(out, "reseed", "lcu"), ["sample_id", "pair_id"]).to_pylist()
    assert [r["sample_id"] for r in other] != order
    pair_order = [r["pair_id"] for r in world["rows"] if r["split"] == "lcu"]
    assert pair_order != sorted(pair_order)  # not left in planning order


def test_shards_open_with_datasets_pyarrow_polars(world):
    import datasets

    folder = os.path.join(world["run"], "assemble")
    files = sorted(glob.glob(os.path.join(folder, "lcu", "*.parquet")))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == sum(1 for r in world["rows"] if r["split"] == "lcu")
    row = next(r for r in ds if r["num_turns"] > 1)
    assert isinstance(row["target"], Image.Image)
    assert isinstance(row["inputs"][0]["image"], Image.Image)
    assert isinstance(row["history"][0]["inputs"][0]["image"], Image.Image)
    assert row["target"].size == (row["width"], row["height"])
    splits = datasets.load_dataset(folder)  # the card's YAML names the splits
    assert set(splits) == {"train", "validation"}
    assert len(splits["validation"]) == sum(1 for r in world["rows"] if r["split"] == "lcu_validation")
    t = pq.read_table(files[0])
    assert b"huggingface" in t.schema.metadata and t.num_rows > 0
    counts = pl.scan_parquet(files).group_by("task").len().collect()
    assert counts["len"].sum() == len(ds)
    for table in ("lcu", "lcu_validation", "quarantine"):
        assert shards.validate(os.path.join(folder, table)) == []


def test_dataset_card(world):
    with open(os.path.join(world["run"], "assemble", "README.md"), encoding="utf-8") as f:
        text = f.read()
    for needle in ("configs:", "split: validation", "## Schema", "`history`", "## Counts per task and subtask",
                   "reference_generation", "## Provenance per stage", "synthesize", "## Models used",
                   "tiny-llm@random-init", "tiny-unet@random-init", "Warning", "## Filter thresholds",
                   "`filters.max_ssim` | `0.95`", '"filters": {"min_ssim": 0.5}', "no_instruction"):
        assert needle in text, needle


def test_funnel_of_the_run(world):
    from acedata.stats import compute

    res = compute(world["run"])
    steps = {s["step"]: s["count"] for s in res["funnel"]["steps"]}
    with open(os.path.join(world["run"], "ingest", "_SUCCESS.json"), encoding="utf-8") as f:
        ingest = json.load(f)["summary"]["counts"]
    assert steps["inputs"] == ingest["inputs"]
    q = {(x["stage"], x["reason"]): x["count"] for x in res["funnel"]["quarantined"]}
    assembled_q = shards.count_rows(os.path.join(world["run"], "assemble", "quarantine"))
    assert q[("synth", "low_ssim")] == 2 and q[("assemble", "no_instruction")] == 1
    assert steps["quarantined"] == ingest["quarantine"] + 2 + assembled_q  # build_world wrote 2 synth rows
    mined = sum(p["task"] == "natural_edit" for p in world["pairs"])
    assert mined == len(world["mined"]) * (len(world["mined"]) - 1)
    assert steps["paired"] == mined and steps["synthesized"] == len(world["pairs"]) - mined
    assert steps["lcu_rows"] == len(world["rows"]) == res["rows"]
    assert steps["labelled"] == len({i["pair_id"] for i in world["instr"] if not i["pair_id"].startswith("t2i:")})


def test_ray_run_equals_local_run(world, ray_local, tmp_path):
    """The same units on Ray Data (tasks) give exactly the rows of the in-process run."""
    run, out = world["run"], str(tmp_path)
    config = AssembleConfig(name="onray", max_history=2, validation_fraction=0.3, rows_per_unit=7, seed=0,
                            dataset_card=False)
    inputs = {
        "images": [os.path.join(run, "ingest", "images"), os.path.join(run, "synth", "images")],
        "pairs": [os.path.join(run, "synth", "pairs")],
        "instructions": [os.path.join(run, "label", "instructions")],
    }
    summary = run_stage(Assemble(config, RunContext(out, os.path.join(out, "onray"), inputs)), "ray")
    assert summary["counts"]["lcu"] + summary["counts"]["lcu_validation"] == len(world["rows"])
    for t in ("lcu", "lcu_validation"):
        got = shards.read_table(os.path.join(out, "onray", t), ["sample_id", "instruction"]).to_pylist()
        want = [{"sample_id": r["sample_id"], "instruction": r["instruction"]} for r in world["rows"] if r["split"] == t]
        assert got == want


def test_one_variant_per_pair_is_a_seeded_pick(world, tmp_path):
    """`instruction_variants: one`: one single-turn row per usable pair, its text one of the pair's good
    variants, picked per pair by the seed (so another seed picks differently for some pair)."""
    run, out = world["run"], str(tmp_path)
    good: dict[str, set[str]] = {}
    for i in world["instr"]:
        if "{image3}" not in i["instruction"] and "{image2} in" not in i["instruction"]:
            good.setdefault(i["pair_id"], set()).add(i["instruction"])
    picks = []
    for seed in (0, 1):
        assemble(run, f"one{seed}", out, instruction_variants="one", multi_turn=False, seed=seed, dataset_card=False)
        rows = shards.read_table(os.path.join(out, f"one{seed}", "lcu"), ["pair_id", "instruction", "task"]).to_pylist()
        single = [r for r in rows if r["task"] != "text_to_image"]
        assert Counter(r["pair_id"] for r in single) == Counter(
            {p: 1 for p in good if not p.startswith("t2i:") and p not in ("nopair", "missing")})
        for r in single:
            assert INDICATOR.sub("@", r["instruction"]) in {INDICATOR.sub("@", t) for t in good[r["pair_id"]]}
        picks.append({r["pair_id"]: r["instruction"] for r in single})
    assert picks[0] != picks[1]
