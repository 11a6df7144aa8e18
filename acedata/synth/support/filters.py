"""Quality filters for synthesized pairs, per task family.

Pixel checks need no model: sizes aligned, masks binary and covering every change,
change detection (an unchanged pair and a fully-changed pair are both rejected), L1 and
SSIM bands, condition maps that are not blank, and outputs defined by their inputs equal to
that definition (`definitions`). CLIP/SigLIP image and directional
similarity (DESIGN.md §5 thresholds) run in `clip_filter` when a model is configured.
Every reject has a short reason code for the quarantine table.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import Field

from acedata.codecs import is_binary
from acedata.config import Strict
from acedata.synth.base import Draft, Img
from acedata.synth.support.definitions import verify
from acedata.synth.support.pixels import count_over, mean_std, over

ALIGNED_TASKS = {"low_level", "controllable", "repainting", "element_editing", "semantic_editing", "layer_editing"}
MASKED_TASKS = {"repainting", "element_editing"}  # the mask must cover every changed pixel
METRIC_SIDE = 256  # SSIM / L1 / change are measured at most at this long side (see metric_size)


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


def metric_size(h: int, w: int, side: int = METRIC_SIDE) -> tuple[int, int]:
    """(width, height) the metrics are measured at: the image shrunk by the smallest whole factor
    that brings its long side to at most `side` (so between side/2 and side), its edges cropped to
    a multiple of that factor. A whole factor lets OpenCV's area resize average exact f x f blocks,
    ~15x faster than its general path at a fractional ratio (which was most of the filters' time)."""
    f = max(1, -(-max(h, w) // side))
    return max(8, w // f), max(8, h // f)


def _small(a: np.ndarray, side: int = METRIC_SIDE, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = a.shape[:2]
    size = size or metric_size(h, w, side)
    if (w, h) == size:
        return a
    fx, fy = w // size[0], h // size[1]
    if fx == fy and fx >= 1 and w - fx * size[0] < fx and h - fy * size[1] < fy:
        a = a[: fy * size[1], : fx * size[0]]  # the whole-factor crop: exact block averages
    return cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_AREA)


def _rgb(img: Img) -> np.ndarray:
    return img.as_mode("RGB")


def ssim_gray(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean SSIM of two uint8 gray images with a uniform win x win window and sample covariance
    (scikit-image's defaults, K1 = 0.01, K2 = 0.03), on OpenCV box filters for speed."""
    return _ssim(_Features.of_gray(a, win), _Features.of_gray(b, win), win)


@dataclass
class _Features:
    """What the pair metrics need from one image at the metric size, computed once per image:
    a photo judged against the outputs of every synthesizer it gets is downscaled, converted and
    filtered once, not once per pair."""

    rgb: np.ndarray | None  # uint8, metric size
    gray: np.ndarray  # uint8
    mean: np.ndarray  # box mean of gray (SSIM)
    lum: np.ndarray  # mean^2 + C1/2: the image's half of SSIM's luminance denominator
    var: np.ndarray  # sample variance + C2/2: its half of the contrast denominator
    mag: np.ndarray  # Sobel gradient magnitude, centred, flat, float32 (edge correlation)
    mag_norm: float

    @classmethod
    def of_gray(cls, g: np.ndarray, win: int, rgb: np.ndarray | None = None) -> _Features:
        blurred = cv2.GaussianBlur(g, (0, 0), 1.0)
        gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
        # Exact in float32: Sobel of uint8 pixels gives integers |g| <= 1020, so gx^2 + gy^2 stays
        # below 2^24 whatever the order of operations; numpy's correctly rounded square root, not
        # cv2.magnitude (its SIMD path rounds differently with the arrays' memory alignment).
        sq = cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy))
        mag = np.sqrt(sq, out=sq).ravel()
        mag -= np.float32(mag.mean(dtype=np.float64))
        # Sums in float64 by numpy's pairwise reduction, not BLAS dot: BLAS picks its summation
        # order by the arrays' memory alignment, so the same pixels could score differently.
        n = win * win
        norm = np.float32(n / (n - 1))
        # box means of the uint8 pixels and of their squares straight to float32 (no float copy)
        mean = cv2.boxFilter(g, cv2.CV_32F, (win, win), borderType=cv2.BORDER_REFLECT)
        lum = cv2.multiply(mean, mean)
        var = cv2.sqrBoxFilter(g, cv2.CV_32F, (win, win), borderType=cv2.BORDER_REFLECT)
        var -= lum
        var *= norm
        var += np.float32(C2 / 2)
        lum += np.float32(C1 / 2)
        return cls(rgb, g, mean, lum, var, mag, float(np.sum(np.square(mag), dtype=np.float64)))


C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # SSIM's stabilisers (K1 = 0.01, K2 = 0.03)


def _box(z: np.ndarray, win: int) -> np.ndarray:
    return cv2.blur(z, (win, win), borderType=cv2.BORDER_REFLECT)


def _ssim(a: _Features, b: _Features, win: int) -> float:
    """((2 ux uy + C1)(2 vxy + C2)) / ((ux^2 + uy^2 + C1)(vx + vy + C2)) in float32, each image's
    terms precomputed once (`_Features`); elementwise OpenCV add/multiply (exact IEEE operations
    whatever the path) and in-place numpy, to keep temporaries few."""
    n = win * win
    uxy = cv2.multiply(a.mean, b.mean)
    vxy = _box(cv2.multiply(a.gray, b.gray, dtype=cv2.CV_32F), win)  # products of uint8: exact
    vxy -= uxy
    vxy *= np.float32(2 * n / (n - 1))
    vxy += np.float32(C2)
    uxy *= np.float32(2)
    uxy += np.float32(C1)
    num = cv2.multiply(uxy, vxy, dst=uxy)
    den = cv2.multiply(cv2.add(a.lum, b.lum), cv2.add(a.var, b.var))
    s = np.divide(num, den, out=num)
    pad = (win - 1) // 2
    return float((s[pad:-pad, pad:-pad] if pad else s).mean(dtype=np.float64))


def _edge_corr(a: _Features, b: _Features) -> float:
    """Pearson correlation of Sobel gradient magnitudes: high when the layout is kept,
    whatever the rendering (a pencil sketch keeps it, an unrelated image does not)."""
    den = float(np.sqrt(a.mag_norm * b.mag_norm))
    return float(np.sum(a.mag * b.mag, dtype=np.float64)) / den if den > 1e-6 else 0.0


FEATURES_KEPT = 24  # images whose features stay cached (a photo's synthesizers run one after another)


def _features(img: Img | np.ndarray, size: tuple[int, int] | None, cache: dict | None) -> _Features:
    """Features of an image (Img: cached per image id and size) at `size`, or at the metric size."""
    arr = img if isinstance(img, np.ndarray) else _rgb(img)
    size = size or metric_size(*arr.shape[:2])
    key = None if isinstance(img, np.ndarray) or cache is None else (img.id, size)
    kept = cache.setdefault("_features", OrderedDict()) if key is not None else None
    if kept is not None and key in kept:
        kept.move_to_end(key)
        return kept[key]
    small = _small(arr, size=size)
    win = min(7, min(small.shape[:2]) // 2 * 2 - 1)
    f = _Features.of_gray(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), win, small)
    if kept is not None:
        kept[key] = f
        while len(kept) > FEATURES_KEPT:
            kept.popitem(last=False)
    return f


def pixel_metrics(src: Img | np.ndarray, tgt: Img | np.ndarray, tol: int, cache: dict | None = None) -> dict[str, float]:
    """changed fraction, L1, SSIM and edge correlation of two RGB images (Img or arrays), measured
    at a common small size (the source's)."""
    a = _features(src, None, cache)
    size = (a.rgb.shape[1], a.rgb.shape[0])
    b = _features(tgt, size, cache)
    diff = cv2.absdiff(a.rgb, b.rgb)
    win = min(7, min(a.gray.shape) // 2 * 2 - 1)
    changed = count_over(diff, tol) / (diff.shape[0] * diff.shape[1])
    # cv2.mean: the per-channel means meanStdDev gives (the same exact integer sums), ~7x faster
    l1 = np.mean(cv2.mean(diff)[: diff.shape[2] if diff.ndim == 3 else 1]) / 255.0
    return {"changed": float(changed), "l1": float(l1),
            "ssim": _ssim(a, b, win), "edge_corr": _edge_corr(a, b)}


def _condition_std(im: Img, cache: dict | None) -> float:
    """Spatial spread of a condition map (one flat colour is blank); a map is measured once per unit,
    on its pixels at the metric size (those of its features, which the pair metrics use next)."""
    key = ("condition_std", im.id)
    if cache is not None and key in cache:
        return cache[key]
    std = float(mean_std(_features(im, None, cache).rgb)[1].max())
    if cache is not None:
        cache[key] = std
    return std


def check(draft: Draft, cfg: FilterConfig | None = None, cache: dict | None = None) -> Verdict:
    """Judge one draft. `cache` (a dict the caller keeps per unit) reuses what a condition pair
    and its inverse share: the symmetric pixel metrics, the map's spread, the definition check."""
    cfg = cfg or FilterConfig()
    src, tgt = _rgb(draft.source), _rgb(draft.target)
    scores: dict[str, float] = {}
    if draft.task in ALIGNED_TASKS:
        sizes = {im.pil.size for im in [draft.source, draft.target, *draft.extras] + ([draft.mask] if draft.mask else [])}
        if len(sizes) > 1:
            return Verdict(False, "size_mismatch", f"sizes {sorted(sizes)}")
    if draft.mask is not None:
        m = draft.mask.as_mode("L")
        if not is_binary(m):
            return Verdict(False, "mask_not_binary", f"values {np.unique(m)[:6].tolist()}")
        scores["mask_frac"] = cv2.countNonZero(m) / m.size
        if scores["mask_frac"] == 0:
            return Verdict(False, "empty_mask", "mask selects no pixel", scores)
        if draft.task in MASKED_TASKS:
            grown = cv2.dilate(m, np.ones((3, 3), np.uint8))
            changed = over(cv2.absdiff(src, tgt), cfg.pixel_tol)
            # changed pixels where the grown mask (0/255: the mask is binary) is 0
            leak = float(cv2.countNonZero(cv2.bitwise_and(changed, cv2.bitwise_not(grown))) / m.size)
            scores["mask_leak"] = leak
            if leak > cfg.mask_leak_max:
                return Verdict(False, "mask_misaligned", f"{leak:.4f} of pixels changed outside the mask", scores)
    for role, im in (("source", draft.source), ("target", draft.target)):
        if im.kind == "condition":
            std = _condition_std(im, cache)
            scores["condition_std"] = std
            if std < cfg.condition_min_std:
                return Verdict(False, "empty_condition", f"{role} condition map is blank (std {std:.2f})", scores)
    key = (min(draft.source.id, draft.target.id), max(draft.source.id, draft.target.id), cfg.pixel_tol)
    metrics = cache.get(key) if cache is not None else None
    if metrics is None:
        metrics = pixel_metrics(draft.source, draft.target, cfg.pixel_tol, cache)
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
    broken = verify(draft, cfg.definition_mean_tol, cfg.definition_tol, cfg.definition_max_mismatch, cache)
    if broken is not None:
        return Verdict(False, *broken, scores)
    return Verdict(True, scores=scores)
