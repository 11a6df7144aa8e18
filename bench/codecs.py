"""Codec trade-offs per image kind: stored size, encode ms, decode ms (fastest of --repeat), losslessness.

Images are what the weight-free synthesizers really draw from scikit-image's bundled photos
(at `--side` px): photos and photo-like targets (stylised, inpainted), condition maps (gray
ones such as grayscale/canny/sketch/doodle, colour ones such as segmentation/mosaic), binary
masks and RGBA subject layers. Every codec runs on the same arrays in this process; `exact`
says whether decoding gives back the same pixels (PSNR in dB when not). `acedata.codecs`
chooses from this table; its docstring records a run.

    .venv/bin/python bench/codecs.py [--side 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


def _samples(side: int) -> dict[str, list[Image.Image]]:
    """kind -> images, made by the real synthesizers from the bundled photos."""
    import skimage.data

    from acedata.synth import Img, load_all

    reg = load_all()
    out: dict[str, list[Image.Image]] = {"photo": [], "stylised": [], "condition_gray": [],
                                         "condition_colour": [], "mask": [], "layer_rgba": []}
    for k, name in enumerate(PHOTOS):
        im = Image.open(os.path.join(os.path.dirname(skimage.data.__file__), name)).convert("RGB")
        s = side / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
        src = Img(im, "image", "x" * 64)
        out["photo"].append(im)
        for synth in ("grayscale", "canny", "sketch", "doodle", "segmentation", "mosaic", "watercolor",
                      "inpaint_brush", "inpaint_box", "layers"):
            for d in reg[synth]().make(src, np.random.default_rng(k)):
                for role in (d.target, d.mask):
                    if role is None or not role.is_new:
                        continue
                    if role.kind == "mask":
                        out["mask"].append(role.pil)
                    elif role.kind == "condition":
                        a = np.asarray(role.pil)
                        gray = (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
                        out["condition_gray" if gray else "condition_colour"].append(role.pil)
                    elif role.pil.mode == "RGBA":
                        out["layer_rgba"].append(role.pil)
                    else:
                        out["stylised"].append(role.pil)
    return out


def _codecs(kind: str) -> list[tuple[str, dict, str]]:
    """(label, Pillow save kwargs, mode to store in) worth trying for a kind."""
    lossless = [("PNG level 6 (Pillow default)", {"format": "PNG", "compress_level": 6}, ""),
                ("PNG level 3 (before)", {"format": "PNG", "compress_level": 3}, ""),
                ("PNG level 1", {"format": "PNG", "compress_level": 1}, ""),
                ("WebP lossless m0", {"format": "WEBP", "lossless": True, "method": 0, "quality": 0, "exact": True}, ""),
                ("WebP lossless m0 q50", {"format": "WEBP", "lossless": True, "method": 0, "quality": 50,
                                          "exact": True}, ""),
                ("WebP lossless m1 q25", {"format": "WEBP", "lossless": True, "method": 1, "quality": 25,
                                          "exact": True}, ""),
                ("WebP lossless m4 (default)", {"format": "WEBP", "lossless": True, "exact": True}, "")]
    if kind == "condition_gray":
        lossless += [("PNG level 1, L", {"format": "PNG", "compress_level": 1}, "L"),
                     ("PNG level 3, L", {"format": "PNG", "compress_level": 3}, "L")]
    if kind == "mask":
        lossless = [("PNG level 3 (before), L", {"format": "PNG", "compress_level": 3}, "L"),
                    ("PNG level 1, L", {"format": "PNG", "compress_level": 1}, "L"),
                    ("PNG level 1, 1-bit", {"format": "PNG", "compress_level": 1}, "1"),
                    ("PNG level 6, 1-bit", {"format": "PNG", "compress_level": 6}, "1"),
                    ("WebP lossless m0, L", {"format": "WEBP", "lossless": True, "method": 0, "quality": 0}, "L")]
    if kind in ("photo", "stylised"):
        lossless += [("JPEG q95 (lossy)", {"format": "JPEG", "quality": 95}, ""),
                     ("JPEG q95 4:4:4 (lossy)", {"format": "JPEG", "quality": 95, "subsampling": 0}, ""),
                     ("WebP lossy q90", {"format": "WEBP", "quality": 90, "method": 4}, "")]
    return lossless


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure(side: int, repeat: int) -> list[dict]:
    rows = []
    for kind, images in _samples(side).items():
        if not images:
            continue
        for label, kw, mode in _codecs(kind):
            size = enc = dec = 0.0
            worst = float("inf")
            for im in images:
                src = im.convert(mode) if mode else im
                best = float("inf")  # the fastest of `repeat` runs: other load on the machine only adds
                for _ in range(repeat):
                    t = time.perf_counter()
                    buf = io.BytesIO()
                    src.save(buf, **kw)
                    best = min(best, time.perf_counter() - t)
                enc += best
                data = buf.getvalue()
                size += len(data)
                best = float("inf")
                for _ in range(repeat):
                    t = time.perf_counter()
                    back = Image.open(io.BytesIO(data))
                    back.load()
                    best = min(best, time.perf_counter() - t)
                dec += best
                want = np.asarray(im.convert("L") if mode in ("L", "1") and im.mode == "L" else im)
                got = np.asarray(back.convert(im.mode))
                worst = min(worst, _psnr(want, got))
            n = len(images)
            raw = sum(len(im.tobytes()) for im in images) / n
            rows.append({"kind": kind, "codec": label, "n": n, "kb": size / n / 1024, "ratio": raw / (size / n),
                         "enc_ms": enc / n * 1e3, "dec_ms": dec / n * 1e3,
                         "exact": "yes" if worst == float("inf") else f"{worst:.1f} dB"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = measure(args.side, args.repeat)
    print(f"long side {args.side} px; per image means; ratio = raw bytes / stored bytes")
    print(f"{'kind':<17} {'codec':<28} {'n':>3} {'KiB':>7} {'ratio':>6} {'enc ms':>7} {'dec ms':>7}  exact")
    for r in rows:
        print(f"{r['kind']:<17} {r['codec']:<28} {r['n']:>3} {r['kb']:>7.1f} {r['ratio']:>6.1f} {r['enc_ms']:>7.2f} "
              f"{r['dec_ms']:>7.2f}  {r['exact']}")


if __name__ == "__main__":
    main()
