"""Batch mode for GPU clusters: the same chat requests through Ray Data's vLLM processor
(`ray.data.llm`), so no model server has to be run separately.

`VllmBatchGenerator.complete_many` has the same contract as `ChatClient.complete_many`
(requests in, `ChatResult`s out in order), so the rewrite and captioner code runs
unchanged on either. It needs vLLM and a GPU on the cluster; without vLLM it fails with
one line saying so. The row mapping (`to_row` / `from_row`) is plain Python and is what
the CPU tests check.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from pydantic import Field

from acedata.config import Strict
from acedata.errors import UserError
from acedata.instruct.client import ChatRequest, ChatResult


class VllmBatchConfig(Strict):
    model_source: str  # local model folder (or an id already in the cluster's HF cache)
    trust_remote_code: bool = False  # InternVL2 needs it; only when the spec says so
    concurrency: int = Field(1, ge=1)  # vLLM engine replicas
    batch_size: int = Field(32, ge=1)
    max_model_len: int = 8192
    tensor_parallel_size: int = 1
    has_image: bool = False  # turn on the multimodal preparation stage (InternVL2)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    accelerator_type: str | None = None


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def sampling_params(req: ChatRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """vLLM SamplingParams fields for one request (OpenAI names mapped to vLLM's)."""
    sp = {k: v for k, v in defaults.items() if v is not None}
    p = dict(req.params)
    extra = p.pop("extra_body", {}) or {}
    fmt = p.pop("response_format", None)
    schema = None
    if fmt and fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]["schema"]
    schema = extra.pop("guided_json", schema)
    if schema is not None:
        sp["structured_outputs"] = {"json": schema}  # vLLM StructuredOutputsParams, as Ray 2.60 maps it
    for k in ("temperature", "top_p", "max_tokens", "stop", "seed"):
        if k in p:
            sp[k] = p.pop(k)
    sp.update(extra)
    return sp


def to_row(i: int, req: ChatRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """A dataset row; messages travel as JSON (mixed str / content-part lists do not fit one Arrow type)."""
    return {"request_index": i, "messages_json": json.dumps(req.messages),
            "sampling_json": json.dumps(sampling_params(req, defaults))}


def engine_input(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's preprocess: what the vLLM stages read."""
    return {"request_index": row["request_index"], "messages": json.loads(row["messages_json"]),
            "sampling_params": json.loads(row["sampling_json"])}


def from_row(row: dict[str, Any]) -> ChatResult:
    text = row.get("generated_text")
    if row.get("__inference_error__"):
        return ChatResult(None, "engine_error", str(row["__inference_error__"])[:200], 1)
    return ChatResult(text if isinstance(text, str) else "", None, "", 1)


class VllmBatchGenerator:
    """Runs a list of chat requests as one Ray Data job through vLLM engines on the cluster."""

    def __init__(self, cfg: VllmBatchConfig, sampling: dict[str, Any]) -> None:
        if not vllm_available():
            raise UserError("backend 'ray_vllm' needs vLLM on the cluster (pip install 'acedata[gpu]') and GPUs; "
                            "use backend 'http' with a served model otherwise")
        self.cfg = cfg
        self.sampling = sampling
        self._processor = None

    def _build(self):
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        c = self.cfg
        engine = {"max_model_len": c.max_model_len, "tensor_parallel_size": c.tensor_parallel_size,
                  "trust_remote_code": c.trust_remote_code, **c.engine_kwargs}
        kw: dict[str, Any] = {}
        if c.has_image:
            kw["prepare_multimodal_stage"] = {"enabled": True,
                                              "model_config_kwargs": {"trust_remote_code": c.trust_remote_code}}
        if c.accelerator_type:
            kw["accelerator_type"] = c.accelerator_type
        config = vLLMEngineProcessorConfig(model_source=c.model_source, engine_kwargs=engine,
                                           concurrency=c.concurrency, batch_size=c.batch_size,
                                           should_continue_on_error=True, **kw)
        return build_processor(
            config,
            preprocess=engine_input,
            postprocess=lambda row: {"request_index": row["request_index"],
                                     "generated_text": row.get("generated_text"),
                                     "__inference_error__": row.get("__inference_error__")},
        )

    def complete_many(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        import ray.data

        if self._processor is None:
            self._processor = self._build()
        ds = ray.data.from_items([to_row(i, r, self.sampling) for i, r in enumerate(requests)])
        rows = self._processor(ds).take_all()
        by_index = {int(r["request_index"]): from_row(r) for r in rows}
        return [by_index.get(i, ChatResult(None, "engine_error", "row missing from batch output")) for i in
                range(len(requests))]
