"""`acedata stats`: answers from columns equal counts computed independently from the rows."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pyarrow as pa
import pytest
from PIL import Image

from acedata import shards
from acedata.cli import main
from acedata.images import encode, image_cell
from acedata.schemas import schema_for

TASKS = {
    "repainting": ["inpainting", "outpainting"],
    "controllable": ["canny", "depth", "pose"],
    "natural_edit": ["general"],
    "text_to_image": ["caption"],
}
SIZES = [(512, 512), (640, 480), (480, 640), (1024, 512), (300, 700)]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    tiny = image_cell(encode(Image.new("RGB", (2, 2), (10, 20, 30))))
    pool = [f"instruction number {i} for {{image}}" for i in range(n // 3)]
    rows = []
    for i in range(n):
        task = rng.choice(sorted(TASKS))
        turns = 1 if task == "text_to_image" else rng.choice([1, 1, 2, 3])
        w, h = rng.choice(SIZES)
        scores = [{"name": name, "value": round(rng.random(), 3)} for name in ("ssim", "clip_dir") if rng.random() < 0.7]
        cu = {"image": tiny, "mask": None}
        rows.append({
            "sample_id": f"s{i}", "task": task, "subtask": rng.choice(TASKS[task]),
            "instruction": rng.choice(pool), "inputs": [] if task == "text_to_image" else [cu], "target": tiny,
            "history": [{"instruction": "h {image}", "inputs": [cu], "target": tiny}] * (turns - 1),
            "num_turns": turns, "width": w, "height": h,
            "instruction_method": rng.choice(["template", "llm_rewrite"]), "pair_id": f"p{i}",
            "source_ids": [], "scores": scores, "provenance": "{}",
        })
    return rows


@pytest.fixture(scope="module")
def lcu(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ds") / "lcu")
    rows = make_rows(3000)
    schema = schema_for("lcu")
    shards.write_table(d, pa.Table.from_pylist(rows, schema), schema, max_rows=700)
    assert len(shards.list_shards(d)) == 5
    return d, rows


def stats_json(capsys, *args: str) -> dict:
    assert main(["stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def expected(rows: list[dict]) -> dict:
    n = len(rows)
    scores: dict[str, list[float]] = {}
    for r in rows:
        for s in r["scores"]:
            scores.setdefault(s["name"], []).append(s["value"])
    return {
        "rows": n,
        "groups": Counter((r["task"], r["subtask"]) for r in rows),
        "turns": Counter(r["num_turns"] for r in rows),
        "distinct": len({r["instruction"] for r in rows}),
        "chars_max": max(len(r["instruction"]) for r in rows),
        "width_mean": sum(r["width"] for r in rows) / n,
        "scores": {k: (len(v), sum(v) / len(v)) for k, v in scores.items()},
        "square": sum(1 for r in rows if 0.95 <= r["width"] / r["height"] < 1.05),
        "portrait_1_2": sum(1 for r in rows if 0.0 <= r["width"] / r["height"] < 0.5),
    }


def check(res: dict, exp: dict) -> None:
    assert res["rows"] == exp["rows"]
    assert {(g["task"], g["subtask"]): g["count"] for g in res["groups"]} == exp["groups"]
    assert sum(g["share"] for g in res["groups"]) == pytest.approx(1.0, abs=1e-4)
    assert {t["num_turns"]: t["count"] for t in res["turns"]} == exp["turns"]
    assert res["instructions"]["distinct"] == exp["distinct"]
    assert res["instructions"]["distinct_ratio"] == pytest.approx(exp["distinct"] / exp["rows"], abs=1e-6)
    assert res["instructions"]["chars"]["max"] == exp["chars_max"]
    assert res["resolution"]["width"]["mean"] == pytest.approx(exp["width_mean"])
    got_scores = {s["name"]: (s["count"], s["mean"]) for s in res["scores"]}
    assert set(got_scores) == set(exp["scores"])
    for k, (c, m) in exp["scores"].items():
        assert got_scores[k][0] == c and got_scores[k][1] == pytest.approx(m, abs=1e-4)
    bins = {b["bin"]: b["count"] for b in res["aspect"]["bins"]}
    assert bins["~1:1"] == exp["square"] and bins["<1:2"] == exp["portrait_1_2"]
    assert sum(bins.values()) == exp["rows"]


def test_stats_json_matches_independent_counts(lcu, capsys):
    d, rows = lcu
    check(stats_json(capsys, d), expected(rows))


def test_where_and_by(lcu, capsys):
    d, rows = lcu
    res = stats_json(capsys, d, "--where", "task=repainting")
    check(res, expected([r for r in rows if r["task"] == "repainting"]))
    res = stats_json(capsys, d, "--where", "task=repainting,controllable", "--where", "num_turns>=2", "--by", "task")
    keep = [r for r in rows if r["task"] in ("repainting", "controllable") and r["num_turns"] >= 2]
    assert {g["task"]: g["count"] for g in res["groups"]} == Counter(r["task"] for r in keep)
    assert res["rows"] == len(keep)


def test_readable_table_and_plots(lcu, capsys, tmp_path):
    d, rows = lcu
    assert main(["stats", d, "--plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows):,} rows" in out and "samples by task, subtask" in out and "repainting" in out
    for name in ("distribution.png", "tasks_pie.png", "turns.png", "aspect.png", "instruction_length.png",
                 "score_ssim.png"):
        with Image.open(os.path.join(tmp_path, name)) as im:
            assert im.format == "PNG" and im.width > 100


def test_user_errors_are_one_line(lcu, capsys, tmp_path):
    d, _ = lcu
    assert main(["stats", d, "--where", "colour=red"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no column 'colour'" in err
    assert main(["stats", str(tmp_path / "nope")]) == 2
    assert main(["stats", d, "--by", "nope"]) == 2
