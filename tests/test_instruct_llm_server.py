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
