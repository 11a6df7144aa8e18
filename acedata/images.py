"""Safe image decoding and normalisation (Pillow), and encoding helpers.

Every decoded image becomes 8-bit RGB with EXIF orientation applied; the pixel
count is checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from acedata import ids
from acedata.codecs import encode_lossless

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


class Rejected(Exception):
    """An input that cannot become an image row; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 64_000_000
    min_side: int = 32
    max_aspect: float = 8.0
    max_side: int | None = 4096  # larger images are downscaled (stored bytes stay bounded)


@dataclass
class Decoded:
    image: Image.Image  # RGB
    data: bytes  # stored bytes (original JPEG when untouched, else re-encoded)
    format: str  # JPEG | WEBP (lossless) | PNG (see acedata.codecs)
    image_id: str
    orig_format: str
    orig_mode: str
    orig_width: int
    orig_height: int
    frames: int


def pixel_id(rgb: Image.Image, pixels: np.ndarray | None = None, scheme: str | None = None) -> str:
    """Content address: a hash over size and pixels (container-independent), in `scheme`
    (`acedata.ids`; None: the scheme current in this stage, see `ids.using`).

    `pixels`, when given, is the image's own pixel array in its mode (C-contiguous): hashed
    in place of a `tobytes()` copy, with the same result."""
    h = ids.hasher(scheme or ids.current())
    h.update(f"{rgb.width}x{rgb.height}:".encode())
    if pixels is not None and pixels.flags.c_contiguous:
        h.update(pixels.data)
    else:
        _hash_packed(h, rgb)
    return h.hexdigest()


def _hash_packed(h, im: Image.Image) -> None:
    """Feed `h` the bytes `im.tobytes()` would give, block by block as Pillow packs them: no
    whole-image copy and join, and each block is hashed while it is still in cache (at 768 px
    hashing was a third of ingest's time, the copy a fifth of that)."""
    im.load()
    if im.width == 0 or im.height == 0:
        return
    enc = Image._getencoder(im.mode, "raw", im.mode)
    try:
        enc.setimage(im.im, (0, 0, *im.size))
        bufsize = max(ImageFile.MAXBLOCK, im.width * 4)  # what tobytes asks for (see RawEncode.c)
        while True:
            _, err, block = enc.encode(bufsize)
            h.update(block)
            if err:
                break
        if err < 0:
            raise RuntimeError(f"encoder error {err} while hashing pixels")
    finally:
        enc.cleanup()


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, L, 1


_BOMB_ERRORS = ("error", None, Image.DecompressionBombWarning, None, 0)  # what `simplefilter` installs


@contextlib.contextmanager
def bombs_as_errors() -> Iterator[None]:
    """Pillow's DecompressionBombWarning raised as an error inside the block. `decode` sets this
    itself; a loop over many images sets it once around the loop (per image it was a visible
    share of decoding a small one)."""
    if warnings.filters and warnings.filters[0] == _BOMB_ERRORS:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode(data: bytes, limits: Limits = Limits(), scheme: str | None = None) -> Decoded:
    """Decode and normalise image bytes, or raise `Rejected` with a reason code; the id is in
    `scheme` (None: the current one, `acedata.ids.current`)."""
    if not data:
        raise Rejected("empty", "zero bytes")
    try:
        with bombs_as_errors():
            im = Image.open(io.BytesIO(data))
            w0, h0 = im.size
            if w0 * h0 > limits.max_pixels:
                raise Rejected("too_many_pixels", f"{w0}x{h0} > {limits.max_pixels} pixels")
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                im.seek(0)
            orig_format, orig_mode = im.format or "unknown", im.mode
            im.load()
            opened = im
            im = ImageOps.exif_transpose(im) if im.getexif() else im
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected("not_an_image", "no image format recognised") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("too_many_pixels", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "decode_error"
        raise Rejected(reason, str(e)[:200]) from None
    rgb = _to_rgb(im)
    w, h = rgb.size
    if min(w, h) < limits.min_side:
        raise Rejected("too_small", f"{w}x{h} < min side {limits.min_side}")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise Rejected("bad_aspect", f"{w}x{h} aspect > {limits.max_aspect}")
    resized = False
    if limits.max_side and max(w, h) > limits.max_side:
        s = limits.max_side / max(w, h)
        rgb = rgb.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        resized = True
    untouched = orig_format == "JPEG" and orig_mode == "RGB" and rgb is opened and not resized and frames == 1
    if untouched:
        out, fmt = data, "JPEG"
    elif orig_format == "JPEG":
        out, fmt = encode(rgb, "JPEG"), "JPEG"
    else:
        out, fmt = encode_lossless(rgb)
    return Decoded(rgb, out, fmt, pixel_id(rgb, scheme=scheme), orig_format, orig_mode, w0, h0, frames)


def encode(im: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def open_rgb(data: bytes) -> Image.Image:
    """Open bytes the platform itself wrote (already normalised; any container Pillow reads)."""
    im = Image.open(io.BytesIO(data))
    return im.convert("RGB") if im.mode != "RGB" else im


def open_rgb_fit(data: bytes, max_side: int | None) -> tuple[Image.Image, bool]:
    """Stored bytes as loaded RGB pixels, shrunk (LANCZOS) to at most `max_side` on the long side;
    the flag says whether it shrank. A JPEG much larger than that decodes at a reduced DCT scale
    first, down to no less than twice the target (what Pillow's `thumbnail` does): the decode, not
    the resize, is most of the cost of a large photo."""
    im = Image.open(io.BytesIO(data))
    if max_side is None or max(im.size) <= max_side:
        im = im.convert("RGB") if im.mode != "RGB" else im
        im.load()
        return im, False
    s = max_side / max(im.size)
    size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
    if im.format == "JPEG":
        im.draft("RGB", (size[0] * 2, size[1] * 2))
    im = im.convert("RGB") if im.mode != "RGB" else im
    return im.resize(size, Image.Resampling.LANCZOS), True


def open_mask(data: bytes) -> Image.Image:
    """A stored mask as 8-bit L (1-bit PNGs come back as 0/255)."""
    im = Image.open(io.BytesIO(data))
    return im.convert("L") if im.mode != "L" else im


def image_cell(data: bytes, path: str | None = None) -> dict:
    """A value for an IMAGE struct column."""
    return {"bytes": data, "path": path}
