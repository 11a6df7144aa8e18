"""`object_model`: model-based object consistency for pass 2, from DINOv2 features.

Score (default `score: mnn`) = the mutual-nearest-neighbour ratio of the two images'
patch features ("best buddies"): the fraction of patches of A whose nearest patch in B
has A's patch as its own nearest patch in A. Why this one:

* it asks whether the *same parts* are present, not whether the pictures look alike
  overall: an edit that changes one region lowers it in proportion to that region,
  while a global CLS cosine saturates and follows style and scene type;
* patch sets are matched without regard to position, so crops, flips, moved or
  rescaled objects still match (natural pairs are rarely aligned);
* it is rank-based: no absolute cosine threshold to calibrate per model size, and
  unrelated content mostly maps many-to-one onto a few "hub" patches, which are not
  mutual, so chance matches stay low;
* it is exactly symmetric and lies in [0, 1] (both images are resized and cropped
  to the same grid, so both have P patches: ratio = mutual pairs / P).

`score: cls` gives the cosine of the CLS embeddings instead (the measure UltraEdit
filters with, band [0.4, 0.9]); `score: blend` mixes the two with `cls_weight`.
`min_match_sim` optionally also requires a mutual pair's cosine to reach a floor.

Default bands: mnn [0.3, 1.0] (identical content gives ~1; the pass-1 band already
drops near-duplicates), cls [0.4, 0.9], blend [0.35, 0.95]. These are starting points:
no real DINOv2 weights were available here to calibrate them on.

The model comes through `acedata.models` (`scorer_options.model`, a ModelSpec; default
`facebook/dinov2-base` from a local path or the HF cache, ModelNotFound otherwise, never
a download). `random_init: true` builds a tiny Dinov2 config (override with
`model.options.config`) and is marked `@random-init` in the pairs' provenance. Each set's
images go through the model once, in batches of `batch_size`; all pairs of the set are
then scored from those features, on the GPU when there is one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from acedata.config import Strict
from acedata.errors import ModelNotFound, UserError
from acedata.mining.pairs import upper_pairs
from acedata.mining.scorers.base import PairScores, Scorer, register_scorer
from acedata.models import ModelSpec, pick_device, resolve_local

DEFAULT_MODEL = "facebook/dinov2-base"
TINY = "acedata-tiny-dinov2"
# Small enough for a CPU test, big enough (12x12 patches) for patch matching to mean something.
TINY_CONFIG: dict[str, Any] = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": 128, "patch_size": 8, "image_size": 96}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BANDS = {"mnn": (0.3, 1.0), "cls": (0.4, 0.9), "blend": (0.35, 0.95)}


def tiny_dinov2(options: dict[str, Any]) -> tuple[Any, Any]:
    """A seeded random-init Dinov2Model and a DINOv2-style processor sized for it."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = {**TINY_CONFIG, **options.get("config", {})}
    try:
        config = Dinov2Config(**cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"object_model: bad tiny Dinov2 config {cfg} ({e})") from None
    torch.manual_seed(int(options.get("seed", 0)))
    model = Dinov2Model(config)
    side = int(config.image_size)
    # DINOv2's own recipe scaled down: resize the short side to 8/7 of the crop, centre-crop, ImageNet stats
    processor = BitImageProcessor(size={"shortest_edge": round(side * 8 / 7)},
                                  crop_size={"height": side, "width": side}, do_center_crop=True,
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)
    return model, processor


class ObjectModelOptions(Strict):
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name=DEFAULT_MODEL))
    score: Literal["mnn", "cls", "blend"] = "mnn"
    cls_weight: float = Field(0.5, ge=0.0, le=1.0)  # blend: weight of the CLS cosine
    min_match_sim: float | None = None  # mnn: a mutual pair's cosine must also reach this
    batch_size: int = Field(32, ge=1)
    max_pair_elements: int = Field(1 << 24, ge=1)  # bounds the (pairs, P, P) similarity block


@register_scorer
class ObjectModelScorer(Scorer):
    name = "object_model"
    Options = ObjectModelOptions
    needs_images = True
    loads_model = True
    default_band: ClassVar[tuple[float, float]] = BANDS["mnn"]

    def __init__(self, options: ObjectModelOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.spec = o.model
        self.score, self.cls_weight, self.min_match_sim = o.score, o.cls_weight, o.min_match_sim
        self.batch_size, self.max_pair_elements = o.batch_size, o.max_pair_elements
        self.default_band = BANDS[o.score]  # per instance: the band follows the chosen score
        self.weights_path: str | None = None
        if not self.spec.random_init:  # on the driver too (make_scorer in plan): fail before any work
            self.weights_path = resolve_local(self.spec, self.spec.options.get("hf_repo"))

    @property
    def model_id(self) -> str:
        extra = f",min_sim={self.min_match_sim}" if self.min_match_sim is not None else ""
        weight = f",cls_weight={self.cls_weight}" if self.score == "blend" else ""
        return f"object_model:{self.spec.weights_id}:{self.score}{weight}{extra}"

    def setup(self) -> None:
        import torch

        self._torch = torch
        self.device = pick_device(self.spec)
        if self.spec.random_init:
            model, self.processor = tiny_dinov2(self.spec.options)
        else:
            from transformers import AutoImageProcessor, AutoModel

            try:
                model = AutoModel.from_pretrained(self.weights_path, local_files_only=True)
                self.processor = AutoImageProcessor.from_pretrained(self.weights_path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ModelNotFound(self.spec.name, self.weights_path,
                                    f"no loadable DINOv2 model there ({str(e).splitlines()[0][:120]})") from None
        dtype = {"auto": torch.float16 if self.device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.spec.dtype)
        if dtype is None:
            raise UserError(f"object_model: dtype {self.spec.dtype!r} is not auto, float32, float16 or bfloat16")
        self.model = model.to(self.device, dtype).eval()
        # tokens: CLS, then register tokens (Dinov2WithRegisters), then the patches
        self.skip = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    # --- features ----------------------------------------------------------------------

    def _decode(self, data: bytes | None):
        if data is None:
            return None
        from acedata.images import open_rgb

        try:
            return open_rgb(data)
        except (OSError, ValueError, SyntaxError):  # unreadable bytes: that image's pairs stay unscored (nan)
            return None

    def embed(self, images: list) -> tuple[Any, Any]:
        """(patches (n, P, D), cls (n, D)), L2-normalised, for decoded PIL images; batched forwards."""
        torch = self._torch
        patches, cls = [], []
        for k in range(0, len(images), self.batch_size):
            x = self.processor(images=images[k : k + self.batch_size], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                out = self.model(pixel_values=x.to(self.device, self.model.dtype))
            h = out.last_hidden_state.float()
            patches.append(torch.nn.functional.normalize(h[:, self.skip :], dim=-1))
            cls.append(torch.nn.functional.normalize(out.pooler_output.float(), dim=-1))
        return torch.cat(patches), torch.cat(cls)

    def mutual_ratio(self, patches: Any, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Mutual-nearest-neighbour patch ratio of pairs (i[k], j[k]), in chunks of pairs."""
        torch = self._torch
        p = patches.shape[1]
        chunk = max(1, self.max_pair_elements // (p * p))  # bounds the (chunk, P, P) similarity block
        ar = torch.arange(p, device=patches.device)
        out = []
        for s in range(0, len(i), chunk):
            a = patches[torch.as_tensor(i[s : s + chunk], device=patches.device)]
            b = patches[torch.as_tensor(j[s : s + chunk], device=patches.device)]
            sim = torch.bmm(a, b.transpose(1, 2))  # (c, P_a, P_b)
            best, a2b = sim.max(dim=2)
            b2a = sim.argmax(dim=1)
            mutual = b2a.gather(1, a2b) == ar  # a's best in b points back to a
            if self.min_match_sim is not None:
                mutual &= best >= self.min_match_sim
            out.append(mutual.float().mean(dim=1))
        return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)

    # --- pass 2 ------------------------------------------------------------------------

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        if images is None:
            raise UserError("scorer 'object_model' needs image bytes: give the pair stage an images table")
        i, j = upper_pairs(len(images))
        out = np.full(len(i), np.nan, dtype=np.float32)
        decoded = [self._decode(b) for b in images]
        ok = [k for k, im in enumerate(decoded) if im is not None]
        if len(ok) < 2:
            return PairScores(i, j, out)
        patches, cls = self.embed([decoded[k] for k in ok])  # each image once per set
        row = np.full(len(images), -1, dtype=np.int64)
        row[ok] = np.arange(len(ok))
        scored = (row[i] >= 0) & (row[j] >= 0)
        ri, rj = row[i[scored]], row[j[scored]]
        if self.score == "cls":
            s = self._cls_cos(cls, ri, rj)
        elif self.score == "mnn":
            s = self.mutual_ratio(patches, ri, rj)
        else:
            w = self.cls_weight
            s = w * self._cls_cos(cls, ri, rj) + (1 - w) * self.mutual_ratio(patches, ri, rj)
        out[scored] = s
        return PairScores(i, j, out)

    def _cls_cos(self, cls: Any, ri: np.ndarray, rj: np.ndarray) -> np.ndarray:
        c = cls.cpu().numpy()
        return np.einsum("nd,nd->n", c[ri], c[rj]).astype(np.float32)

