"""Semantic editing without weights: style changes with classical filters.

watercolor (OpenCV edge-preserving stylization), pencil_sketch (OpenCV pencilSketch),
cartoon (k-means colour quantisation + bilateral smoothing + adaptive-threshold ink lines)
and color_grading (named looks: warm, cool, sepia, vintage, teal_orange, high_contrast,
faded). The look / style is in the pair's provenance params for instruction templates.
"""

from __future__ import annotations

import cv2
import numpy as np

from acedata.synth.base import Draft, Img, Synthesizer, new_img, register
from acedata.synth.support.pixels import as_rgb3, gray_of


class StyleSynth(Synthesizer):
    task = "semantic_editing"
    chainable = True

    def stylize(self, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        out, params = self.stylize(src.array(), rng)
        style = params.get("style") or params.get("look")  # the named style or colour look
        return [Draft(self.task, self.subtasks[0], src, new_img(out), params=params, synthesizer=self.name,
                      slots={"style": style} if style else {})]


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@register
class Watercolor(StyleSynth):
    name = "watercolor"
    subtasks = ("watercolor",)
    algorithm = "opencv stylization (edge-preserving filter)"

    def stylize(self, rgb, rng):
        s, r = float(rng.uniform(40, 120)), float(rng.uniform(0.3, 0.6))
        return _rgb(cv2.stylization(_bgr(rgb), sigma_s=s, sigma_r=r)), {"style": "watercolor",
                                                                          "sigma_s": round(s, 1),
                                                                          "sigma_r": round(r, 3)}


@register
class PencilSketch(StyleSynth):
    """Graphite: colour-dodge of the gray image over its blurred negative; colour pencil: OpenCV
    pencilSketch's colour output."""

    name = "pencil_sketch"
    subtasks = ("pencil_sketch",)
    algorithm = "colour-dodge sketch (graphite) / opencv pencilSketch (colour)"

    def stylize(self, rgb, rng):
        if rng.random() < 0.35:
            s, r, shade = float(rng.uniform(40, 80)), float(rng.uniform(0.05, 0.1)), float(rng.uniform(0.02, 0.06))
            _, colour = cv2.pencilSketch(_bgr(rgb), sigma_s=s, sigma_r=r, shade_factor=shade)
            return _rgb(colour), {"style": "colour pencil sketch", "sigma_s": round(s, 1)}
        gray = gray_of(rgb).astype(np.float32)
        sigma = float(rng.uniform(4, 10)) * max(rgb.shape[:2]) / 512
        blur_neg = cv2.GaussianBlur(255 - gray, (0, 0), max(1.0, sigma))
        sketch = np.clip(gray * 255 / np.maximum(255 - blur_neg, 1), 0, 255)
        sketch = 255 - (255 - sketch) * float(rng.uniform(1.0, 1.6))  # darker strokes
        return as_rgb3(np.clip(sketch, 0, 255).astype(np.uint8)), {"style": "pencil sketch",
                                                                  "sigma": round(sigma, 2)}


@register
class Cartoon(StyleSynth):
    name = "cartoon"
    subtasks = ("cartoon",)
    algorithm = "k-means colour quantisation + bilateral filter + adaptive-threshold edges"

    def stylize(self, rgb, rng):
        k = int(rng.integers(6, 12))
        smooth = rgb
        for _ in range(2):
            smooth = cv2.bilateralFilter(smooth, 9, 75, 75)
        data = smooth.reshape(-1, 3).astype(np.float32)
        sample = data[rng.choice(len(data), size=min(len(data), 4000), replace=False)]
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 15, 1.0)
        cv2.setRNGSeed(int(rng.integers(1 << 30)))
        _, _, centers = cv2.kmeans(sample, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
        d = ((data[:, None, :] - centers[None]) ** 2).sum(-1)
        quant = centers[d.argmin(1)].reshape(rgb.shape).astype(np.uint8)
        edges = cv2.adaptiveThreshold(cv2.medianBlur(gray_of(rgb), 7), 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                      cv2.THRESH_BINARY, 9, 4)
        out = np.where(edges[:, :, None] > 0, quant, 0).astype(np.uint8)
        return out, {"style": "cartoon", "colours": k}


def _grade(rgb: np.ndarray, look: str, strength: float) -> np.ndarray:
    f = rgb.astype(np.float32) / 255.0
    if look == "warm":
        g = f * np.array([1.12, 1.03, 0.85])
    elif look == "cool":
        g = f * np.array([0.85, 0.98, 1.15])
    elif look == "sepia":
        m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
        g = f @ m.T
    elif look == "vintage":
        g = 0.12 + 0.78 * f * np.array([1.05, 1.0, 0.85])
        h, w = f.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
        g = g * np.clip(1.15 - 0.35 * r, 0.5, 1.0)[:, :, None]
    elif look == "teal_orange":
        lum = f.mean(2, keepdims=True)
        g = f + (lum - 0.5) * np.array([0.25, 0.05, -0.25]) * 2 + (0.5 - lum) * np.array([-0.15, 0.05, 0.2])
    elif look == "high_contrast":
        g = np.clip((f - 0.5) * 1.6 + 0.5, 0, 1)
    elif look == "faded":
        g = 0.2 + 0.65 * f
    else:
        raise ValueError(look)
    out = (1 - strength) * f + strength * np.clip(g, 0, 1)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


LOOKS = ("warm", "cool", "sepia", "vintage", "teal_orange", "high_contrast", "faded")


@register
class ColorGrading(StyleSynth):
    name = "color_grading"
    subtasks = ("color_grading",)
    algorithm = "per-pixel colour transforms (named looks)"

    def stylize(self, rgb, rng):
        look = str(rng.choice(LOOKS))
        strength = float(rng.uniform(0.7, 1.0))
        return _grade(rgb, look, strength), {"look": look, "strength": round(strength, 3)}
