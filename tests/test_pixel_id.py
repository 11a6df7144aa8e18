"""The image id is sha256 over "WxH:" and the packed pixels (`tobytes()`), however it is computed."""

import hashlib

import numpy as np
from PIL import Image

from acedata.images import pixel_id


def _reference(im: Image.Image) -> str:
    return hashlib.sha256(f"{im.width}x{im.height}:".encode() + im.tobytes()).hexdigest()


def test_pixel_id_is_sha256_of_size_and_packed_pixels():
    rng = np.random.default_rng(0)
    # rows wider than Pillow's 64 KiB pack block, many short rows, one pixel, an empty image
    for size in ((1, 1), (7, 3), (768, 512), (17000, 2), (3, 9000), (0, 5)):
        rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
        for mode in ("RGB", "RGBA", "L", "1", "P", "F", "I;16"):
            im = rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")
            assert pixel_id(im) == _reference(im), (mode, size)
    arr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert pixel_id(Image.fromarray(arr, "RGB"), arr) == _reference(Image.fromarray(arr, "RGB"))
