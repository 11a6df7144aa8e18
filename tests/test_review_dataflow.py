"""Human reviews in the data flow: assemble applies them, the captioner export curates by them,
Label Studio tasks go out and annotations come back in (issue 13, items 6 and 7)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections import Counter

import pytest
from test_assemble import assemble, build_world

from acedata import shards
from acedata.cli import main
from acedata.config import config_hash
from acedata.errors import UserError
from acedata.lcu import INDICATOR
from acedata.pipeline import run_stages
from acedata.review.table import append_reviews, read_reviews, review_id
from acedata.stages.assemble import Assemble, AssembleConfig

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


def review(pid: str, decision: str, who: str = "ann1", minutes: int = 0, **kw) -> dict:
    at = T0 + dt.timedelta(minutes=minutes)
    return {"review_id": review_id(pid, who, at, "review_app"), "pair_id": pid, "annotator": who,
            "decision": decision, "decided_at": at, "origin": "review_app", **kw}


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_corpus):
    run = str(tmp_path_factory.mktemp("run"))
    w = build_world(run, demo_corpus)
    w["run"] = run
    mined = sorted(p["pair_id"] for p in w["pairs"] if p["pair_id"].startswith("mined-"))
    t2i = next(i["pair_id"] for i in w["instr"] if i["pair_id"].startswith("t2i:") and "test subject" in i["instruction"])
    w["bad_edit"], w["accept_v1"] = mined[0], mined[1]
    w["t2i"] = t2i
    w["stale"] = min(p["pair_id"] for p in w["pairs"] if p["pair_id"].startswith("simple-"))
    w["reviews"] = [
        review("chain1", "accept", "ann2", 0, chosen_variant=0, instruction="turn {image} into black and white"),
        review("chain1", "edit", "ann1", 5, instruction="make {image} monochrome", chosen_method="human"),
        review("chain2", "reject", "ann1", 1, reject_reason="not_an_edit"),
        review("ref", "accept", "ann1", 2, chosen_variant=0,
               instruction="draw the subject of {image1} in the style of {image2}"),
        review("repaint", "edit", "ann1", 3, instruction="repaint the masked area of {image} in red"),
        review(mined[0], "edit", "ann1", 4, instruction="swap {image} and {image2}"),  # one input only
        review(mined[1], "accept", "ann1", 4, chosen_variant=1),  # no text stored: take variant 1's
        review(mined[2], "skip", "ann1", 4),
        review("ghost", "reject", "ann1", 4, reject_reason="other"),
        review(t2i, "edit", "ann1", 6, instruction="a corrected caption of a test subject"),
        review(w["stale"], "accept", "ann1", 6, chosen_variant=7),  # a variant the instructions no longer have
    ]
    assert append_reviews(run, w["reviews"]) == len(w["reviews"])
    w["summary"] = assemble(run, max_history=2, rows_per_unit=7, seed=0)
    w["rows"] = shards.read_table(os.path.join(run, "assemble", "lcu")).to_pylist()
    w["q"] = shards.read_table(os.path.join(run, "assemble", "quarantine")).to_pylist()
    return w


def _single(rows, pid):
    return [r for r in rows if r["pair_id"] == pid and r["num_turns"] == 1]


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


def _cli(*args: str) -> int:
    return main(list(args))


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


# --- Label Studio ----------------------------------------------------------------------------


def _ls_export(tasks: list[dict], annotate: dict[str, list[dict]]) -> list[dict]:
    """What Label Studio's JSON export holds after annotating imported tasks (ids, timestamps, results)."""
    out = []
    for n, t in enumerate(tasks, 1):
        anns = []
        for k, a in enumerate(annotate.get(t["data"]["pair_id"], []), 1):
            result = []
            for name, typ, val in a["result"]:
                value = {"choices": [val]} if typ == "choices" else {"text": [val]}
                result.append({"id": f"r{n}{k}{name}", "from_name": name, "to_name": "target", "type": typ,
                               "origin": "manual", "value": value})
            anns.append({"id": 100 * n + k, "completed_by": a.get("by", 7), "result": result,
                         "was_cancelled": a.get("cancelled", False), "ground_truth": False,
                         "created_at": "2026-02-01T10:00:00.000000Z", "updated_at": a.get("at", "2026-02-01T10:05:00Z"),
                         "lead_time": 12.5, "task": n, "project": 3})
        out.append({"id": n, "data": t["data"], "annotations": anns, "predictions": [], "meta": {},
                    "created_at": "2026-02-01T09:00:00Z", "updated_at": "2026-02-01T10:05:00Z", "project": 3})
    return out


def test_label_studio_round_trip(world, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    src, run = world["run"], str(tmp_path / "run")
    os.makedirs(run)
    for name in ("ingest", "synth", "label"):
        os.symlink(os.path.join(src, name), os.path.join(run, name))
    tasks_file = str(tmp_path / "ls" / "tasks.json")
    os.makedirs(os.path.dirname(tasks_file))
    assert _cli("review-tasks", "export", run, "--out", tasks_file, "--json") == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert res["tasks"] == len(tasks) > 10
    cfg = ET.parse(res["label_config"]).getroot()
    names = {e.get("name"): e.tag for e in cfg.iter() if e.get("name")}
    assert names["candidate"] == "Choices" and names["corrected"] == "TextArea" and names["reject"] == "Choices"
    assert {"input_1", "input_2", "mask", "target"} <= set(names)
    assert next(e for e in cfg.iter("Choices") if e.get("name") == "candidate").get("value") == "$candidates"
    with open(res["label_config"], encoding="utf-8") as f:
        fields = set(re.findall(r"\$(\w+)", f.read()))  # every $field the interface reads is in every task
    assert {"candidates", "target", "title", "analysis"} <= fields and all(fields <= set(t["data"]) for t in tasks)
    by_pid = {t["data"]["pair_id"]: t["data"] for t in tasks}
    ref = by_pid["ref"]
    assert ref["task"] == "reference_generation" and ref["n_inputs"] == 2
    for slot in ("input_1", "input_2", "target"):
        assert ref[slot].startswith("/data/local-files/?d=images/")
        assert os.path.isfile(os.path.join(tmp_path, "ls", ref[slot].split("?d=")[1]))
    assert ref["candidates"][0]["value"] == "1. draw the subject of {image1} in the style of {image2}"

    c1 = by_pid["chain1"]["candidates"]
    annotate = {
        "chain1": [{"result": [("candidate", "choices", c1[1]["value"])], "by": {"id": 4, "email": "kim@lab.org"}}],
        "chain3": [{"result": [("corrected", "textarea", "erase the marked part of {image}"),
                               ("comment", "textarea", "typo fixed")]}],
        "ref": [{"result": [("reject", "choices", "bad_images")]}],
        "repaint": [{"result": [("candidate", "choices", "no such candidate")]}],
        "chain2": [{"result": [("candidate", "choices", by_pid["chain2"]["candidates"][0]["value"])],
                    "cancelled": True}],
        "simple-" + "x": [],
    }
    mined = sorted(p for p in by_pid if p.startswith("mined-"))
    annotate[mined[0]] = [{"result": []}]
    annotate[mined[1]] = [{"result": [("corrected", "textarea", "blend {image} with {image3}")]}]
    exported = _ls_export(tasks, annotate)
    exported.append({"id": 999, "data": {"pair_id": "not-in-run"}, "annotations": [
        {"id": 1, "completed_by": 1, "result": [], "created_at": "2026-02-01T10:00:00Z"}]})
    ls_file = tmp_path / "export.json"
    ls_file.write_text(json.dumps(exported))
    assert _cli("review-tasks", "import", run, "--from", str(ls_file), "--json") == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["imported"] == 4 and counts["unknown_pair"] == 1 and counts["unknown_choice"] == 1
    assert counts["skipped_cancelled"] == 1 and counts["skipped_empty"] == 1
    assert counts["edits_with_bad_indicator"] == 1
    table = {r["pair_id"]: r for r in read_reviews(run).to_pylist()}
    assert table["chain1"]["decision"] == "accept" and table["chain1"]["chosen_variant"] == 1
    assert table["chain1"]["annotator"] == "kim@lab.org" and table["chain1"]["origin"] == "label_studio"
    assert table["chain3"]["decision"] == "edit" and table["chain3"]["comment"] == "typo fixed"
    assert table["ref"]["decision"] == "reject" and table["ref"]["reject_reason"] == "bad_images"
    assert table["chain3"]["decided_at"] == dt.datetime(2026, 2, 1, 10, 5, tzinfo=dt.UTC)
    assert shards.validate(os.path.join(run, "review", "reviews")) == []
    # importing the same export again adds nothing
    assert _cli("review-tasks", "import", run, "--from", str(ls_file), "--json") == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["imported"] == 0 and again["already_imported"] == 4

    # a second round: only pairs nobody reviewed yet; self-contained tasks with data URIs
    more = str(tmp_path / "ls2" / "tasks.json")
    os.makedirs(os.path.dirname(more))
    assert _cli("review-tasks", "export", run, "--out", more, "--unreviewed", "--images", "data-uri",
                "--task", "natural_edit", "--json") == 0
    capsys.readouterr()
    second = {t["data"]["pair_id"]: t["data"] for t in json.loads((tmp_path / "ls2" / "tasks.json").read_text())}
    assert set(second) == set(mined) - {mined[1]}
    assert all(d["target"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for d in second.values())
    assert not os.path.exists(os.path.join(tmp_path, "ls2", "images"))

    assemble(src, "asm", run, max_history=2, rows_per_unit=50, seed=0, dataset_card=False)
    rows = shards.read_table(os.path.join(run, "asm", "lcu")).to_pylist()
    q = shards.read_table(os.path.join(run, "asm", "quarantine")).to_pylist()
    (r1,) = _single(rows, "chain1")
    assert r1["instruction"] == "make {image} grayscale" and r1["instruction_method"] == "human_accept"
    (r3,) = _single(rows, "chain3")
    assert r3["instruction"] == "erase the marked part of {image}" and r3["instruction_method"] == "human_edit"
    assert ("review_rejected", "ref", "bad_images") in {(x["reason"], x["item_id"], x["detail"]) for x in q}
    assert ("bad_indicator", mined[1]) in {(x["reason"], x["item_id"]) for x in q}
    assert len(_single(rows, "chain2")) == 1  # the cancelled annotation decided nothing


@pytest.mark.parametrize("body,needle", [
    ("{not json", "not JSON"),
    ('{"tasks": []}', "a list of tasks"),
    ('[{"pair_id": "x"}]', "no 'data' object"),
    ('[{"data": {"pair_id": "ref"}, "annotations": [{"result": [1], "completed_by": 1}]}]', "result item"),
    (('[{"data": {"pair_id": "ref"}, "annotations": [{"updated_at": "yesterday", "completed_by": 1, "result": '
      '[{"type": "choices", "from_name": "reject", "value": {"choices": ["other"]}}]}]}]'), "not ISO 8601"),
])
def test_label_studio_import_rejects_malformed_files(world, tmp_path, capsys, body, needle):
    run = str(tmp_path / "run")
    os.makedirs(run)
    os.symlink(os.path.join(world["run"], "synth"), os.path.join(run, "synth"))
    bad = tmp_path / "bad.json"
    bad.write_text(body)
    code = _cli("review-tasks", "import", run, "--from", str(bad))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not os.path.exists(os.path.join(run, "review"))


def test_label_studio_task_shows_the_mllm_analysis():
    from acedata.review.labelstudio import analysis_text, build_task

    prov = json.dumps({"natural": "mllm_llm", "analysis": {"differences": ["the cup is red"],
                                                           "commonalities": ["same table", "same light"]}})
    cands = [{"variant": 0, "method": "template", "instruction": "edit {image}", "provenance": None},
             {"variant": 1, "method": "mllm_llm", "instruction": "make the cup in {image} red", "provenance": prov}]
    assert analysis_text(cands) == ("MLLM analysis. Differences: the cup is red. "
                                    "Commonalities: same table; same light.")
    pair = {"pair_id": "p", "task": "natural_edit", "subtask": "general", "source_id": "a", "target_id": "b",
            "mask_id": None, "extra_input_ids": []}
    data = build_task(pair, cands, {"a": "u/a.png", "b": "u/b.png"}, 2, "BLANK")["data"]
    assert (data["input_1"], data["input_2"], data["mask"], data["target"]) == ("u/a.png", "BLANK", "BLANK", "u/b.png")
    assert [c["value"] for c in data["candidates"]] == ["1. edit {image}", "2. make the cup in {image} red"]
    assert data["candidate_info"][1]["variant"] == 1 and data["indicator_hint"] == "name the input image {image}"


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
