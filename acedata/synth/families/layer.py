"""Layer editing: decompose a photo into a subject layer (RGBA, alpha from a segmentation
mask) and a background layer (the subject region inpainted), and fuse them back.

Pairs: `decompose_subject` (photo -> subject layer), `decompose_background` (photo ->
background) and `fuse` (background + subject layer -> photo; the subject layer is the
second input, in `extra_input_ids`). The subject layer's RGB is white where alpha is 0,
so readers that drop alpha see the subject on white. `layers_model_mask` (or `mask_source: model`)
takes the alpha from a segmentation or SAM-family model's mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from acedata.synth.base import Draft, Img, Synthesizer, new_img, register
from acedata.synth.support.masks import object_mask
from acedata.synth.support.model_masks import MaskSource, object_slot
from acedata.synth.support.pixels import composite, inpaint_region, subject_layer


@register
class Layers(MaskSource, Synthesizer):
    name = "layers"
    task = "layer_editing"
    subtasks = ("decompose_subject", "decompose_background", "fuse")
    algorithm = "GrabCut/segment alpha (feathered) + OpenCV Telea background fill + alpha compositing"

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        rgb = src.array()
        mask, params = self.region_mask(rgb, rng, 0.03, 0.6, lambda: object_mask(rgb, rng, max_frac=0.6))
        feather = max(1, min(rgb.shape[:2]) // 200)
        alpha = cv2.GaussianBlur(mask.astype(np.float32) * 255, (0, 0), feather) if feather > 1 else mask * 255.0
        alpha = np.clip(alpha, 0, 255).astype(np.uint8)
        k = max(5, min(rgb.shape[:2]) // 40) | 1
        hole = cv2.dilate((alpha > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        background = inpaint_region(rgb, hole, "telea", max(3, min(rgb.shape[:2]) // 64))
        layer = new_img(subject_layer(rgb, alpha), "image", layer="subject")
        bg = new_img(background, "image", layer="background")
        # The fused target is the photo re-composited from its layers (equal to it wherever the
        # alpha is hard), so fuse is exactly the inverse of decompose.
        fused = composite(background, subject_layer(rgb, alpha))
        target = src if np.array_equal(fused, rgb) else new_img(fused, "image")
        params = {**params, "feather": feather}
        slots = object_slot(params)
        return [
            Draft(self.task, "decompose_subject", src, layer, params=params, synthesizer=self.name, slots=slots),
            Draft(self.task, "decompose_background", src, bg, params=params, synthesizer=self.name, slots=slots),
            Draft(self.task, "fuse", bg, target, extras=[layer], params=params, synthesizer=self.name, slots=slots),
        ]


@register
class LayersModelMask(Layers):
    """Layers whose alpha comes from a model's object mask (segmentation class region or SAM)."""

    name = "layers_model_mask"
    needs_weights = True
    mask_source = "model"
    algorithm = "model object mask alpha (semantic segmentation or SAM, feathered) + OpenCV Telea background fill"
