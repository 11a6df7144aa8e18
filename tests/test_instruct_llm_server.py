"""Against a REAL OpenAI-compatible server process: `transformers serve` on loopback, offline,
over a tiny chat model built here (random-init Llama, BPE tokenizer trained locally, chat
template). Its replies are gibberish, which is what the rejection and fallback paths need."""

from __future__ import annotations

import io
import json
import urllib.request

import pytest
from llm_server import build_tiny_chat_model, start_transformers_serve
from PIL import Image

from acedata.instruct.captioner import MLLMConfig, analyse_pairs
from acedata.instruct.client import ChatClient, ChatRequest, EndpointConfig
from acedata.instruct.embedder import get_embedder
from acedata.instruct.rewrite import RewriteConfig, rewrite_all

KNOWN_REASONS = {"empty", "refused", "malformed", "too_short", "too_long", "indicator_dropped",
                 "indicator_invented", "duplicate", "off_topic", "too_similar"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinyllm")
    model_dir = build_tiny_chat_model(d / "model")
    srv = start_transformers_serve(model_dir, str(d / "serve.log"))
    yield srv, str(model_dir)
    srv.stop()


def _ep(served, **kw) -> EndpointConfig:
    srv, model = served
    kw.setdefault("max_tokens", 24)
    return EndpointConfig(base_url=srv.base_url, model=model, backoff_s=0.05, **kw)


def test_server_speaks_openai_and_client_gets_replies(served):
    srv, _ = served
    listed = json.loads(urllib.request.urlopen(srv.base_url + "/models", timeout=10).read())
    assert listed["object"] == "list"
    client = ChatClient(_ep(served, concurrency=3, max_tokens=8))
    out = client.complete_many([ChatRequest([{"role": "user", "content": f"Say {i}"}]) for i in range(5)])
    assert all(r.ok and isinstance(r.text, str) for r in out), out
    assert client.stats["failed"] == 0


def test_gibberish_rewrites_are_rejected_and_templates_kept(served):
    templates = ["Turn {image} into a watercolor painting.", "Fuse the layer {image2} onto the background {image1}."]
    states = rewrite_all(templates, ChatClient(_ep(served, concurrency=2)), get_embedder(),
                         RewriteConfig(k=2, max_attempts=3))
    for t, st in zip(templates, states):
        assert st.template == t and st.accepted == []
        assert st.attempts == 3 and len(st.rejected) == 3
        assert {r.split("(")[0] for _, r in st.rejected} <= KNOWN_REASONS


def test_malformed_analysis_from_a_text_model_ends_in_a_reason(served):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "PNG")
    cfg = MLLMConfig(endpoint=_ep(served, structured_output="none", max_retries=1), json_retries=1,
                     image_max_side=32)
    [o] = analyse_pairs([(buf.getvalue(), buf.getvalue())], ChatClient(cfg.endpoint), cfg)
    assert o.text is None and o.reason
    assert o.rejected and all(r for _, r in o.rejected)


def test_stage_with_the_real_server_keeps_every_pair(served, tmp_path):
    import pyarrow as pa

    from acedata import runtime, shards
    from acedata.images import encode, image_cell, pixel_id
    from acedata.schemas import IMAGES, PAIRS
    from acedata.stage import RunContext
    from acedata.stages.instruct import Instruct, InstructConfig

    ims = [Image.new("RGB", (48, 48), c) for c in ("red", "blue", "green")]
    ids = [pixel_id(im) for im in ims]
    rows = [{"image_id": i, "source_uri": f"mem://{k}", "width": 48, "height": 48, "format": "PNG",
             "image": image_cell(encode(im)), "kind": "image"} for k, (i, im) in enumerate(zip(ids, ims))]
    shards.write_table(str(tmp_path / "images"), pa.Table.from_pylist(rows, IMAGES), IMAGES, table="images")
    pairs = [{"pair_id": f"p{k}", "source_id": ids[0], "target_id": ids[1], "task": t, "subtask": s}
             for k, (t, s) in enumerate([("low_level", "canny"), ("semantic_editing", "cartoon"),
                                         ("natural_edit", "siglip"), ("unknown", "x")])]
    shards.write_table(str(tmp_path / "pairs"), pa.Table.from_pylist(pairs, PAIRS), PAIRS, table="pairs")
    srv, model = served
    cfg = InstructConfig(llm={"base_url": srv.base_url, "model": model, "max_tokens": 16},
                         rewrite={"k": 1, "max_attempts": 2}, t2i={"enabled": False})
    stage = Instruct(cfg, RunContext(str(tmp_path), str(tmp_path / "instruct"),
                                     {"pairs": [str(tmp_path / "pairs")], "images": [str(tmp_path / "images")]}))
    summary = runtime.run_stage(stage, "local")
    out = shards.read_table(str(tmp_path / "instruct" / "instructions")).to_pylist()
    bad = shards.read_table(str(tmp_path / "instruct" / "quarantine")).to_pylist()
    assert sorted(r["pair_id"] for r in out) == ["p0", "p1", "p2"] and [b["item_id"] for b in bad] == ["p3"]
    assert all(r["method"] == "template" and len(r["rejected"]) == 2 for r in out)
    assert summary["counts"]["rewrites_rejected"] == 6 and summary["counts"].get("rewrites_accepted", 0) == 0
