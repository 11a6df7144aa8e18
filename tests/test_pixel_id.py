"""The image id is a hash over "WxH:" and the packed pixels (`tobytes()`), however it is computed:
sha256 (v1) or xxh3-128 (v2, the default), told apart by length (`acedata.ids`)."""

import hashlib

import numpy as np
import pytest
import xxhash
from PIL import Image

from acedata import ids
from acedata.images import decode, encode, pixel_id

REFERENCE = {
    "sha256": lambda b: hashlib.sha256(b).hexdigest(),
    "xxh3-128": lambda b: xxhash.xxh3_128_hexdigest(b),
}


def _reference(im: Image.Image, scheme: str) -> str:
    return REFERENCE[scheme](f"{im.width}x{im.height}:".encode() + im.tobytes())


@pytest.mark.parametrize("scheme", ids.SCHEMES)
def test_pixel_id_is_the_hash_of_size_and_packed_pixels(scheme):
    rng = np.random.default_rng(0)
    # rows wider than Pillow's 64 KiB pack block, many short rows, one pixel, an empty image
    for size in ((1, 1), (7, 3), (768, 512), (17000, 2), (3, 9000), (0, 5)):
        rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
        for mode in ("RGB", "RGBA", "L", "1", "P", "F", "I;16"):
            im = rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")
            assert pixel_id(im, scheme=scheme) == _reference(im, scheme), (mode, size)
    arr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    assert pixel_id(im, arr, scheme=scheme) == _reference(im, scheme)
    with ids.using(scheme):  # the scheme current in a stage's unit
        assert pixel_id(im) == pixel_id(im, arr) == _reference(im, scheme)


def test_ids_are_stable_and_differ_in_shape_between_schemes():
    """Recorded values: an id must never change for the same pixels within a scheme."""
    im = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3), "RGB")
    v1 = pixel_id(im, scheme="sha256")
    v2 = pixel_id(im, scheme="xxh3-128")
    assert v1 == "92efc2773dfc7c74792c9ccb5a2d4d0577a41165612db61ee81c8d93b99330e9"
    assert v2 == "7ab4386548f5610dd77d4be899ca6034"
    assert pixel_id(im) == v2  # outside a run: the default for new runs
    assert (len(v1), len(v2)) == (64, 32)
    assert ids.scheme_of(v1) == "sha256" and ids.scheme_of(v2) == "xxh3-128"
    assert ids.scheme_of("img-1") is None and ids.scheme_of(v1.upper()) is None
    for v in (v1, v2):  # hex, so seeds taken from leading digits work for both
        int(v[:12], 16)
    big = im.resize((48, 32), Image.Resampling.NEAREST)  # decode refuses sides under 32
    data = encode(big, "PNG")
    for scheme in ids.SCHEMES:
        assert decode(data, scheme=scheme).image_id == pixel_id(big, scheme=scheme) == _reference(big, scheme)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unknown image id scheme"):
        pixel_id(Image.new("RGB", (2, 2)), scheme="md5")
    with pytest.raises(ValueError, match="unknown image id scheme"), ids.using("md5"):
        pass
