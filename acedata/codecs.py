"""How the platform stores the pixels it draws: one codec per image kind.

Every image the platform encodes itself (synthesized photos, maps, masks, layers; ingested images
that must be re-encoded) is stored losslessly: decoding the stored bytes gives back exactly the
pixels whose hash is the row's `image_id`, and the filters' checks (a mask covers every changed
pixel, a map equals its definition) hold for what readers decode, not only for what was in memory.
Ingested JPEGs are kept as their original bytes. The `images.format` column names the container
(Pillow's name: PNG, WEBP, JPEG); every reader decodes through Pillow, which reads all three.

- masks (`kind == "mask"`, binary 0/255): 1-bit PNG, zlib level 1 (decodes as mode "1";
  `convert("L")` gives 0/255 back). A mask that is not binary is stored as an 8-bit PNG.
- everything else (photos, stylised and repainted images, condition maps, RGBA layers): lossless
  WebP at its fastest setting (method 0; quality 50 is its effort knob in lossless mode: smaller
  colour maps at no cost in speed), alpha kept exactly (`exact`); PNG level 1 above WebP's 16383
  px limit or for modes WebP cannot hold (a one-channel image would come back as RGB).

Measured with `bench/codecs.py` (long side 512 px, the real synthesizers' outputs from
scikit-image's photos; per-image means of 5 runs on 2 cores shared with other jobs at load average
7-35, so timings are +-30%, but the order of the codecs held in every run; the bench now reports
the fastest of `--repeat` runs, which moves less with load):

| kind             | codec                        | KiB   | enc ms | dec ms | exact      |
|------------------|------------------------------|-------|--------|--------|------------|
| photo            | PNG level 3 (before)         | 348.4 | 81.9   | 21.7   | yes        |
| photo            | PNG level 1                  | 355.6 | 49.5   | 18.5   | yes        |
| photo            | **WebP lossless m0**         | 285.0 | 17.5   | 11.5   | yes        |
| photo            | WebP lossless m4 (default)   | 255.8 | 241.3  | 12.0   | yes        |
| photo            | JPEG q95 4:2:0               | 79.5  | 2.2    | 3.7    | 34.9 dB    |
| photo            | JPEG q95 4:4:4               | 107.0 | 3.6    | 5.5    | 38.2 dB    |
| photo            | WebP lossy q90               | 44.9  | 66.4   | 12.6   | 34.8 dB    |
| stylised         | PNG level 3 (before)         | 297.0 | 84.0   | 24.7   | yes        |
| stylised         | **WebP lossless m0**         | 241.7 | 26.6   | 14.2   | yes        |
| condition, gray  | PNG level 3 (before)         | 106.3 | 43.3   | 13.7   | yes        |
| condition, gray  | PNG level 1, stored as L     | 76.1  | 26.9   | 9.8    | yes        |
| condition, gray  | **WebP lossless m0**         | 79.6  | 24.6   | 4.6    | yes        |
| condition, colour| PNG level 3 (before)         | 9.3   | 22.3   | 8.6    | yes        |
| condition, colour| **WebP lossless m0 q50**     | 6.3   | 15.7   | 6.5    | yes        |
| condition, colour| WebP lossless m4 (default)   | 2.9   | 83.0   | 4.7    | yes        |
| mask             | PNG level 3, L (before)      | 2.7   | 4.3    | 1.7    | yes        |
| mask             | **PNG level 1, 1-bit**       | 1.5   | 2.2    | 0.5    | yes        |
| mask             | WebP lossless m0, L          | 1.5   | 8.1    | 5.0    | yes        |
| RGBA layer       | PNG level 3 (before)         | 54.8  | 45.3   | 17.2   | yes        |
| RGBA layer       | **WebP lossless m0, exact**  | 64.8  | 30.1   | 14.7   | yes        |
| RGBA layer       | WebP lossless m1 q25         | 34.6  | 193.2  | 9.9    | yes        |

Why not JPEG for photos: 5-10x smaller and ~8x faster to encode, but lossy (35-38 dB); the stored
pixels would no longer be the ones `image_id` names, and a repainting source would differ from its
target outside the mask after decoding. Higher WebP effort (m1+) saves 10-50% of the bytes for 3-15x
the encode time; a run that is storage-bound rather than CPU-bound could choose it.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

WEBP_MAX_SIDE = 16383
_WEBP = {"lossless": True, "method": 0, "quality": 50, "exact": True}


def is_binary(a: np.ndarray) -> bool:
    """Every value 0 or 255 (a one-channel uint8 array: a mask)."""
    return cv2.countNonZero(cv2.inRange(np.ascontiguousarray(a), 1, 254)) == 0


def encode_mask(im: Image.Image) -> tuple[bytes, str]:
    buf = io.BytesIO()
    m = im.convert("L") if im.mode != "L" else im
    if is_binary(np.asarray(m)):
        m.convert("1", dither=Image.Dither.NONE).save(buf, "PNG", compress_level=1)
    else:
        m.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), "PNG"


def encode_lossless(im: Image.Image) -> tuple[bytes, str]:
    """Lossless WebP (method 0), PNG level 1 where WebP cannot hold the image."""
    buf = io.BytesIO()
    if im.mode in ("RGB", "RGBA") and max(im.size) <= WEBP_MAX_SIDE:  # WebP has no 1-channel mode
        im.save(buf, "WEBP", **_WEBP)
        return buf.getvalue(), "WEBP"
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), "PNG"


def encode_kind(im: Image.Image, kind: str) -> tuple[bytes, str]:
    """(stored bytes, format name) for an image of `kind` (image | mask | condition)."""
    return encode_mask(im) if kind == "mask" else encode_lossless(im)
