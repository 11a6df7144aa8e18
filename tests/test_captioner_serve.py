"""Trained captioner -> servable folder -> labels pairs. The merged export loads with plain
transformers auto classes, and `transformers serve` (a real server process on loopback, stopped
by PID) serves it to the instruct stage in `natural_mode: captioner`, whose rows name the
checkpoint that labelled them."""

from __future__ import annotations

import json

import pytest
import torch
from captioner_fixtures import INSTRUCTIONS, export, make_run, write_config
from llm_server import start_transformers_serve

from acedata.captioner.config import load_config
from acedata.captioner.data import read_examples
from acedata.captioner.evaluate import generate, load_checkpoint
from acedata.captioner.serve import export_model
from acedata.captioner.train import CaptionerTrainer, train_local
from acedata.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("capserve")
    run = make_run(root, n=4, task="natural_edit")
    data = export(run, root / "export")
    cfg = load_config(str(write_config(root / "c.yaml", root / "tiny", steps=60, every=60)))
    train_local(cfg, str(data), str(root / "out"), progress=False)
    ckpt = root / "out" / "checkpoints" / "step-00000060"
    info = export_model(str(ckpt), str(root / "merged"))
    return {"root": root, "run": run, "data": data, "ckpt": ckpt, "merged": root / "merged", "info": info}


def test_merged_export_loads_in_transformers_and_reproduces(trained):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = trained["merged"]
    model = AutoModelForImageTextToText.from_pretrained(d, local_files_only=True).eval()
    proc = AutoProcessor.from_pretrained(d, local_files_only=True)
    examples = read_examples(str(trained["data"]))
    assert generate(model, proc, examples, 32) == [e.answer for e in examples]
    info = json.loads((d / "acedata_captioner.json").read_text())
    assert info["step"] == 60 and info["layout"] == "merged" and info["checkpoint"] == str(trained["ckpt"])


def test_served_captioner_labels_natural_pairs_with_provenance(trained, tmp_path):
    from acedata import runtime, shards
    from acedata.stage import RunContext
    from acedata.stages.instruct import Instruct, InstructConfig

    run, merged = trained["run"], str(trained["merged"])
    with start_transformers_serve(merged, str(tmp_path / "serve.log")) as srv:
        cfg = InstructConfig(
            natural_mode="captioner", t2i={"enabled": False},
            captioner={"endpoint": {"base_url": srv.base_url, "model": merged, "temperature": 0.0,
                                    "max_tokens": 24, "concurrency": 2},
                       "image_labels": True, "image_format": "PNG", "image_max_side": 64})
        stage = Instruct(cfg, RunContext(str(tmp_path), str(tmp_path / "instruct"),
                                         {"pairs": [str(run / "src" / "pairs")], "images": [str(run / "src" / "images")]}))
        summary = runtime.run_stage(stage, "local")
    rows = sorted(shards.read_table(str(tmp_path / "instruct" / "instructions")).to_pylist(), key=lambda r: r["pair_id"])
    assert [r["method"] for r in rows] == ["captioner"] * 4, [(r["method"], r["rejected"]) for r in rows]
    assert [r["instruction"] for r in rows] == INSTRUCTIONS[:4]
    prov = [json.loads(r["provenance"])["captioner_checkpoint"] for r in rows]
    assert all(p["checkpoint"] == str(trained["ckpt"]) and p["step"] == 60 for p in prov)
    assert summary["counts"]["natural_captioner"] == 4


def test_lora_merge_matches_the_adapter_and_adapter_export(trained, tmp_path):
    root = trained["root"]
    cfg = load_config(str(write_config(tmp_path / "c.yaml", root / "tiny", steps=3, every=3, finetune="lora")))
    t = CaptionerTrainer(cfg, str(trained["data"]), str(tmp_path / "out"))
    t.fit(progress=False)
    ckpt = str(tmp_path / "out" / "checkpoints" / "step-00000003")
    model, _, _ = load_checkpoint(ckpt)
    batch = t.collate(t.train_set[:2])
    with torch.no_grad():
        want = model(**batch).logits
        merged = model.merge_and_unload()(**batch).logits
    assert torch.allclose(want, merged, atol=1e-5)
    info = export_model(ckpt, str(tmp_path / "adapter"), keep_adapter=True)
    assert info["layout"] == "adapter" and (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    with pytest.raises(UserError, match="no adapter"):
        export_model(str(trained["ckpt"]), str(tmp_path / "x"), keep_adapter=True)
