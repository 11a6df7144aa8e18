"""Quality filters for synthesized pairs, per task family.

Pixel checks need no model: sizes aligned, masks binary and covering every change,
change detection (an unchanged pair and a fully-changed pair are both rejected), L1 and
SSIM bands, condition maps that are not blank, and outputs defined by their inputs equal to
that definition (`definitions`). CLIP/SigLIP image and directional
similarity (DESIGN.md §5 thresholds) run in `clip_filter` when a model is configured.
Every reject has a short reason code for the quarantine table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import Field

from acedata.config import Strict
from acedata.synth.base import Draft, Img
from acedata.synth.support.definitions import verify

ALIGNED_TASKS = {"low_level", "controllable", "repainting", "element_editing", "semantic_editing", "layer_editing"}
MASKED_TASKS = {"repainting", "element_editing"}  # the mask must cover every changed pixel
METRIC_SIDE = 256  # SSIM / L1 / change are measured at this long side


class Band(Strict):
    """Bounds for one task family; None = no bound."""

    changed_min: float | None = 0.01  # fraction of pixels that changed by more than pixel_tol
    changed_max: float | None = None
    l1_min: float | None = None  # mean |source - target| in [0, 1]
    l1_max: float | None = None
    ssim_min: float | None = None  # below: fully changed (structure lost)
    ssim_max: float | None = None  # above: near-duplicate
    edge_corr_min: float | None = None  # correlation of gradient maps; below: layout lost


DEFAULT_BANDS: dict[str, Band] = {
    "low_level": Band(changed_min=0.01),
    "semantic_editing/facial_attribute": Band(changed_min=0.003, edge_corr_min=0.2),  # a face is a small region
    "controllable": Band(changed_min=0.01),
    "repainting": Band(changed_min=0.005, changed_max=0.9),
    "element_editing": Band(changed_min=0.003, changed_max=0.5, ssim_max=0.995),
    "semantic_editing": Band(changed_min=0.05, l1_min=0.015, edge_corr_min=0.2),
    "layer_editing": Band(changed_min=0.01),
    "reference_generation": Band(changed_min=0.01, ssim_max=0.99),
    # a pencil sketch re-renders texture as strokes: its gradients follow the photo less closely
    "semantic_editing/pencil_sketch": Band(changed_min=0.05, l1_min=0.015, edge_corr_min=0.1),
    "semantic_editing/cartoon": Band(changed_min=0.05, l1_min=0.015, edge_corr_min=0.12),
}


class FilterConfig(Strict):
    pixel_tol: int = 8  # |difference| (0..255, any channel) above which a pixel counts as changed
    mask_leak_max: float = 0.002  # changed pixels outside the (slightly dilated) mask, as a fraction
    condition_min_std: float = 2.0  # a condition map flatter than this is blank
    # outputs defined by their inputs (grayscale, mosaic, canny, repainting source, layers) against the
    # recomputed definition: mean |difference| at most `mean_tol`, and at most `max_mismatch` of the
    # pixels further than `tol` (a JPEG round trip at quality 90 stays well inside both)
    definition_mean_tol: float = Field(6.0, ge=0)
    definition_tol: int = Field(32, ge=0, le=255)
    definition_max_mismatch: float = Field(0.01, ge=0, le=1)
    # overrides of DEFAULT_BANDS, keyed "task" or "task/subtask" (the more specific wins)
    bands: dict[str, Band] = Field(default_factory=dict)

    def band(self, task: str, subtask: str = "") -> Band:
        for key in (f"{task}/{subtask}", task):
            for table in (self.bands, DEFAULT_BANDS):
                if key in table:
                    return table[key]
        return Band()


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)


def _small(a: np.ndarray, side: int = METRIC_SIDE, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = a.shape[:2]
    if size is None:
        s = min(1.0, side / max(h, w))
        size = (max(8, round(w * s)), max(8, round(h * s)))
    if (w, h) == size:
        return a
    return cv2.resize(a, size, interpolation=cv2.INTER_AREA)


def _rgb(img: Img) -> np.ndarray:
    return np.asarray(img.pil.convert("RGB"))


def ssim_gray(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean SSIM of two uint8 gray images with a uniform win x win window and sample covariance
    (scikit-image's defaults, K1 = 0.01, K2 = 0.03), on OpenCV box filters for speed."""
    x, y = a.astype(np.float32), b.astype(np.float32)
    n = win * win
    norm = n / (n - 1)

    def mean(z: np.ndarray) -> np.ndarray:
        return cv2.blur(z, (win, win), borderType=cv2.BORDER_REFLECT)

    ux, uy = mean(x), mean(y)
    vx, vy = norm * (mean(x * x) - ux * ux), norm * (mean(y * y) - uy * uy)
    vxy = norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].astype(np.float64).mean()) if pad else float(s.mean())


def pixel_metrics(src: np.ndarray, tgt: np.ndarray, tol: int) -> dict[str, float]:
    """changed fraction, L1, SSIM and edge correlation of two RGB arrays, measured at a
    common small size."""
    a = _small(src)
    b = _small(tgt, size=(a.shape[1], a.shape[0]))
    diff = cv2.absdiff(a, b)
    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    win = min(7, min(ga.shape) // 2 * 2 - 1)
    return {"changed": float((diff.max(2) > tol).mean()), "l1": float(diff.mean() / 255.0),
            "ssim": ssim_gray(ga, gb, win), "edge_corr": _edge_corr(ga, gb)}


def _edge_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of Sobel gradient magnitudes: high when the layout is kept,
    whatever the rendering (a pencil sketch keeps it, an unrelated image does not)."""

    def mag(g: np.ndarray) -> np.ndarray:
        g = cv2.GaussianBlur(g, (0, 0), 1.0).astype(np.float32)
        return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)).ravel()

    ma, mb = mag(a), mag(b)
    ma, mb = ma - ma.mean(), mb - mb.mean()
    den = float(np.sqrt(np.dot(ma, ma) * np.dot(mb, mb)))
    return float(np.dot(ma, mb)) / den if den > 1e-6 else 0.0


def check(draft: Draft, cfg: FilterConfig | None = None, cache: dict | None = None) -> Verdict:
    """Judge one draft. `cache` (a dict the caller keeps per unit) reuses the symmetric pixel
    metrics of an image pair, e.g. for a condition pair and its inverse."""
    cfg = cfg or FilterConfig()
    src, tgt = _rgb(draft.source), _rgb(draft.target)
    scores: dict[str, float] = {}
    if draft.task in ALIGNED_TASKS:
        sizes = {im.pil.size for im in [draft.source, draft.target, *draft.extras] + ([draft.mask] if draft.mask else [])}
        if len(sizes) > 1:
            return Verdict(False, "size_mismatch", f"sizes {sorted(sizes)}")
    if draft.mask is not None:
        m = np.asarray(draft.mask.pil.convert("L"))
        if not np.isin(m, (0, 255)).all():
            return Verdict(False, "mask_not_binary", f"values {np.unique(m)[:6].tolist()}")
        scores["mask_frac"] = float((m > 0).mean())
        if scores["mask_frac"] == 0:
            return Verdict(False, "empty_mask", "mask selects no pixel", scores)
        if draft.task in MASKED_TASKS:
            grown = cv2.dilate(m, np.ones((3, 3), np.uint8))
            changed = np.abs(src.astype(np.int16) - tgt.astype(np.int16)).max(2) > cfg.pixel_tol
            leak = float((changed & (grown == 0)).mean())
            scores["mask_leak"] = leak
            if leak > cfg.mask_leak_max:
                return Verdict(False, "mask_misaligned", f"{leak:.4f} of pixels changed outside the mask", scores)
    for role, im in (("source", draft.source), ("target", draft.target)):
        if im.kind == "condition":
            std = float(_small(_rgb(im)).reshape(-1, 3).std(0).max())  # spatial spread; one flat colour is blank
            scores["condition_std"] = std
            if std < cfg.condition_min_std:
                return Verdict(False, "empty_condition", f"{role} condition map is blank (std {std:.2f})", scores)
    key = (min(draft.source.id, draft.target.id), max(draft.source.id, draft.target.id), cfg.pixel_tol)
    metrics = cache.get(key) if cache is not None else None
    if metrics is None:
        metrics = pixel_metrics(src, tgt, cfg.pixel_tol)
        if cache is not None:
            cache[key] = metrics
    scores.update(metrics)
    band = cfg.band(draft.task, draft.subtask)
    for key, lo, hi, low_reason, high_reason in (
        ("changed", band.changed_min, band.changed_max, "unchanged", "fully_changed"),
        ("l1", band.l1_min, band.l1_max, "unchanged", "fully_changed"),
        ("ssim", band.ssim_min, band.ssim_max, "fully_changed", "near_duplicate"),
        ("edge_corr", band.edge_corr_min, None, "fully_changed", ""),
    ):
        v = scores[key]
        if lo is not None and v < lo:
            return Verdict(False, low_reason, f"{key} {v:.4f} < {lo}", scores)
        if hi is not None and v > hi:
            return Verdict(False, high_reason, f"{key} {v:.4f} > {hi}", scores)
    broken = verify(draft, cfg.definition_mean_tol, cfg.definition_tol, cfg.definition_max_mismatch)
    if broken is not None:
        return Verdict(False, *broken, scores)
    return Verdict(True, scores=scores)
