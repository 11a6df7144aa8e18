"""CLIP/SigLIP filter for edit pairs (InstructPix2Pix / UltraEdit style), when a model is set.

image similarity: cosine(E(source), E(target)) >= image_min (the edit kept the subject);
directional: cosine(E(target) - E(source), T(target text) - T(source text)) >= directional_min,
where the texts are "a photo of {caption}" and the edit's target description (a style
name, a grading look or a model prompt). Defaults: InstructPix2Pix 0.7 / 0.2 (DESIGN.md §5).
The model loads through `acedata.models.siglip` (local path, HF cache or explicit random init).
"""

from __future__ import annotations

from pydantic import Field

from acedata.config import Strict
from acedata.models import ModelSpec
from acedata.synth.base import Draft

TARGET_TEXT = {
    "watercolor": "a watercolor painting of {c}",
    "pencil_sketch": "a pencil sketch of {c}",
    "cartoon": "a cartoon drawing of {c}",
    "color_grading": "a {look} colour graded photo of {c}",
}


class ClipFilterConfig(Strict):
    model: ModelSpec
    tasks: list[str] = Field(default_factory=lambda: ["semantic_editing", "element_editing"])
    image_min: float = 0.7
    directional_min: float = 0.2


def target_text(d: Draft, caption: str) -> str | None:
    if d.params.get("prompt"):
        return str(d.params["prompt"])
    tmpl = TARGET_TEXT.get(d.subtask)
    if tmpl is None:
        return None
    return tmpl.format(c=caption, look=str(d.params.get("look", "")).replace("_", " "))


class ClipScorer:
    def __init__(self, cfg: ClipFilterConfig) -> None:
        import open_clip

        from acedata.models.siglip import TINY, TINY_CONFIG, load_image_embedder, register_tiny

        self.cfg = cfg
        self.enc = load_image_embedder(cfg.model)
        register_tiny()
        try:
            if cfg.model.name == TINY:  # open_clip would fetch SigLIP's sentencepiece for a "siglip" name
                self.tokenizer = open_clip.SimpleTokenizer(context_length=TINY_CONFIG["text_cfg"]["context_length"])
            else:
                self.tokenizer = open_clip.get_tokenizer(cfg.model.name)
        except Exception:  # noqa: BLE001 - no tokenizer files on this machine: image similarity only
            self.tokenizer = None

    def _images(self, pils):
        import torch

        x = torch.stack([self.enc.preprocess(p.convert("RGB")) for p in pils]).to(self.enc.device, self.enc.dtype)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.enc.model.encode_image(x).float(), dim=-1)

    def _texts(self, texts):
        import torch

        tokens = self.tokenizer(texts).to(self.enc.device)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.enc.model.encode_text(tokens).float(), dim=-1)

    def scores(self, d: Draft, caption: str | None) -> dict[str, float]:
        e = self._images([d.source.pil, d.target.pil])
        out = {"clip_image": float(e[0] @ e[1])}
        text = target_text(d, caption or "the scene")
        if self.tokenizer is not None and text:
            t = self._texts([f"a photo of {caption or 'the scene'}", text])
            di, dt = e[1] - e[0], t[1] - t[0]
            denom = float(di.norm() * dt.norm()) or 1.0
            out["clip_directional"] = float(di @ dt) / denom
        return out

    def judge(self, d: Draft, caption: str | None, verdict):
        if d.task not in self.cfg.tasks:
            return verdict
        s = self.scores(d, caption)
        verdict.scores.update(s)
        if s["clip_image"] < self.cfg.image_min:
            verdict.ok, verdict.reason = False, "clip_image_low"
            verdict.detail = f"clip image similarity {s['clip_image']:.3f} < {self.cfg.image_min}"
        elif s.get("clip_directional", 1.0) < self.cfg.directional_min:
            verdict.ok, verdict.reason = False, "clip_directional_low"
            verdict.detail = f"clip directional {s['clip_directional']:.3f} < {self.cfg.directional_min}"
        return verdict
