"""Filters reject unchanged, fully-changed, misaligned and blank pairs, with reason codes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from acedata.synth.base import Draft, Img, mask_img, new_img
from acedata.synth.support.filters import Band, FilterConfig, check


@pytest.fixture(scope="module")
def photo() -> Img:
    from skimage import data

    return Img(Image.fromarray(data.astronaut()).resize((128, 128)), "image", "a" * 64)


def _other() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((128, 128)))


@pytest.mark.parametrize("task", ["semantic_editing", "element_editing", "low_level", "repainting", "layer_editing"])
def test_unchanged_pair_is_rejected(photo, task):
    d = Draft(task, "x", photo, new_img(photo.array().copy()))
    v = check(d)
    assert not v.ok and v.reason == "unchanged", v


def test_fully_changed_semantic_edit_is_rejected(photo):
    d = Draft("semantic_editing", "watercolor", photo, new_img(_other()))
    v = check(d)
    assert not v.ok and v.reason == "fully_changed" and v.scores["edge_corr"] < 0.2


def test_fully_changed_repaint_is_rejected(photo):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3)).astype(np.uint8)
    d = Draft("repainting", "inpainting", new_img(noise), photo, mask=mask_img(np.ones((128, 128), np.uint8)))
    v = check(d)
    assert not v.ok and v.reason == "fully_changed"


def test_a_real_style_edit_passes(photo):
    from acedata.synth.families.semantic import _grade

    v = check(Draft("semantic_editing", "color_grading", photo, new_img(_grade(photo.array(), "sepia", 1.0))))
    assert v.ok and v.scores["changed"] > 0.5 and v.scores["edge_corr"] > 0.5


def test_mask_must_cover_every_change(photo):
    m = np.zeros((128, 128), np.uint8)
    m[8:32, 8:32] = m[60:90, 60:90] = 1
    a = photo.array().copy()
    a[m > 0] = 128  # a repainting source: the masked region filled with mid-gray
    only = m.copy()
    only[:40, :40] = 0  # this mask misses the change at the top left
    fill = {"fill": 128}
    v = check(Draft("repainting", "inpainting", new_img(a), photo, mask=mask_img(only), params=fill))
    assert not v.ok and v.reason == "mask_misaligned"
    assert check(Draft("repainting", "inpainting", new_img(a), photo, mask=mask_img(m), params=fill)).ok


def test_mask_must_be_binary_and_sized(photo):
    soft = Img(Image.fromarray(np.full((128, 128), 100, np.uint8), "L"), "mask")
    assert check(Draft("repainting", "inpainting", photo, photo, mask=soft)).reason == "mask_not_binary"
    small = mask_img(np.ones((64, 64), np.uint8))
    assert check(Draft("repainting", "inpainting", photo, photo, mask=small)).reason == "size_mismatch"


def test_blank_condition_map_is_rejected(photo):
    blank = new_img(np.zeros((128, 128, 3), np.uint8), "condition")
    assert check(Draft("low_level", "canny", photo, blank)).reason == "empty_condition"


def test_bands_are_configurable(photo):
    from acedata.synth.families.semantic import _grade

    d = Draft("semantic_editing", "color_grading", photo, new_img(_grade(photo.array(), "warm", 1.0)))
    assert check(d).ok
    strict = FilterConfig(bands={"semantic_editing/color_grading": Band(ssim_max=0.5)})
    v = check(d, strict)
    assert not v.ok and v.reason == "near_duplicate"


def test_fast_ssim_matches_scikit_image(photo):
    from skimage.metrics import structural_similarity

    from acedata.synth.families.semantic import _grade
    from acedata.synth.support.filters import ssim_gray

    a = np.asarray(photo.pil.convert("L"))
    for b in (np.asarray(Image.fromarray(_grade(photo.array(), "vintage", 1.0)).convert("L")),
              np.asarray(Image.fromarray(_other()).convert("L")), a):
        assert ssim_gray(a, b) == pytest.approx(structural_similarity(a, b, data_range=255), abs=2e-3)


def test_flat_colour_maps_count_as_blank(photo):
    from acedata.synth import load_all

    registry = load_all()
    flat = Img(Image.new("RGB", (64, 48), (120, 30, 200)), "image", "f" * 64)
    for name in ("contour", "canny", "sketch", "doodle"):
        for d in registry[name]().make(flat, np.random.default_rng(0)):
            assert check(d).reason == "empty_condition", name


def test_pixel_metrics_do_not_depend_on_memory_layout():
    """The same pixels score the same wherever their arrays sit in memory (cv2.magnitude's SIMD
    path did not: edge_corr moved by one float32 step with the allocation, a flaky digest)."""
    import cv2
    from skimage import data

    from acedata.synth.support.filters import pixel_metrics

    a = cv2.resize(data.astronaut(), (301, 233))
    b = cv2.GaussianBlur(a, (0, 0), 3)
    seen: dict[str, set[float]] = {}
    rng = np.random.default_rng(0)
    spacers = []
    for _ in range(200):
        spacers.append(np.empty(int(rng.integers(1, 5000)), np.uint8))  # moves later allocations around
        aa, bb = np.empty_like(a), np.empty_like(b)
        aa[:], bb[:] = a, b
        for k, v in pixel_metrics(aa, bb, 8).items():
            seen.setdefault(k, set()).add(v)
    assert {k: len(v) for k, v in seen.items()} == {k: 1 for k in seen}
