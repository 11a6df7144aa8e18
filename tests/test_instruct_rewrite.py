"""Rewrites and MLLM paths against the chat-completions STAND-IN (tests/chat_standin.py, a
separate process, not a model): scripted paraphrases that include duplicates, dropped and
invented indicators, refusals and empty replies; image-aware JSON analyses; broken JSON."""

from __future__ import annotations

import base64
import io
import itertools
import json

import pytest
from PIL import Image

from acedata.instruct.captioner import (
    MLLMConfig,
    WriterConfig,
    analyse_pairs,
    caption_images,
    caption_pairs,
    data_url,
    parse_analysis,
    write_instructions,
)
from acedata.instruct.client import ChatClient, EndpointConfig
from acedata.instruct.embedder import get_embedder
from acedata.instruct.rewrite import RewriteConfig, cheap_check, clean_reply, normalise, rewrite_all
from acedata.instruct.templates import indicators_in


@pytest.fixture(scope="module")
def embedder():
    return get_embedder()


def _client(srv, model: str, **kw) -> ChatClient:
    return ChatClient(EndpointConfig(base_url=srv.base_url, model=model, backoff_s=0.01, **kw))


def _png(color, size=(600, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_rewrites_are_distinct_keep_indicators_and_rejections_have_reasons(standin, embedder):
    templates = ["Turn {image} into a watercolor painting.", "Remove the red car from {image}.",
                 "Place the subject from {image2} into the scene {image1}."]
    cfg = RewriteConfig(k=3, max_attempts=10, sim_max=0.9, sim_min=0.3)
    states = rewrite_all(templates, _client(standin, "paraphrase"), embedder, cfg)
    reasons = {r.split("(")[0] for st in states for _, r in st.rejected}
    # the stand-in's script: duplicate, drops an indicator, refuses, invents one, answers empty
    assert {"duplicate", "indicator_dropped", "refused", "indicator_invented", "empty"} <= reasons
    for st in states:
        assert 1 <= len(st.accepted) <= 3
        versions = [st.template, *st.accepted]
        assert len({normalise(v) for v in versions}) == len(versions)
        vecs = embedder.encode(versions)
        for i, j in itertools.combinations(range(len(versions)), 2):
            assert float(vecs[i] @ vecs[j]) <= cfg.sim_max + 1e-6
        for a in st.accepted:
            assert set(indicators_in(a)) == set(indicators_in(st.template))
        assert st.attempts <= cfg.max_attempts


def test_similarity_bound_rejects_near_copies(standin, embedder):
    # sim_max low enough that the stand-in's light rewordings count as copies.
    cfg = RewriteConfig(k=2, max_attempts=4, sim_max=0.5, sim_min=0.0)
    [st] = rewrite_all(["Sharpen the details of {image}."], _client(standin, "paraphrase"), embedder, cfg)
    assert st.accepted == []
    assert any(r.startswith("too_similar") for _, r in st.rejected)


def test_endpoint_down_keeps_templates(embedder):
    from llm_server import free_port

    ep = EndpointConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="x", max_retries=0)
    states = rewrite_all(["Blur {image}.", "Sharpen {image}."], ChatClient(ep), embedder, RewriteConfig(k=3))
    assert all(st.accepted == [] and st.rejected == [("", "request_connection")] for st in states)


def test_cheap_checks_and_reply_cleaning():
    cfg = RewriteConfig()
    assert clean_reply('Rewritten instruction: "Make {image} blue."\nextra') == "Make {image} blue."
    assert cheap_check("", "x {image}", cfg) == "empty"
    assert cheap_check("�ysoftoC�ysof�� ��", "x {image}", cfg) == "malformed"
    assert cheap_check("As an AI I cannot edit {image}", "x {image}", cfg) == "refused"
    assert cheap_check("Make it blue please", "Make {image} blue", cfg) == "indicator_dropped"
    assert cheap_check("Blend {image1} with {image3}", "Blend {image1} with {image2}", cfg) == "indicator_dropped"
    assert cheap_check("Make {image} blue like {image2}", "Make {image} blue", cfg) == "indicator_invented"
    assert cheap_check("Make {image} a deep blue.", "Make {image} blue", cfg) is None


def test_data_url_is_resized_to_the_bound():
    url = data_url(_png((10, 20, 30), (1000, 250)), 448)
    assert url.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert im.size == (448, 112)


def test_analysis_with_structured_output_and_prompt_only(standin):
    pairs = [(_png((40, 40, 40)), _png((200, 200, 200))), (_png((200, 10, 10)), _png((10, 10, 200)))]
    for mode in ("json_schema", "guided_json", "none"):
        cfg = MLLMConfig(endpoint=EndpointConfig(base_url=standin.base_url, model="vlm", structured_output=mode),
                         image_max_side=64)
        outs = analyse_pairs(pairs, _client(standin, "vlm", structured_output=mode), cfg)
        assert all(o.text is not None for o in outs), outs
        a0, a1 = (json.loads(o.text) for o in outs)
        assert any("brighter" in d for d in a0["differences"])
        assert any("red to blue" in d for d in a1["differences"])
        if mode != "none":
            assert outs[0].rejected == []  # strict JSON came back first time


def test_server_without_structured_output_is_asked_by_prompt(standin):
    cfg = MLLMConfig(endpoint=EndpointConfig(base_url=standin.base_url, model="vlm-plain"), json_retries=0)
    [o] = analyse_pairs([(_png((40, 40, 40)), _png((200, 200, 200)))], _client(standin, "vlm-plain"), cfg)
    assert o.text is not None and "brighter" in o.text
    assert o.rejected == [("", "structured_output_unsupported(http_400)")]


def test_broken_json_is_retried_then_reported(standin):
    cfg = MLLMConfig(endpoint=EndpointConfig(base_url=standin.base_url, model="vlm-broken"), json_retries=2)
    [o] = analyse_pairs([(_png("red"), _png("blue"))], _client(standin, "vlm-broken"), cfg)
    assert o.text is None and o.reason == "bad_json" and len(o.rejected) == 3
    assert parse_analysis('{"differences": []}')[1].startswith("schema_mismatch")
    assert parse_analysis("```json\n{\"differences\": [\"a\"], \"commonalities\": []}\n```")[0] is not None


def test_writer_captioner_and_captions(standin):
    analysis = json.dumps({"differences": ["the second image is brighter"], "commonalities": ["same room"]})
    writer = WriterConfig(endpoint=EndpointConfig(base_url=standin.base_url, model="writer"))
    [w] = write_instructions([analysis], _client(standin, "writer"), writer)
    assert w.text == "Edit {image} so that brighter."
    # a writer that forgets the indicator is rejected, not passed on
    [bad] = write_instructions([analysis], _client(standin, "vlm"), writer)
    assert bad.text is None and bad.reason in ("indicator_dropped", "refused")
    mcfg = MLLMConfig(endpoint=EndpointConfig(base_url=standin.base_url, model="captioner"), image_max_side=32)
    [c] = caption_pairs([(_png((30, 30, 30)), _png((220, 220, 220)))], _client(standin, "captioner"), mcfg)
    assert c.text == "Make {image} brighter."
    caps = caption_images([_png((10, 200, 10), (100, 50))], _client(standin, "vlm"), mcfg)
    assert caps[0].text.startswith("A photograph in mostly green tones, 32x16")
