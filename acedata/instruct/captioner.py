"""MLLM paths: natural-pair analysis + LLM instruction, the one-call instruction
captioner, and generation-style captions for single images.

Images go to the server as OpenAI image content parts holding data URLs, each resized
so its longer side is at most `image_max_side`. The analysis is asked for as JSON
(`differences`, `commonalities`) through the server's structured output when the
endpoint says it offers it (`response_format` json_schema, or vLLM `guided_json`) —
a server that answers such a request with 400/422 is asked again by prompt only;
replies are always parsed and validated, and an invalid one is asked again with the
validation error, up to `json_retries` times.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from acedata.config import Strict
from acedata.instruct.client import ChatRequest, EndpointConfig
from acedata.instruct.rewrite import REFUSAL, Generator, clean_reply

ANALYSIS_PROMPT = (
    "The first image is the original, the second is the edited result. List the semantic differences "
    "between them and what they have in common. Answer as JSON: "
    '{"differences": ["..."], "commonalities": ["..."]}'
)
WRITER_SYSTEM = (
    "You write one short image-editing instruction that turns the original image into the edited one. "
    "Refer to the original image as {image}. Focus on the semantic difference. Answer with the instruction only."
)
WRITER_USER = "Analysis of the two images:\n{analysis}\nWrite the instruction."
CAPTIONER_PROMPT = (
    "The first image is the input, the second is the output of an edit. Write the editing instruction "
    "that produces the second image from the first; call the first image {image}. Answer with the instruction only."
)
CAPTION_PROMPT = (
    "Describe this image as a prompt for a text-to-image model: subject, setting, style, in one sentence."
)
INTERNVL_STOP = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|end|>"]


class PairAnalysis(BaseModel):
    differences: list[str] = Field(min_length=1)
    commonalities: list[str] = Field(default_factory=list)

    @field_validator("differences", "commonalities")
    @classmethod
    def _non_empty_items(cls, v: list[str]) -> list[str]:
        v = [s.strip() for s in v if isinstance(s, str) and s.strip()]
        return v


ANALYSIS_SCHEMA = {
    "type": "object",
    "properties": {
        "differences": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "commonalities": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["differences", "commonalities"],
}


class MLLMConfig(Strict):
    endpoint: EndpointConfig
    image_max_side: int = Field(448, ge=16)  # InternVL2 tiles are 448 px
    image_format: str = "JPEG"
    json_retries: int = Field(2, ge=0)
    analysis_prompt: str = ANALYSIS_PROMPT
    captioner_prompt: str = CAPTIONER_PROMPT
    # "Image-1: <img>\nImage-2: <img>\n<prompt>": the layout `acedata export-captioner` trains on
    image_labels: bool = False
    # which trained captioner checkpoint answers (provenance); default: read from the served
    # folder's acedata_captioner.json when the model name is a local path
    checkpoint: str | None = None
    caption_prompt: str = CAPTION_PROMPT


class WriterConfig(Strict):
    endpoint: EndpointConfig
    system_prompt: str = WRITER_SYSTEM
    user_prompt: str = WRITER_USER  # {analysis}


def data_url(image: bytes, max_side: int, fmt: str = "JPEG") -> str:
    """The image, shrunk to fit `max_side` (aspect kept), as a base64 data URL."""
    from PIL import Image

    im = Image.open(io.BytesIO(image))
    im = im.convert("RGB") if fmt.upper() == "JPEG" else im.convert("RGBA" if "A" in im.mode else "RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 90} if fmt.upper() == "JPEG" else {}))
    mime = "image/jpeg" if fmt.upper() == "JPEG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def image_message(prompt: str, images: list[bytes], cfg: MLLMConfig) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for i, b in enumerate(images, 1):
        if cfg.image_labels:
            parts.append({"type": "text", "text": ("\n" if i > 1 else "") + f"Image-{i}: "})
        parts.append({"type": "image_url", "image_url": {"url": data_url(b, cfg.image_max_side, cfg.image_format)}})
    parts.append({"type": "text", "text": ("\n" if cfg.image_labels else "") + prompt})
    return [{"role": "user", "content": parts}]


def structured_params(ep: EndpointConfig) -> dict[str, Any]:
    if ep.structured_output == "json_schema":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "pair_analysis", "schema": ANALYSIS_SCHEMA}}}
    if ep.structured_output == "guided_json":
        return {"extra_body": {"guided_json": ANALYSIS_SCHEMA}}
    return {}


def parse_analysis(text: str | None) -> tuple[PairAnalysis | None, str]:
    """(analysis, "") or (None, reason): JSON taken whole, from a fenced block, or the outer braces."""
    if not text or not text.strip():
        return None, "empty"
    candidates = [text.strip()]
    candidates += re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    last = "bad_json"
    for c in candidates:
        try:
            data = json.loads(c)
        except json.JSONDecodeError:
            continue
        try:
            return PairAnalysis.model_validate(data), ""
        except ValidationError as e:
            last = "schema_mismatch: " + "; ".join(f"{'.'.join(map(str, x['loc']))} {x['msg']}" for x in e.errors())
    return None, last


def check_instruction(text: str, indicator: str = "{image}") -> str | None:
    """A rejection reason for a written instruction, or None."""
    if not text:
        return "empty"
    if REFUSAL.search(text):
        return "refused"
    if indicator not in text:
        return "indicator_dropped"
    others = set(re.findall(r"\{image\d*\}", text)) - {indicator}
    if others:
        return "indicator_invented"
    if len(text) > 400:
        return "too_long"
    return None


@dataclass
class Outcome:
    text: str | None
    reason: str | None = None  # why there is no text
    rejected: list[tuple[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def analyse_pairs(images: list[tuple[bytes, bytes]], gen: Generator, cfg: MLLMConfig) -> list[Outcome]:
    """Differences/commonalities JSON for each (source, target); invalid replies asked again."""
    base = [image_message(cfg.analysis_prompt, [a, b], cfg) for a, b in images]
    params = structured_params(cfg.endpoint)
    out = [Outcome(None) for _ in images]
    todo = list(range(len(images)))
    convo = {i: list(base[i]) for i in todo}
    tries = 0
    while todo and tries <= cfg.json_retries:
        tries += 1
        replies = gen.complete_many([ChatRequest(convo[i], params) for i in todo])
        if params and any(r.error in ("http_400", "http_422") for r in replies):
            # The server rejects the structured-output request: ask by prompt only and validate.
            params = {}
            tries -= 1
            for i, res in zip(todo, replies):
                out[i].rejected.append(("", f"structured_output_unsupported({res.error})"))
            continue
        again = []
        for i, res in zip(todo, replies):
            if not res.ok:
                out[i].reason = f"request_{res.error}"
                out[i].rejected.append(("", out[i].reason))
                continue  # the client already retried transport errors
            analysis, why = parse_analysis(res.text)
            if analysis is not None:
                out[i] = Outcome(analysis.model_dump_json(), None, out[i].rejected)
                continue
            out[i].reason = why
            out[i].rejected.append(((res.text or "")[:300], why))
            convo[i] = convo[i] + [
                {"role": "assistant", "content": res.text or ""},
                {"role": "user", "content": f"That was not valid ({why}). Reply with the JSON object only."},
            ]
            again.append(i)
        todo = again
    return out


def write_instructions(analyses: list[str], gen: Generator, cfg: WriterConfig) -> list[Outcome]:
    reqs = [ChatRequest([{"role": "system", "content": cfg.system_prompt},
                         {"role": "user", "content": cfg.user_prompt.format(analysis=a)}]) for a in analyses]
    return [_instruction_outcome(r) for r in gen.complete_many(reqs)]


def caption_pairs(images: list[tuple[bytes, bytes]], gen: Generator, cfg: MLLMConfig) -> list[Outcome]:
    """The one-call instruction captioner: both images in, the instruction out."""
    reqs = [ChatRequest(image_message(cfg.captioner_prompt, [a, b], cfg)) for a, b in images]
    return [_instruction_outcome(r) for r in gen.complete_many(reqs)]


def caption_images(images: list[bytes], gen: Generator, cfg: MLLMConfig) -> list[Outcome]:
    """Generation-style captions (text-to-image prompts) for single images."""
    reqs = [ChatRequest(image_message(cfg.caption_prompt, [b], cfg)) for b in images]
    out = []
    for r in gen.complete_many(reqs):
        if not r.ok:
            out.append(Outcome(None, f"request_{r.error}"))
            continue
        text = clean_reply(r.text)
        reason = None if text else "empty"
        if text and REFUSAL.search(text):
            reason = "refused"
        elif text and not re.search(r"[A-Za-z]{3,}", text):
            reason = "malformed"
        elif text and len(text) > 1000:
            reason = "too_long"
        out.append(Outcome(None if reason else text, reason, [(text, reason)] if reason else []))
    return out


def _instruction_outcome(r) -> Outcome:
    if not r.ok:
        return Outcome(None, f"request_{r.error}", [("", f"request_{r.error}")])
    text = clean_reply(r.text)
    reason = check_instruction(text)
    if reason:
        return Outcome(None, reason, [(text or (r.text or "")[:200], reason)])
    return Outcome(text)
