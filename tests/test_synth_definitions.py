"""Outputs defined by their inputs are checked against the definition, with an encoding tolerance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from acedata.synth import REGISTRY, load_all
from acedata.synth.base import Draft, Img, new_img
from acedata.synth.support.filters import FilterConfig, check

load_all()


@pytest.fixture(scope="module")
def photo() -> Img:
    from skimage import data

    return Img(Image.fromarray(data.astronaut()).resize((128, 128)), "image", "a" * 64)


@pytest.fixture(scope="module")
def other() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee()).resize((128, 128))


def _drafts(name: str, photo: Img, seed: int = 0) -> dict[str, Draft]:
    return {f"{d.task}/{d.subtask}": d for d in REGISTRY[name]().make(photo, np.random.default_rng(seed))}


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _with(d: Draft, **changes) -> Draft:
    return Draft(**{**{f: getattr(d, f) for f in ("task", "subtask", "source", "target", "mask", "extras",
                                                   "params", "synthesizer")}, **changes})


@pytest.mark.parametrize("name", ["grayscale", "mosaic", "canny", "layers", "inpaint_box", "outpaint"])
def test_synthesizer_outputs_meet_their_definition(name, photo):
    for key, d in _drafts(name, photo).items():
        v = check(d)
        assert v.ok or v.reason not in ("definition_mismatch", "definition_unverifiable"), (key, v)


def test_fuse_target_that_is_another_photo_is_rejected(photo, other):
    fuse = _drafts("layers", photo)["layer_editing/fuse"]
    assert check(fuse).ok
    v = check(_with(fuse, target=new_img(np.asarray(other))))
    assert not v.ok and v.reason == "definition_mismatch" and "layer_editing/fuse" in v.detail
    # the layer is what defines the fuse: without it the pair cannot be verified
    v = check(_with(fuse, extras=[]))
    assert not v.ok and v.reason == "definition_unverifiable"


def test_encoding_noise_is_tolerated_and_a_small_edit_is_not(photo):
    fuse = _drafts("layers", photo)["layer_editing/fuse"]
    assert check(_with(fuse, target=new_img(_jpeg(fuse.target.pil, 90)))).ok
    edited = fuse.target.array().copy()
    edited[40:70, 40:70] = 255 - edited[40:70, 40:70]  # 5% of the pixels inverted
    v = check(_with(fuse, target=new_img(edited)))
    assert not v.ok and v.reason == "definition_mismatch"
    assert not check(_with(fuse, target=new_img(edited)), FilterConfig(definition_max_mismatch=0.1, definition_mean_tol=20)).reason \
        .startswith("definition")


def test_condition_maps_at_stated_parameters(photo):
    gray = _drafts("grayscale", photo)
    brighter = np.clip(gray["low_level/grayscale"].target.array().astype(int) + 20, 0, 255).astype(np.uint8)
    v = check(_with(gray["low_level/grayscale"], target=new_img(brighter, "condition")))
    assert not v.ok and v.reason == "definition_mismatch"
    # the inverse pair (map -> photo) is checked the same way round
    v = check(_with(gray["controllable/grayscale"], source=new_img(brighter, "condition")))
    assert not v.ok and v.reason == "definition_mismatch"
    mosaic = _drafts("mosaic", photo)["low_level/mosaic"]
    v = check(_with(mosaic, params={"block": mosaic.params["block"] * 2}))  # pixels not made at that block
    assert not v.ok and v.reason == "definition_mismatch"
    canny = _drafts("canny", photo)["low_level/canny"]
    assert check(canny).ok
    v = check(_with(canny, params={"low": canny.params["low"] // 3, "high": canny.params["high"] // 3}))
    assert not v.ok and v.reason == "definition_mismatch"
    v = check(_with(canny, params={}))
    assert not v.ok and v.reason == "definition_unverifiable"


def test_repainting_source_is_the_target_with_the_mask_filled(photo):
    d = _drafts("inpaint_box", photo)["repainting/inpainting"]
    assert check(d).ok
    m = np.asarray(d.mask.pil) > 0
    src = d.source.array().copy()
    src[m] = 20  # filled with black instead of the stated mid-gray
    v = check(_with(d, source=new_img(src)))
    assert not v.ok and v.reason == "definition_mismatch"


def test_subject_layer_is_the_photo_under_its_alpha(photo, other):
    d = _drafts("layers", photo)["layer_editing/decompose_subject"]
    assert check(d).ok
    layer = np.asarray(d.target.pil).copy()
    layer[:, :, :3] = np.asarray(other)  # the right alpha over the wrong pixels
    v = check(_with(d, target=new_img(layer)))
    assert not v.ok and v.reason == "definition_mismatch"


def test_memoised_maps_are_the_definition_of_the_same_pixels(photo):
    """The filter gets back the map its synthesizer drew from the same read-only pixels; other
    parameters, a writable array or a copy of the pixels recompute it, with the same result."""
    from acedata.synth.support import pixels

    rgb = photo.array()
    a = pixels.pixelate(rgb, 8)
    assert pixels.pixelate(rgb, 8) is a and not a.flags.writeable
    assert pixels.pixelate(rgb, 9) is not a
    copy = rgb.copy()
    assert pixels.pixelate(copy, 8) is not a and np.array_equal(pixels.pixelate(copy, 8), a)
    assert pixels.gray_map(rgb) is pixels.gray_map(rgb)
    assert np.array_equal(pixels.canny_map(rgb, 50, 120), pixels.canny_map(copy, 50, 120))
