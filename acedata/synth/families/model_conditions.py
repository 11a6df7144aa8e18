"""Condition maps from models: monocular depth (DPT / MiDaS) and semantic segmentation
(SegFormer family), both through transformers, with the inverse controllable pair.

Weights come from a local folder or the HF cache (nothing is downloaded); `random_init: true`
builds the tiny architecture and marks outputs random-init.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from acedata.models import ModelSpec
from acedata.synth.base import register
from acedata.synth.support.conditions import ConditionSynth
from acedata.synth.support.model_loading import ModelOptions, load_transformers
from acedata.synth.support.pixels import as_rgb3, palette


@register
class Depth(ConditionSynth):
    """Monocular relative depth (brighter = nearer), normalised per image, as MiDaS/DPT maps."""

    name = "depth"
    subtasks = ("depth",)
    needs_weights = True
    algorithm = "transformers AutoModelForDepthEstimation (DPT / MiDaS family)"
    default_repo = "Intel/dpt-hybrid-midas"

    Options = ModelOptions

    def load(self, spec: ModelSpec | None) -> None:
        load_transformers(self, spec, self.parse_options(spec), "AutoModelForDepthEstimation", "build_tiny_dpt")

    @property
    def weights_id(self) -> str | None:
        return self.spec.weights_id if hasattr(self, "spec") else None

    def condition(self, rgb, rng):
        torch = self._torch
        inputs = self.processor(images=Image.fromarray(rgb), return_tensors="pt")
        x = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.no_grad():
            depth = self.model(pixel_values=x).predicted_depth
        d = torch.nn.functional.interpolate(depth[:, None].float(), size=rgb.shape[:2], mode="bicubic",
                                            align_corners=False)[0, 0].cpu().numpy()
        lo, hi = np.percentile(d, 1), np.percentile(d, 99)
        d = np.clip((d - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(d)
        return as_rgb3((d * 255).astype(np.uint8)), {"model": self.spec.weights_id}


@register
class SegmentationModel(ConditionSynth):
    """Semantic segmentation colour map from a model (SegFormer / UperNet / DPT heads): one fixed
    palette colour per class, so a class keeps its colour across images."""

    name = "segmentation_model"
    subtasks = ("segmentation",)
    needs_weights = True
    algorithm = "transformers AutoModelForSemanticSegmentation"

    Options = ModelOptions

    def load(self, spec: ModelSpec | None) -> None:
        load_transformers(self, spec, self.parse_options(spec), "AutoModelForSemanticSegmentation",
                          "build_tiny_segformer")

    @property
    def weights_id(self) -> str | None:
        return self.spec.weights_id if hasattr(self, "spec") else None

    def condition(self, rgb, rng):
        torch = self._torch
        x = self.processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = self.model(pixel_values=x.to(self.device, self.model.dtype)).logits
        up = torch.nn.functional.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear",
                                             align_corners=False)
        labels = up.argmax(1)[0].cpu().numpy()
        colours = palette(int(logits.shape[1]))
        return colours[labels], {"model": self.spec.weights_id, "classes": len(np.unique(labels))}
