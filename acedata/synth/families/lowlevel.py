"""Low-level visual analysis (image -> condition map) and controllable generation (the inverse).

Every synthesizer here computes one condition map with a classical algorithm and emits
two pairs over the same pixels: `low_level/<subtask>` (source = photo, target = map) and
`controllable/<subtask>` (source = map, target = photo). The subtask names the condition
in both directions (for grayscale, mosaic and degradation the controllable direction is
colourisation, de-mosaicking and restoration). Maps keep the photo's size, so pairs are
pixel-aligned.
"""

from __future__ import annotations

import cv2
import numpy as np

from acedata.synth.base import register
from acedata.synth.support.conditions import ConditionSynth
from acedata.synth.support.masks import felzenszwalb_labels, slic_labels
from acedata.synth.support.pixels import as_rgb3, canny_map, gray_map, gray_of, palette, pixelate


@register
class Canny(ConditionSynth):
    name = "canny"
    subtasks = ("canny",)
    algorithm = "opencv Canny, thresholds from the median intensity"

    def condition(self, rgb, rng):
        med = float(np.median(cv2.GaussianBlur(gray_of(rgb), (5, 5), 0)))
        spread = float(rng.uniform(0.25, 0.45))
        lo, hi = int(max(10, (1 - spread) * med)), int(min(255, max(40, (1 + spread) * med)))
        return canny_map(rgb, lo, hi), {"low": lo, "high": hi}


@register
class Grayscale(ConditionSynth):
    name = "grayscale"
    subtasks = ("grayscale",)
    algorithm = "opencv RGB2GRAY (ITU-R 601 luma)"

    def condition(self, rgb, rng):
        return gray_map(rgb), {}


@register
class Mosaic(ConditionSynth):
    name = "mosaic"
    subtasks = ("mosaic",)
    algorithm = "area downscale + nearest upscale (pixelate)"

    def condition(self, rgb, rng):
        block = int(max(4, round(min(rgb.shape[:2]) / rng.uniform(16, 40))))
        return pixelate(rgb, block), {"block": block}


@register
class Degrade(ConditionSynth):
    """A Real-ESRGAN-style first-order degradation: blur, downscale, noise, JPEG, back to size."""

    name = "degradation"
    subtasks = ("degradation",)
    algorithm = "Real-ESRGAN-style chain: gaussian blur, random resize, gaussian/poisson noise, JPEG"

    def condition(self, rgb, rng):
        h, w = rgb.shape[:2]
        sigma_x, sigma_y = rng.uniform(0.4, 2.5, size=2)
        img = cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(sigma_x), sigmaY=float(sigma_y))
        scale = float(rng.uniform(0.25, 0.6))
        interp = [cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC][int(rng.integers(3))]
        img = cv2.resize(img, (max(8, int(w * scale)), max(8, int(h * scale))), interpolation=interp)
        f = img.astype(np.float32)
        if rng.random() < 0.6:
            noise_kind, level = "gaussian", float(rng.uniform(3, 20))
            f = f + rng.normal(0, level, size=f.shape).astype(np.float32)
        else:
            noise_kind, level = "poisson", float(rng.uniform(0.05, 0.3))
            vals = 10 ** rng.uniform(1.5, 2.5)
            f = f + (rng.poisson(np.clip(f, 0, 255) / 255 * vals) / vals * 255 - f) * level * 4
        img = np.clip(f, 0, 255).astype(np.uint8)
        quality = int(rng.integers(25, 80))
        _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        params = {"blur_sigma": [round(float(sigma_x), 2), round(float(sigma_y), 2)], "scale": round(scale, 3),
                  "noise": noise_kind, "noise_level": round(level, 3), "jpeg_quality": quality}
        return img, params


@register
class Sketch(ConditionSynth):
    """XDoG (Winnemoeller et al. 2012) line drawing: D = G(sigma) - tau * G(k * sigma) is ~0 on
    flat areas (white) and negative along edges (soft black lines via 1 + tanh(phi * D))."""

    name = "sketch"
    subtasks = ("sketch",)
    algorithm = "XDoG"

    def condition(self, rgb, rng):
        g = gray_of(rgb).astype(np.float32) / 255.0
        sigma = float(rng.uniform(0.7, 1.4)) * max(1.0, max(g.shape) / 512)
        k, tau = 1.6, float(rng.uniform(0.975, 0.99))
        d = cv2.GaussianBlur(g, (0, 0), sigma) - tau * cv2.GaussianBlur(g, (0, 0), sigma * k)
        eps, phi = 0.0, float(rng.uniform(80, 200))
        out = np.where(d >= eps, 1.0, 1.0 + np.tanh(phi * (d - eps)))
        out = (np.clip(out, 0, 1) * 255).astype(np.uint8)
        return as_rgb3(out), {"sigma": round(sigma, 3), "tau": round(tau, 4), "phi": round(phi, 1)}


@register
class Contour(ConditionSynth):
    """Iso-luminance contour drawing: boundaries of quantised, edge-preserving-smoothed luminance."""

    name = "contour"
    subtasks = ("contour",)
    algorithm = "bilateral smoothing + luminance quantisation + findContours"

    def condition(self, rgb, rng):
        gray = gray_of(cv2.bilateralFilter(rgb, 9, 60, 7))
        levels = int(rng.integers(4, 9))
        q = (gray.astype(np.int32) * levels // 256).astype(np.uint8)
        out = np.full(gray.shape, 255, np.uint8)
        for lv in range(1, levels):
            region = (q >= lv).astype(np.uint8)
            if region.all() or not region.any():  # no boundary at this level (else the frame is traced)
                continue
            contours, _ = cv2.findContours(region, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            contours = [c for c in contours if len(c) >= 12]  # drop specks
            cv2.drawContours(out, contours, -1, 0, 1)
        return as_rgb3(out), {"levels": levels}


@register
class Scribble(ConditionSynth):
    """Scribble: thick white strokes along the long edges of a heavily smoothed image."""

    name = "scribble"
    subtasks = ("scribble",)
    algorithm = "canny on smoothed image, long components kept, dilated strokes"

    def condition(self, rgb, rng):
        h, w = rgb.shape[:2]
        gray = cv2.GaussianBlur(gray_of(rgb), (0, 0), max(1.5, min(h, w) / 160))
        med = float(np.median(gray))
        edges = cv2.Canny(gray, int(max(10, 0.5 * med)), int(min(255, max(30, 1.2 * med))))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(edges, connectivity=8)
        min_len = max(10, min(h, w) // 25)
        keep = np.zeros(n, bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_len
        strokes = np.where(keep[labels], 255, 0).astype(np.uint8)
        width = int(rng.integers(2, 5)) if min(h, w) >= 256 else 2
        strokes = cv2.dilate(strokes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
        return as_rgb3(strokes), {"stroke": width, "min_length": min_len}


@register
class Doodle(ConditionSynth):
    """Soft edges (what PiDiNet produces) from smoothed Sobel gradient magnitude, white on black."""

    name = "doodle"
    subtasks = ("doodle",)
    algorithm = "Sobel soft-edge map (weight-free PiDiNet-style output)"

    def condition(self, rgb, rng):
        gray = cv2.GaussianBlur(gray_of(rgb), (0, 0), float(rng.uniform(1.0, 2.0))).astype(np.float32)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.sqrt(gx * gx + gy * gy)
        top = float(np.percentile(mag, 99)) or 1.0
        gamma = float(rng.uniform(0.6, 0.9))
        soft = np.clip(mag / top, 0, 1) ** gamma
        soft[soft < 0.15] = 0  # PiDiNet-like maps are clean away from edges
        return as_rgb3((soft * 255).astype(np.uint8)), {"gamma": round(gamma, 3)}


@register
class Segmentation(ConditionSynth):
    """A segmentation colour map from SLIC superpixels or Felzenszwalb's graph segmentation."""

    name = "segmentation"
    subtasks = ("segmentation",)
    algorithm = "scikit-image SLIC / felzenszwalb"

    def condition(self, rgb, rng):
        if rng.random() < 0.5:
            labels, params = slic_labels(rgb, int(rng.integers(24, 80)))
        else:
            labels, params = felzenszwalb_labels(rgb, float(rng.uniform(200, 600)))
        colours = palette(int(labels.max()) + 1)
        return colours[labels], params
