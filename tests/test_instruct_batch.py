"""Ray Data vLLM batch mode: what runs on CPU (row mapping, config checks, the missing-vLLM
error). Running the engines needs vLLM and a GPU: that test is marked gpu and skipped here."""

from __future__ import annotations

import importlib.util
import json

import pytest

from acedata.errors import UserError
from acedata.instruct.batch import (
    VllmBatchConfig,
    VllmBatchGenerator,
    engine_input,
    from_row,
    sampling_params,
    to_row,
)
from acedata.instruct.captioner import ANALYSIS_SCHEMA, structured_params
from acedata.instruct.client import ChatRequest, EndpointConfig
from acedata.stage import RunContext
from acedata.stages.instruct import Instruct, InstructConfig

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_rows_round_trip_and_sampling_mapping():
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                                         {"type": "text", "text": "diff?"}]}]
    ep = EndpointConfig(base_url="", model="m", structured_output="json_schema")
    req = ChatRequest(msgs, structured_params(ep))
    defaults = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": ["<|im_end|>"], "seed": None}
    row = to_row(3, req, defaults)
    assert isinstance(row["messages_json"], str)  # one Arrow type whatever the content shape
    inp = engine_input(row)
    assert inp["request_index"] == 3 and inp["messages"] == msgs
    sp = inp["sampling_params"]
    assert sp["structured_outputs"] == {"json": ANALYSIS_SCHEMA}
    assert sp["temperature"] == 0.2 and sp["stop"] == ["<|im_end|>"] and "seed" not in sp
    guided = sampling_params(ChatRequest(msgs, structured_params(ep.model_copy(update={"structured_output":
                                                                                      "guided_json"}))), {})
    assert guided["structured_outputs"] == {"json": ANALYSIS_SCHEMA}
    assert sampling_params(ChatRequest(msgs, {"max_tokens": 5}), defaults)["max_tokens"] == 5
    assert from_row({"generated_text": "Make {image} red."}).text == "Make {image} red."
    assert from_row({"generated_text": None, "__inference_error__": "OOM"}).error == "engine_error"
    json.dumps(row)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_one_line_error():
    with pytest.raises(UserError, match="needs vLLM"):
        VllmBatchGenerator(VllmBatchConfig(model_source="/models/internvl2"), {})


def test_stage_config_for_ray_vllm_is_checked(tmp_path):
    cfg = InstructConfig(backend="ray_vllm", llm={"base_url": "", "model": "llm"})
    stage = Instruct(cfg, RunContext(str(tmp_path), str(tmp_path / "instruct"), {"pairs": [str(tmp_path)]}))
    with pytest.raises(UserError, match="needs `vllm_llm:`"):
        stage.plan()
    cfg = InstructConfig(llm={"base_url": "", "model": "llm"})
    with pytest.raises(UserError, match="base_url is empty"):
        Instruct(cfg, RunContext(str(tmp_path), str(tmp_path / "i"), {"pairs": [str(tmp_path)]})).plan()
    ok = InstructConfig(backend="ray_vllm", llm={"base_url": "", "model": "llm"},
                        vllm_llm={"model_source": "/models/qwen", "trust_remote_code": False})
    assert "ray_vllm" in Instruct(ok, RunContext("", "", {})).mode()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM and a GPU")
def test_vllm_batch_generates(tmp_path):  # pragma: no cover - GPU clusters only
    import os

    model = os.environ.get("ACEDATA_TEST_VLLM_MODEL")
    if not model:
        pytest.skip("set ACEDATA_TEST_VLLM_MODEL to a local model folder")
    gen = VllmBatchGenerator(VllmBatchConfig(model_source=model, max_model_len=2048),
                             {"temperature": 0.0, "max_tokens": 16})
    out = gen.complete_many([ChatRequest([{"role": "user", "content": "Rewrite: Make {image} red."}])])
    assert out[0].ok and out[0].text
