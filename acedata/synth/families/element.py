"""Element editing without weights: remove an object region (OpenCV Telea / Navier-Stokes
inpainting) and the reverse pair, add. The mask (binary, 255 = the element's region)
travels with both pairs; outside it source and target are identical. `remove_add_model_mask`
(or `mask_source: model` in the synthesizer's model options) takes the region from a segmentation
or SAM-family model instead.
"""

from __future__ import annotations

import cv2
import numpy as np

from acedata.synth.base import Draft, Img, Synthesizer, mask_img, new_img, register
from acedata.synth.support.masks import object_mask, segment_mask
from acedata.synth.support.model_masks import MaskSource, object_slot
from acedata.synth.support.pixels import inpaint_region


def _weight_free_element(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    found = segment_mask(rgb, rng, 0.02, 0.2)
    return found if found is not None else object_mask(rgb, rng, max_frac=0.35)


@register
class RemoveAdd(MaskSource, Synthesizer):
    name = "remove_add"
    task = "element_editing"
    subtasks = ("remove", "add")
    chainable = True
    algorithm = "Felzenszwalb/GrabCut object mask + OpenCV inpainting (Telea or Navier-Stokes)"

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        rgb = src.array()
        mask, params = self.region_mask(rgb, rng, 0.02, 0.35, lambda: _weight_free_element(rgb, rng))
        k = max(3, min(rgb.shape[:2]) // 48) | 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))  # cover the outline
        method = "telea" if rng.random() < 0.6 else "ns"
        radius = max(3, min(rgb.shape[:2]) // 64)
        removed = new_img(inpaint_region(rgb, mask, method, radius), "image")
        m = mask_img(mask)
        params = {**params, "inpaint": method, "radius": radius}
        return [
            Draft(self.task, "remove", src, removed, mask=m, params=params, synthesizer=self.name,
                  slots=object_slot(params)),
            Draft(self.task, "add", removed, src, mask=m, params=params, synthesizer=self.name,
                  slots=object_slot(params)),
        ]


@register
class RemoveAddModelMask(RemoveAdd):
    """Remove / add with the element's region from a model (segmentation class region or SAM)."""

    name = "remove_add_model_mask"
    needs_weights = True
    mask_source = "model"
    algorithm = "model object mask (semantic segmentation or SAM) + OpenCV inpainting (Telea or Navier-Stokes)"
