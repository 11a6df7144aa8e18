"""Weight-free region masks: superpixel / graph segments and a GrabCut subject mask.

Segmentation runs on a copy at most `WORK_SIDE` pixels on its long side (the label map is
scaled back with nearest neighbour), which keeps it fast at training resolutions.
`acedata.synth.support.model_masks.MaskSource` lets a synthesizer take its object masks from a
model instead (`mask_source: model`).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

WORK_SIDE = 320
GRABCUT_SIDE = 192  # GrabCut's cost grows fast with size; the mask is upscaled


def _work_copy(rgb: np.ndarray, side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return rgb, 1.0
    return cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA), s


def _full_size(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if labels.shape[:2] == shape[:2]:
        return labels
    return cv2.resize(labels.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def slic_labels(rgb: np.ndarray, n_segments: int) -> tuple[np.ndarray, dict[str, Any]]:
    from skimage.segmentation import slic

    small, _ = _work_copy(rgb)
    labels = slic(small, n_segments=n_segments, compactness=10, start_label=0)
    return _full_size(labels, rgb.shape), {"method": "slic", "n_segments": n_segments}


def felzenszwalb_labels(rgb: np.ndarray, scale: float) -> tuple[np.ndarray, dict[str, Any]]:
    from skimage.segmentation import felzenszwalb

    small, _ = _work_copy(rgb)
    labels = felzenszwalb(small, scale=scale, sigma=0.8, min_size=max(20, small.size // 3 // 400))
    return _full_size(labels, rgb.shape), {"method": "felzenszwalb", "scale": round(scale, 1)}


def segment_mask(
    rgb: np.ndarray, rng: np.random.Generator, min_frac: float = 0.02, max_frac: float = 0.25
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """One Felzenszwalb segment whose area lies in [min_frac, max_frac], preferring compact
    segments away from the border (object-like). None when no segment fits."""
    labels, params = felzenszwalb_labels(rgb, float(rng.uniform(300, 900)))
    h, w = labels.shape
    counts = np.bincount(labels.ravel())
    frac = counts / labels.size
    border = np.zeros(len(counts), np.int64)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border += np.bincount(edge, minlength=len(counts))
    candidates = [i for i in np.flatnonzero((frac >= min_frac) & (frac <= max_frac))
                  if border[i] < 0.25 * (2 * (h + w)) * frac[i] ** 0.5]
    if not candidates:
        return None
    pick = int(rng.choice(candidates))
    mask = (labels == pick).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    return mask, {**params, "segment_frac": round(float(mask.mean()), 4)}


def subject_mask(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The main subject by GrabCut initialised with a central box; the largest component kept.

    None when GrabCut finds no plausible subject (area outside 3%..75% of the image)."""
    small, s = _work_copy(rgb, GRABCUT_SIDE)
    h, w = small.shape[:2]
    mx, my = rng.uniform(0.06, 0.18, size=2)
    rect = (int(w * mx), int(h * my), int(w * (1 - 2 * mx)), int(h * (1 - 2 * my)))
    gc = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(int(rng.integers(1 << 30)))
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), gc, rect, bgd, fgd, 3, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return None
    fg = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n < 2:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fg = (labels == biggest).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    frac = float(fg.mean())
    if not 0.03 <= frac <= 0.75:
        return None
    if s != 1.0:
        fg = cv2.resize(fg, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    return fg, {"method": "grabcut", "rect_margin": [round(float(mx), 3), round(float(my), 3)],
                "subject_frac": round(frac, 4)}


def object_mask(rgb: np.ndarray, rng: np.random.Generator, max_frac: float = 0.6) -> tuple[np.ndarray, dict]:
    """A subject mask, else a segment, else a central ellipse (always returns a mask)."""
    found = subject_mask(rgb, rng)
    if found is not None and found[0].mean() <= max_frac:
        return found
    found = segment_mask(rgb, rng, 0.03, min(max_frac, 0.3))
    if found is not None:
        return found
    h, w = rgb.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 5, h // 4), 0, 0, 360, 1, -1)
    return mask, {"method": "ellipse"}
