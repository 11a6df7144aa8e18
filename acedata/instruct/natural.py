"""Instructions for natural pairs (mined, not synthesized): an MLLM analyses differences and
commonalities and an LLM writes the instruction (`mllm_llm`), or one call to a fine-tuned
instruction captioner (`captioner`). Where either fails the pair keeps its template, and the
reason is kept in its provenance and rejected list."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from acedata.instruct.captioner import (
    MLLMConfig,
    WriterConfig,
    analyse_pairs,
    caption_pairs,
    write_instructions,
)


@dataclass
class PairWork:
    """A pair on its way to instruction rows: the template first, then what the MLLM/LLM make of it."""

    pair: dict[str, Any]  # the pairs-table row
    text: str  # variant 0's instruction
    prov: dict[str, Any]  # provenance JSON of variant 0
    method: str = "template"  # template | captioner | mllm_llm
    model: str | None = None
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"text", "reason"} of refused attempts
    rewrites: list[str] = field(default_factory=list)  # accepted LLM rewrites: variants 1..K

    def reject(self, attempts: list[tuple[str, str]]) -> None:
        self.rejected += [{"text": t, "reason": why} for t, why in attempts]


def split_ready(natural: list[PairWork], images: dict[str, bytes],
                counts: dict[str, int]) -> list[tuple[PairWork, tuple[bytes, bytes]]]:
    """The pairs whose two images are at hand, with them; the others fall back to their template."""
    ready = []
    for w in natural:
        s, t = w.pair["source_id"], w.pair["target_id"]
        if s in images and t in images:
            ready.append((w, (images[s], images[t])))
        else:
            fallback(w, "image_missing", counts)
    return ready


def by_captioner(ready: list[tuple[PairWork, tuple[bytes, bytes]]], gen: Any, cfg: MLLMConfig,
                 checkpoint: Callable[[], Any], counts: dict[str, int]) -> None:
    outs = caption_pairs([im for _, im in ready], gen, cfg)
    for (w, _), o in zip(ready, outs):
        w.reject(o.rejected)
        if o.text is None:
            fallback(w, o.reason or "captioner_failed", counts)
            continue
        w.text, w.method, w.model = o.text, "captioner", cfg.endpoint.model
        w.prov = {"natural": "captioner", "template_fallback_was": w.prov["template"],
                  "captioner_checkpoint": checkpoint()}
        counts["natural_captioner"] = counts.get("natural_captioner", 0) + 1


def by_mllm_llm(ready: list[tuple[PairWork, tuple[bytes, bytes]]], mllm: Any, cfg: MLLMConfig, llm: Any,
                writer: WriterConfig, counts: dict[str, int]) -> None:
    analyses = analyse_pairs([im for _, im in ready], mllm, cfg)
    ok = [(w, a) for (w, _), a in zip(ready, analyses) if a.text is not None]
    for (w, _), a in zip(ready, analyses):
        w.reject(a.rejected)
        if a.text is None:
            fallback(w, f"analysis_{a.reason}", counts)
    if not ok:
        return
    outs = write_instructions([a.text for _, a in ok], llm, writer)
    for (w, a), o in zip(ok, outs):
        w.reject(o.rejected)
        if o.text is None:
            fallback(w, f"writer_{o.reason}", counts)
            continue
        w.text, w.method, w.model = o.text, "mllm_llm", f"{cfg.endpoint.model}+{writer.endpoint.model}"
        w.prov = {"natural": "mllm_llm", "analysis": json.loads(a.text), "template_fallback_was": w.prov["template"]}
        counts["natural_mllm_llm"] = counts.get("natural_mllm_llm", 0) + 1


def fallback(w: PairWork, reason: str, counts: dict[str, int]) -> None:
    w.prov["natural_fallback"] = reason
    w.rejected.append({"text": "", "reason": f"natural_fallback:{reason}"})
    counts["natural_template_fallback"] = counts.get("natural_template_fallback", 0) + 1
