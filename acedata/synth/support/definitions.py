"""Pairs whose output is defined by their inputs, checked against that definition.

A grayscale map is the luma of its photo, a mosaic the block average at the stated block size, a
Canny map the edges at the stated thresholds, a repainting source the photo with the mask filled,
a subject layer the photo under its own alpha, and a fused image the alpha composite of its
layers. The filter recomputes the definition from the draft's inputs (and stated parameters)
and compares: the mean difference may be up to `mean_tol` and a pixel may differ by `tol`
(encoding: a JPEG round trip, a colour conversion), at most `max_mismatch` of the pixels by more. Weight-free, so it always runs; a
layer_editing/fuse draft whose target is some other photo of the same size fails here.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from acedata.synth.base import Draft, Img
from acedata.synth.support.pixels import (
    canny_map,
    composite,
    count_over,
    fill_masked,
    gray_map,
    pixelate,
    subject_layer,
)

# (expected, actual) arrays of one shape, or None when the draft lacks what the definition needs
Check = Callable[[Draft], tuple[np.ndarray, np.ndarray] | None]


def _rgb(im: Img) -> np.ndarray:
    return im.as_mode("RGB")


def _rgba(im: Img) -> np.ndarray | None:
    return im.as_mode("RGBA") if im.pil.mode == "RGBA" else None


def _photo_and_map(d: Draft) -> tuple[np.ndarray, np.ndarray]:
    """low_level: photo -> condition map; controllable: the same pair the other way round."""
    photo, cmap = (d.source, d.target) if d.task == "low_level" else (d.target, d.source)
    return _rgb(photo), _rgb(cmap)


def _grayscale(d: Draft):
    photo, cmap = _photo_and_map(d)
    return gray_map(photo), cmap


def _mosaic(d: Draft):
    block = d.params.get("block")
    if not isinstance(block, int) or block < 1:
        return None
    photo, cmap = _photo_and_map(d)
    return pixelate(photo, block), cmap


def _canny(d: Draft):
    low, high = d.params.get("low"), d.params.get("high")
    if not isinstance(low, int) or not isinstance(high, int):
        return None
    photo, cmap = _photo_and_map(d)
    return canny_map(photo, low, high), cmap


def _repaint_source(d: Draft):
    fill = d.params.get("fill")
    if d.mask is None or not isinstance(fill, int):
        return None
    mask = d.mask.as_mode("L")
    return fill_masked(_rgb(d.target), mask, fill), _rgb(d.source)


def _subject_layer(d: Draft):
    layer = _rgba(d.target)
    if layer is None:
        return None
    return subject_layer(_rgb(d.source), layer[:, :, 3]), layer


def _fuse(d: Draft):
    layers = [x for x in (_rgba(e) for e in d.extras) if x is not None]
    if len(layers) != 1:  # one subject layer over the background (the source)
        return None
    return composite(_rgb(d.source), layers[0]), _rgb(d.target)


DEFINITIONS: dict[str, Check] = {
    "low_level/grayscale": _grayscale,
    "controllable/grayscale": _grayscale,
    "low_level/mosaic": _mosaic,
    "controllable/mosaic": _mosaic,
    "low_level/canny": _canny,
    "controllable/canny": _canny,
    "repainting/inpainting": _repaint_source,
    "repainting/outpainting": _repaint_source,
    "layer_editing/decompose_subject": _subject_layer,
    "layer_editing/fuse": _fuse,
}


def _key(d: Draft, check: Check) -> tuple:
    """What a check's result depends on. A condition pair and its inverse (controllable) check the
    same photo against the same map, so they share one key."""
    a, b = (d.target, d.source) if d.task == "controllable" else (d.source, d.target)
    return (check.__name__, a.id, b.id, d.mask.id if d.mask else "", tuple(e.id for e in d.extras),
            repr(sorted(d.params.items())))


def verify(d: Draft, mean_tol: float, tol: int, max_mismatch: float,
           cache: dict | None = None) -> tuple[str, str] | None:
    """(reason, detail) when the draft breaks its family's definition; None when it holds or the
    family has none. A draft missing what its definition needs (a fuse without its layer) fails.
    `cache` (kept by the caller) reuses a result for the inverse pair over the same pixels."""
    check = DEFINITIONS.get(f"{d.task}/{d.subtask}")
    if check is None:
        return None
    key = ("definition", _key(d, check), mean_tol, tol, max_mismatch)
    if cache is None or key not in cache:
        got = _verify(d, check, mean_tol, tol, max_mismatch)
        if cache is not None:
            cache[key] = got
    else:
        got = cache[key]
    # the detail names the draft's own task (the cached result may come from the inverse pair)
    return None if got is None else (got[0], got[1].replace("{task}", f"{d.task}/{d.subtask}"))


def _verify(d: Draft, check: Check, mean_tol: float, tol: int, max_mismatch: float) -> tuple[str, str] | None:
    pair = check(d)
    if pair is None:
        return "definition_unverifiable", f"{d.task}/{d.subtask} lacks the inputs or parameters that define it"
    expected, actual = pair
    if expected is actual:  # the draft holds the definition's own (read-only, memoised) result
        return None
    if expected.shape != actual.shape:
        return "definition_mismatch", f"shape {actual.shape} != defined {expected.shape}"
    diff = cv2.absdiff(np.ascontiguousarray(expected, np.uint8), np.ascontiguousarray(actual, np.uint8))
    channels = diff.shape[2] if diff.ndim == 3 else 1
    mean = float(np.mean(cv2.mean(diff)[:channels]))  # cv2.mean: exact integer sums, no int16 copy
    if mean > mean_tol:
        return "definition_mismatch", f"mean difference {mean:.2f} from the {{task}} definition > {mean_tol}"
    off = count_over(diff, tol) / (diff.shape[0] * diff.shape[1])
    if off > max_mismatch:
        return "definition_mismatch", (f"{off:.4f} of pixels differ by more than {tol} from the "
                                       f"{{task}} definition (max {max_mismatch})")
    return None
