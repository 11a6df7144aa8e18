"""In-process generation with transformers: the instruct stage's `backend: transformers`, for
an image-text-to-text model folder (a trained captioner export) on CPU or one GPU, with no
server. Same contract as `ChatClient.complete_many`: OpenAI-style chat requests in, one
`ChatResult` per request out, in order, never an exception.

OpenAI content parts map to the processor's as `transformers serve` maps them (`image_url`
-> `{"type": "image", "url": ...}`), so a folder answers the same here and served.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from acedata.config import Strict
from acedata.instruct.client import ChatRequest, ChatResult


class LocalModelConfig(Strict):
    model_source: str  # local model folder (e.g. `acedata export-captioner-model ... --out DIR`)
    device: str = "auto"
    max_batch: int = Field(1, ge=1)  # requests per generate call (1: no padding effects)


def processor_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for p in content:
            if p["type"] == "image_url":
                url = p["image_url"]["url"] if isinstance(p["image_url"], dict) else p["image_url"]
                parts.append({"type": "image", "url": url})
            elif p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
        out.append({"role": m["role"], "content": parts})
    return out


class LocalGenerator:
    def __init__(self, cfg: LocalModelConfig, sampling: dict[str, Any]) -> None:
        import os

        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from acedata.errors import ModelNotFound

        if not os.path.isfile(os.path.join(cfg.model_source, "config.json")):
            raise ModelNotFound(cfg.model_source, cfg.model_source, "backend transformers needs a local model folder")
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model_source, local_files_only=True).to(dev).eval()
        self.processor = AutoProcessor.from_pretrained(cfg.model_source, local_files_only=True)
        self.sampling = sampling
        self.device = dev

    def _one(self, req: ChatRequest) -> ChatResult:
        import torch

        tok = self.processor.tokenizer
        s = {**self.sampling, **{k: v for k, v in req.params.items() if k in ("temperature", "top_p", "max_tokens",
                                                                              "seed")}}
        temp = s.get("temperature") or 0.0
        enc = self.processor.apply_chat_template(processor_messages(req.messages), add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt").to(self.device)
        if s.get("seed") is not None:
            torch.manual_seed(int(s["seed"]))
        kw = {"do_sample": True, "temperature": temp, "top_p": s.get("top_p") or 1.0} if temp > 0 else \
            {"do_sample": False}
        with torch.no_grad():
            ids = self.model.generate(**enc, max_new_tokens=int(s.get("max_tokens") or 128),
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
        return ChatResult(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True), attempts=1)

    def complete_many(self, requests: list[ChatRequest]) -> list[ChatResult]:
        out = []
        for r in requests:
            try:
                out.append(self._one(r))
            except Exception as e:  # noqa: BLE001 - a bad request ends in its result, as with a server
                out.append(ChatResult(None, "engine_error", f"{type(e).__name__}: {e}"[:200], 1))
        return out
