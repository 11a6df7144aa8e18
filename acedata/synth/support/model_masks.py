"""Object and region masks from a model (semantic segmenter or SAM family), and `MaskSource`,
the mixin through which repainting, element and layer synthesizers take their region from a
model or from the weight-free masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from acedata.errors import UserError
from acedata.models import ModelSpec
from acedata.synth.support.model_loading import ModelOptions, load_transformers


class MaskOptions(ModelOptions):
    """Options of synthesizers that take an object region (repainting, element, layer editing)."""

    mask_source: Literal["weight_free", "model"] | None = None  # None: the synthesizer's default
    mask_model: Literal["segmentation", "sam"] = "segmentation"
    sam_points: int = Field(4, ge=1)  # point prompts tried per image (SAM)


class ModelMasker:
    """Object/region masks from a model, for repainting, element removal and layer alpha.

    `mask_model: segmentation` (default) takes one class region of a semantic segmenter (the
    `segmentation_model` synthesizer's models: SegFormer, UperNet ...), its class name kept as
    the object; `mask_model: sam` prompts a SAM-family model (transformers SamModel: SAM,
    SlimSAM) with a random point and keeps its best-scored mask within the area bounds."""

    name = "mask_model"

    def __init__(self, spec: ModelSpec, opts: MaskOptions) -> None:
        self.kind = opts.mask_model
        if self.kind == "sam":
            load_transformers(self, spec, opts, "SamModel", "build_tiny_sam", processor="SamProcessor")
        else:
            load_transformers(self, spec, opts, "AutoModelForSemanticSegmentation", "build_tiny_segformer")
        self.points = opts.sam_points

    @property
    def weights_id(self) -> str:
        return self.spec.weights_id

    def mask(self, rgb: np.ndarray, rng: np.random.Generator, min_frac: float,
             max_frac: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A binary (0/1) mask whose area lies in [min_frac, max_frac], or None."""
        if self.kind == "sam":
            return self._sam(rgb, rng, min_frac, max_frac)
        return self._segmentation(rgb, rng, min_frac, max_frac)

    def _segmentation(self, rgb, rng, min_frac, max_frac):
        torch = self._torch
        x = self.processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = self.model(pixel_values=x.to(self.device, self.model.dtype)).logits
        up = torch.nn.functional.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)
        labels = up.argmax(1)[0].cpu().numpy()
        # Connected regions of one class, so a mask is one object rather than every pixel of a class.
        regions = []
        for cls in np.unique(labels):
            n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == cls).astype(np.uint8), connectivity=8)
            for k in range(1, n):
                frac = stats[k, cv2.CC_STAT_AREA] / labels.size
                if min_frac <= frac <= max_frac:
                    regions.append((int(cls), k, comp))
        if not regions:
            return None
        cls, k, comp = regions[int(rng.integers(len(regions)))]
        names = getattr(self.model.config, "id2label", {}) or {}
        label = str(names.get(cls, names.get(str(cls), "")))
        mask = (comp == k).astype(np.uint8)
        params = {"method": "segmentation_model", "model": self.spec.weights_id, "class_id": cls,
                  "segment_frac": round(float(mask.mean()), 4)}
        if label and not label.startswith("LABEL_"):  # a real class name names the object in instructions
            params["object"] = label
        return mask, params

    def _sam(self, rgb, rng, min_frac, max_frac):
        torch = self._torch
        h, w = rgb.shape[:2]
        pts = [[float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h)] for _ in range(self.points)]
        # One point prompt per candidate object: input_points [image, prompt, points, xy].
        inputs = self.processor(images=Image.fromarray(rgb), input_points=[[[p] for p in pts]], return_tensors="pt")
        with torch.no_grad():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.model.dtype),
                             input_points=inputs["input_points"].to(self.device, self.model.dtype),
                             multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"])[0].numpy()
        scores = out.iou_scores.float().cpu().numpy()[0]  # [prompt, mask]
        best = None
        for p in range(masks.shape[0]):
            for m in range(masks.shape[1]):
                frac = float(masks[p, m].mean())
                if min_frac <= frac <= max_frac and (best is None or scores[p, m] > best[0]):
                    best = (float(scores[p, m]), p, m)
        if best is None:
            return None
        score, p, m = best
        mask = masks[p, m].astype(np.uint8)
        return mask, {"method": "sam", "model": self.spec.weights_id, "point": [round(v, 1) for v in pts[p]],
                      "iou_score": round(score, 4), "segment_frac": round(float(mask.mean()), 4)}


def object_slot(params: dict[str, Any]) -> dict[str, str]:
    """The `object` template slot when a model mask named the region's class (weight-free masks don't)."""
    return {"object": params["object"]} if params.get("object") else {}


class MaskSource:
    """Mixin for synthesizers that need an object region: weight-free masks by default, or a model's
    (`mask_source: model` in the synthesizer's model options; `ModelMasker` above:
    a semantic segmenter or a SAM-family model). When the model finds no region of a usable size the
    weight-free mask is used and the params say so."""

    Options = MaskOptions
    mask_source: str = "weight_free"
    masker: Any = None

    def load(self, spec: Any | None) -> None:
        if spec is None:
            if self.mask_source == "model":
                raise UserError(f"synthesizer {getattr(self, 'name', '?')!r} needs a mask model: set "
                                f"models.{getattr(self, 'name', '?')} (name/path) in the stage")
            return
        opts = self.parse_options(spec)
        self.mask_source = opts.mask_source or self.mask_source
        if self.mask_source == "model":
            self.masker = ModelMasker(spec, opts)

    @property
    def weights_id(self) -> str | None:
        return self.masker.weights_id if self.masker is not None else None

    def region_mask(self, rgb: np.ndarray, rng: np.random.Generator, min_frac: float, max_frac: float,
                    weight_free: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> tuple[np.ndarray, dict[str, Any]]:
        if self.masker is not None:
            found = self.masker.mask(rgb, rng, min_frac, max_frac)
            if found is not None:
                return found[0], {**found[1], "mask_source": "model"}
            mask, params = weight_free()
            return mask, {**params, "mask_source": "weight_free_fallback"}
        return weight_free()
