"""Label Studio: tasks go out with the run's images and candidates, annotations come back in as
reviews, and assembly applies them (issue 13, item 7)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re

import pytest
from assemble_world import assemble
from review_world import cli as _cli
from review_world import reviewed_world
from review_world import single as _single

from acedata import shards
from acedata.review.table import read_reviews


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_corpus):
    return reviewed_world(str(tmp_path_factory.mktemp("run")), demo_corpus)


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
