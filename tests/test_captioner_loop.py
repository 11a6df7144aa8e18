"""The captioner loop as one pipeline: train_captioner (export -> train -> eval -> merged folder)
then instruct relabelling natural pairs with it in-process (`backend: transformers`), each row
naming the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from captioner_fixtures import INSTRUCTIONS, make_run, write_config

from acedata import shards
from acedata.pipeline import run_pipeline


def test_loop_spec_trains_and_relabels(tmp_path):
    run = make_run(tmp_path, n=4, task="natural_edit")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "tiny", steps=60, every=30)
    spec = yaml.safe_load((Path(__file__).parent.parent / "pipelines" / "captioner-loop.yaml").read_text())
    spec["executor"] = "local"
    spec["stages"][0].update(config=str(cfg), run=str(run))
    spec["stages"][1]["inputs"] = {"pairs": str(run / "src" / "pairs"), "images": str(run / "src" / "images")}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "loop"
    result = run_pipeline(str(tmp_path / "loop.yaml"), str(out))
    [cap] = shards.read_table(str(out / "train_captioner" / "captioners")).to_pylist()
    assert cap["step"] == 60 and cap["layout"] == "merged" and cap["train_records"] == 4
    rows = sorted(shards.read_table(str(out / "relabel" / "instructions")).to_pylist(), key=lambda r: r["pair_id"])
    assert [r["method"] for r in rows] == ["captioner"] * 4
    assert [r["instruction"] for r in rows] == INSTRUCTIONS[:4]
    assert all(json.loads(r["provenance"])["captioner_checkpoint"]["checkpoint"] == cap["checkpoint"] for r in rows)
    assert [s["name"] for s in result["stages"]] == ["train_captioner", "relabel"]


def test_transformers_backend_config_errors_are_one_line(tmp_path):
    import pytest

    from acedata.errors import UserError
    from acedata.stage import RunContext
    from acedata.stages.instruct import Instruct, InstructConfig

    ctx = RunContext(str(tmp_path), str(tmp_path / "i"), {"pairs": [str(tmp_path / "p")]})
    cap = {"endpoint": {"model": "captioner"}}
    with pytest.raises(UserError, match="needs `local_mllm:`"):
        Instruct(InstructConfig(backend="transformers", natural_mode="captioner", captioner=cap), ctx).plan()
    with pytest.raises(UserError, match="backend transformers runs an image-text model"):
        Instruct(InstructConfig(backend="transformers", llm={"model": "x"}, captioner=cap,
                                local_mllm={"model_source": str(tmp_path)}), ctx).plan()
