"""The chat client against a separate-process chat-completions STAND-IN (tests/chat_standin.py)
that injects faults: 5xx, 429 with Retry-After, dropped connections, broken bodies, slow replies."""

from __future__ import annotations

import json
import urllib.request

import pytest
from llm_server import free_port

from acedata.instruct.client import ChatClient, ChatRequest, EndpointConfig


def _ep(srv, model: str, **kw) -> EndpointConfig:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("backoff_max_s", 0.1)
    return EndpointConfig(base_url=srv.base_url, model=model, **kw)


def _ask(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": f"Instruction: {text}\n- {text}"}])


@pytest.mark.parametrize("fault", ["500", "503", "429", "drop", "badbody"])
def test_transient_faults_are_retried_until_success(standin, fault):
    client = ChatClient(_ep(standin, f"fault:{fault}:2", max_retries=3))
    [res] = client.complete_many([_ask(f"Turn {{image}} blue ({fault}).")])
    assert res.ok, res
    assert res.attempts == 3  # two injected failures, then the answer
    assert "{image}" in res.text
    assert client.stats["retries"] == 2


def test_retries_are_bounded_and_end_in_an_error_code(standin):
    client = ChatClient(_ep(standin, "fault:503:10", max_retries=2))
    [res] = client.complete_many([_ask("Make {image} darker.")])
    assert not res.ok and res.error == "http_5xx" and res.attempts == 3 and res.text is None


def test_timeout_then_retry(standin):
    # The first request of this prompt sleeps past the timeout; the retry answers at once.
    client = ChatClient(_ep(standin, "fault:slow:1:3", timeout_s=0.5, max_retries=1))
    [res] = client.complete_many([_ask("Crop {image} square.")])
    assert res.ok and res.attempts == 2
    client = ChatClient(_ep(standin, "fault:slow:5:3", timeout_s=0.3, max_retries=1))
    [res] = client.complete_many([_ask("Rotate {image}.")])
    assert res.error == "timeout" and res.attempts == 2


def test_client_errors_are_not_retried(standin):
    ep = EndpointConfig(base_url=standin.base_url.replace("/v1", "/nope"), model="x", max_retries=3, backoff_s=0.01)
    [res] = ChatClient(ep).complete_many([_ask("Blur {image}.")])
    assert res.error == "http_404" and res.attempts == 1


def test_connection_refused_is_an_error_not_an_exception():
    ep = EndpointConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="x", max_retries=1, backoff_s=0.01)
    [res] = ChatClient(ep).complete_many([_ask("Blur {image}.")])
    assert res.error == "connection" and res.attempts == 2


def test_an_empty_reply_is_a_bad_response_not_retried(standin):
    client = ChatClient(_ep(standin, "fault:nochoices:5", max_retries=3))
    [res] = client.complete_many([_ask("Sharpen {image}.")])
    assert res.error == "bad_response" and res.attempts == 1 and client.stats["retries"] == 0


def test_programming_errors_propagate_and_are_not_retried(standin):
    # A body our code cannot serialise is a bug on our side: it must surface, not become a quarantine reason.
    client = ChatClient(_ep(standin, "paraphrase", max_retries=3))
    bad = ChatRequest([{"role": "user", "content": "hi"}], {"extra_body": {"knob": object()}})
    with pytest.raises(TypeError):
        client.complete_many([bad])
    assert client.stats["requests"] == 1 and client.stats["retries"] == 0


def test_concurrency_is_bounded_and_order_kept(standin):
    model = "fault:slow:1:0.2"
    client = ChatClient(_ep(standin, model, concurrency=3))
    reqs = [_ask(f"Paint {{image}} in colour number {i}.") for i in range(12)]
    out = client.complete_many(reqs)
    stats = json.loads(urllib.request.urlopen(standin.base_url + "/stats").read())
    assert all(r.ok for r in out)
    assert [f"number {i}" in r.text for i, r in enumerate(out)] == [True] * 12
    assert stats[model]["requests"] == 12
    assert 2 <= stats[model]["max_in_flight"] <= 3


def test_request_body_carries_sampling_and_structured_output(standin):
    ep = _ep(standin, "paraphrase", temperature=0.2, max_tokens=16, stop=["<|im_end|>"], seed=7,
             extra_body={"top_k": 5})
    body = ChatClient(ep)._body(ChatRequest([{"role": "user", "content": "hi"}],
                                            {"response_format": {"type": "json_object"}}))
    assert body["temperature"] == 0.2 and body["stop"] == ["<|im_end|>"] and body["seed"] == 7
    assert body["extra_body"] == {"top_k": 5} and body["response_format"] == {"type": "json_object"}
