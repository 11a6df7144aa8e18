"""Human reviews in the data flow: assemble applies them, the captioner export curates by them
(issue 13, item 6; Label Studio's round trip is in test_review_labelstudio.py)."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from review_world import cli as _cli
from review_world import review, reviewed_world
from review_world import single as _single

from acedata import shards
from acedata.config import config_hash
from acedata.errors import UserError
from acedata.lcu import INDICATOR
from acedata.pipeline import run_stages
from acedata.review.table import append_reviews
from acedata.stages.assemble import Assemble, AssembleConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_corpus):
    return reviewed_world(str(tmp_path_factory.mktemp("run")), demo_corpus)


def test_assemble_reviewed_text_wins(world):
    rows = world["rows"]
    (c1,) = _single(rows, "chain1")  # one row: the correction replaced both machine variants
    assert c1["instruction"] == "make {image} monochrome" and c1["instruction_method"] == "human_edit"
    prov = json.loads(c1["provenance"])["instruction"]
    assert prov["method"] == "human_edit" and prov["provenance"]["review"]["annotator"] == "ann1"
    (ref,) = _single(rows, "ref")
    assert ref["instruction_method"] == "human_accept"
    assert ref["instruction"] == "draw the subject of {image} in the style of {image1}"  # renumbered as usual
    (rep,) = _single(rows, "repaint")  # its machine variant 1 had a bad indicator; the edit replaced it
    assert rep["instruction"] == "repaint the masked area of {image} in red"
    v1 = next(i["instruction"] for i in world["instr"] if i["pair_id"] == world["accept_v1"] and i["variant"] == 1)
    (acc,) = _single(rows, world["accept_v1"])
    assert acc["instruction"] == v1 and acc["instruction_method"] == "human_accept"
    (cap,) = [r for r in rows if r["task"] == "text_to_image"]
    assert cap["instruction"] == "a corrected caption of a test subject"
    # a skipped pair keeps its machine variants
    assert {r["instruction_method"] for r in _single(rows, sorted(p["pair_id"] for p in world["pairs"]
                                                                  if p["pair_id"].startswith("mined-"))[2])} \
        == {"template", "llm_rewrite"}
    # history CUs of reviewed pairs carry the reviewed text too
    reviewed, seen = {"chain1", "ref", "repaint", world["accept_v1"]}, 0
    for r in rows:
        prov = json.loads(r["provenance"])
        for pid, h, cu in zip(prov.get("chain", []), prov.get("history_instructions", []), r["history"]):
            if pid in reviewed:
                assert h["method"] == "human_accept" and INDICATOR.sub("@", cu["instruction"]) == INDICATOR.sub("@", v1)
                seen += 1
    assert seen > 0


def test_assemble_rejects_go_to_quarantine_and_break_chains(world):
    q = Counter((r["reason"], r["item_id"], r["detail"]) for r in world["q"])
    assert q[("review_rejected", "chain2", "not_an_edit")] == 1
    assert q[("orphan_review", "ghost", "a review of a pair no pairs table has")] == 1
    bad = [r for r in world["q"] if r["item_id"] == world["bad_edit"]]
    assert [r["reason"] for r in bad] == ["bad_indicator"] and bad[0]["detail"].startswith("human_edit text")
    rows = world["rows"]
    assert not [r for r in rows if r["pair_id"] == "chain2"]
    for r in rows:  # no chain passes through the rejected pair
        assert "chain2" not in json.loads(r["provenance"]).get("chain", [])
    assert {r["num_turns"] for r in rows if r["pair_id"] == "chain3"} == {1}
    assert not [r for r in rows if r["pair_id"] == world["bad_edit"]]
    (stale,) = [r for r in world["q"] if r["item_id"] == world["stale"]]
    assert stale["reason"] == "review_stale" and "variant 7 not found" in stale["detail"]
    # every pair ends in a row or in quarantine
    assert {r["pair_id"] for r in rows} | {r["item_id"] for r in world["q"]} >= {p["pair_id"] for p in world["pairs"]}


def test_dataset_card_counts_reviews(world):
    c = world["summary"]["counts"]
    assert (c["reviewed_pairs"], c["review_accepted"], c["review_corrected"], c["review_rejected"]) == (9, 3, 4, 2)
    assert c["review_conflicts"] == 1  # chain1: ann2 accepted, ann1 corrected
    with open(os.path.join(world["run"], "assemble", "README.md"), encoding="utf-8") as f:
        text = f.read()
    human = Counter(r["instruction_method"] for r in world["rows"])
    for needle in ("## Human review", "Pairs reviewed 9: accepted 3, corrected 4, rejected 2",
                   f"accepted (`human_accept`) {human['human_accept']}", f"corrected (`human_edit`) {human['human_edit']}",
                   "| review_rejected | not_an_edit | 1 |", "disagreed: 1"):
        assert needle in text, needle


def test_reviews_change_the_resume_key(world, tmp_path):
    run, out = world["run"], str(tmp_path)
    for name in ("ingest", "synth", "label"):
        os.symlink(os.path.join(run, name), os.path.join(out, name))
    cfg = AssembleConfig(name="asm", dataset_card=False, inputs={
        "images": os.path.join(out, "synth", "images"), "pairs": os.path.join(out, "synth", "pairs"),
        "instructions": os.path.join(out, "label", "instructions")})

    def go() -> dict:
        return run_stages([cfg], out, executor="local", name="t")["stages"][0]

    first = go()
    assert not first.get("skipped") and "reviewed_pairs" not in first["counts"]
    assert go().get("skipped")  # nothing changed
    append_reviews(out, [review("simple-" + "x", "reject", minutes=1, reject_reason="other")])
    again = go()
    assert not again.get("skipped") and again["counts"]["reviewed_pairs"] == 1
    with open(os.path.join(out, "asm", "_SUCCESS.json"), encoding="utf-8") as f:
        assert json.load(f)["config_hash"] != config_hash(cfg)
    assert go().get("skipped")
    # reviews: false ignores the table (and its digest)
    off = Assemble(AssembleConfig(reviews=False), None)
    assert off.review_tables() == []
    # inputs.reviews points at another run's table; a path that is not one is a one-line error
    cfg.inputs["reviews"] = os.path.join(run, "review", "reviews")
    other = go()
    assert not other.get("skipped") and other["counts"]["reviewed_pairs"] == 9
    cfg.inputs["reviews"] = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a reviews table"):
        go()


# --- captioner export ------------------------------------------------------------------------


def test_export_captioner_curated_formats(world, tmp_path, capsys):
    import datasets
    from PIL import Image

    run = world["run"]
    out = str(tmp_path / "internvl")
    assert _cli("export-captioner", run, "--out", out, "--json") == 0  # curated by default: the run has reviews
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["curated"] == 1 and counts["skipped_rejected"] == 2 and counts["skipped_bad_indicator"] == 1
    assert counts["skipped_stale"] == 1
    recs = [json.loads(x) for x in (tmp_path / "internvl" / "captioner.jsonl").read_text().splitlines()]
    by_pair = {r["id"].split("#")[0]: r for r in recs}
    assert set(by_pair) == {"chain1", "ref", "repaint", world["accept_v1"]}  # the t2i caption has no pair
    c1 = by_pair["chain1"]
    assert c1["conversations"][1] == {"from": "gpt", "value": "make {image} monochrome"}
    assert c1["method"] == "human_edit" and c1["conversations"][0]["value"].startswith("Image-1: <image>\nImage-2: <image>\n")
    assert all(os.path.isfile(os.path.join(out, p)) for r in recs for p in r["image"])
    assert len(by_pair["ref"]["image"]) == 3  # two inputs, then the target

    assert _cli("export-captioner", run, "--out", str(tmp_path / "all"), "--no-curated", "--json") == 0
    machine = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert machine["curated"] == 0 and machine["records"] > counts["records"]

    sg = tmp_path / "sharegpt"
    assert _cli("export-captioner", run, "--out", str(sg), "--format", "sharegpt", "--json") == 0
    capsys.readouterr()
    data = json.loads((sg / "captioner_sharegpt.json").read_text())
    info = json.loads((sg / "dataset_info.json").read_text())["acedata_captioner"]
    assert info["formatting"] == "sharegpt" and info["columns"] == {"messages": "messages", "images": "images"}
    assert (sg / info["file_name"]).is_file() and len(data) == counts["records"]
    for r in data:
        assert r["messages"][0]["content"].count("<image>") == len(r["images"])
        assert all((sg / p).is_file() for p in r["images"])
    assert {r["messages"][1]["content"] for r in data} >= {"make {image} monochrome"}

    hf = tmp_path / "hf"
    assert _cli("export-captioner", run, "--out", str(hf), "--format", "hf", "--json") == 0
    capsys.readouterr()
    assert not (hf / "images").exists()  # bytes inline
    ds = datasets.load_dataset(str(hf), split="train")
    assert len(ds) == counts["records"]
    row = next(r for r in ds if r["pair_id"] == "ref")
    assert len(row["images"]) == 3 and all(isinstance(im, Image.Image) for im in row["images"])
    assert row["instruction"] == "draw the subject of {image1} in the style of {image2}"
    assert row["messages"][0]["content"].count("<image>") == 3

    msg = tmp_path / "messages"
    assert _cli("export-captioner", run, "--out", str(msg), "--format", "messages") == 0
    first = json.loads((msg / "captioner.jsonl").read_text().splitlines()[0])
    assert first["messages"][0]["content"][0]["type"] == "image"


def test_export_captioner_curated_needs_reviews(world, tmp_path, capsys):
    code = _cli("export-captioner", world["run"], "--out", str(tmp_path), "--curated",
                "--reviews", str(tmp_path / "none"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs a reviews table" in err


def test_reviewed_assembly_on_ray_equals_local(world, ray_local, tmp_path):
    """Reviewed rows travel through Ray Data tasks exactly as in process (plans carry the human text)."""
    from acedata.runtime import run_stage
    from acedata.stage import RunContext

    run, out = world["run"], str(tmp_path)
    os.makedirs(os.path.join(out, "review"))
    os.symlink(os.path.join(run, "review", "reviews"), os.path.join(out, "review", "reviews"))
    inputs = {"images": [os.path.join(run, "ingest", "images"), os.path.join(run, "synth", "images")],
              "pairs": [os.path.join(run, "synth", "pairs")], "instructions": [os.path.join(run, "label", "instructions")]}
    cfg = AssembleConfig(name="onray", max_history=2, rows_per_unit=7, seed=0, dataset_card=False)
    summary = run_stage(Assemble(cfg, RunContext(out, os.path.join(out, "onray"), inputs)), "ray")
    assert summary["counts"]["reviewed_pairs"] == 9
    got = shards.read_table(os.path.join(out, "onray", "lcu"), ["sample_id", "instruction", "instruction_method"])
    assert got.to_pylist() == [{k: r[k] for k in ("sample_id", "instruction", "instruction_method")}
                               for r in world["rows"]]
