"""Repainting: inpainting and outpainting pairs.

Target = the original photo. Source = the photo with the masked region filled with
mid-gray (128): the ACE DiT normalises inputs to [-1, 1], where 128 is ~0, i.e. "no
information" — the same as zeroing the masked latent region. Masks are binary (255 =
repaint), the photo's size, and the only place where source and target differ.
`inpaint_model_mask` (or `mask_source: model` on `inpaint_segment`) draws object masks from a
segmentation or SAM-family model; brush, box and border masks stay weight-free.
"""

from __future__ import annotations

import cv2
import numpy as np

from acedata.synth.base import MASK_FILL_GRAY, Draft, Img, Synthesizer, mask_img, new_img, register
from acedata.synth.support.masks import object_mask
from acedata.synth.support.model_masks import MaskSource, object_slot
from acedata.synth.support.pixels import fill_masked


def brush_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Free-form strokes: random walks drawn with thick round lines (LaMa-style irregular masks)."""
    mask = np.zeros((h, w), np.uint8)
    side = min(h, w)
    strokes = int(rng.integers(1, 5))
    for _ in range(strokes):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        width = int(rng.integers(max(3, side // 30), max(4, side // 10)))
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 9))):
            angle += rng.uniform(-1.2, 1.2)
            length = rng.uniform(side / 12, side / 4)
            nx = int(np.clip(x + length * np.cos(angle), 0, w - 1))
            ny = int(np.clip(y + length * np.sin(angle), 0, h - 1))
            cv2.line(mask, (x, y), (nx, ny), 1, width, cv2.LINE_AA)
            x, y = nx, ny
    return (mask > 0).astype(np.uint8), {"mask_type": "brush", "strokes": strokes}


def box_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    mask = np.zeros((h, w), np.uint8)
    boxes = int(rng.integers(1, 4))
    for _ in range(boxes):
        bw, bh = int(w * rng.uniform(0.12, 0.4)), int(h * rng.uniform(0.12, 0.4))
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        mask[y : y + bh, x : x + bw] = 1
    return mask, {"mask_type": "box", "boxes": boxes}


def border_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Outpainting: keep an inner rectangle, repaint one or more borders."""
    margins = np.zeros(4)  # left, top, right, bottom as fractions
    if rng.random() < 0.4:
        margins[:] = rng.uniform(0.1, 0.25)
    else:
        sides = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
        margins[sides] = rng.uniform(0.15, 0.4, size=len(sides))
    left, top, right, bottom = margins
    mask = np.ones((h, w), np.uint8)
    mask[int(h * top) : h - int(h * bottom), int(w * left) : w - int(w * right)] = 0
    return mask, {"mask_type": "border", "margins": [round(float(m), 3) for m in margins]}


class RepaintSynth(Synthesizer):
    task = "repainting"
    subtasks = ("inpainting",)

    def mask(self, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        rgb = src.array()
        mask, params = self.mask(rgb, rng)
        source = new_img(fill_masked(rgb, mask, MASK_FILL_GRAY), "image")
        params = {**params, "fill": MASK_FILL_GRAY}
        return [Draft(self.task, self.subtasks[0], source, src, mask=mask_img(mask), params=params,
                      synthesizer=self.name, slots=object_slot(params))]


@register
class InpaintBrush(RepaintSynth):
    name = "inpaint_brush"
    algorithm = "random brush-stroke mask"

    def mask(self, rgb, rng):
        return brush_mask(*rgb.shape[:2], rng)


@register
class InpaintBox(RepaintSynth):
    name = "inpaint_box"
    algorithm = "random box mask"

    def mask(self, rgb, rng):
        return box_mask(*rgb.shape[:2], rng)


@register
class InpaintSegment(MaskSource, RepaintSynth):
    name = "inpaint_segment"
    algorithm = "object/segment mask (GrabCut subject or Felzenszwalb segment), dilated"

    def mask(self, rgb, rng):
        mask, params = self.region_mask(rgb, rng, 0.03, 0.6, lambda: object_mask(rgb, rng))
        k = max(3, min(rgb.shape[:2]) // 64) | 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        return mask, {"mask_type": "segment", **params}


@register
class InpaintModelMask(InpaintSegment):
    """Inpainting with object masks from a model (segmentation or SAM-family; the ACE++ data took
    about 70% of its repainting masks from SAM)."""

    name = "inpaint_model_mask"
    needs_weights = True
    mask_source = "model"
    algorithm = "model object mask (semantic segmentation or SAM), dilated"


@register
class Outpaint(RepaintSynth):
    name = "outpaint"
    subtasks = ("outpainting",)
    algorithm = "border mask"

    def mask(self, rgb, rng):
        return border_mask(*rgb.shape[:2], rng)
