"""What the ingest stage would cost with another image-id hash or JPEG decoder (local executor).

Measurement only: each variant swaps functions in this process (nothing here changes the
pipeline), then runs the local ingest over the `bench/ingest.py` corpus; variants are
interleaved `--repeat` times and each run is set against the bare Pillow loop measured around
it, in CPU seconds (the ratio `bench/ingest.py` reports as "images per CPU s ratio").

- `sha256` — the stage with the v1 id scheme (sha256 over size + packed RGB pixels, Pillow decode).
- `xxh3` — xxh3_128 in place of sha256: since measured, the `xxh3-128` id scheme (`acedata.ids`),
  the default for new runs. Every variant runs pinned to `sha256` and swaps the hash itself.
- `cv2+sha256` — JPEGs that need no normalising decoded by OpenCV's libjpeg-turbo straight
  into packed RGB (no Pillow pack step); the same ids wherever both decoders give the same
  pixels (checked here), but truncated or corrupt files are handled by two decoders.
- `cv2+xxh3` — both.
- `no-hash` — a counter for an id: the floor, not a usable scheme.

    .venv/bin/python bench/ingest_variants.py [--side 768] [--repeat 3] [variant ...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from PIL import Image


class _Xxh3:
    """hashlib's interface over xxh3_128."""

    def __init__(self, data: bytes) -> None:
        import xxhash

        self.h = xxhash.xxh3_128(data)

    def update(self, data) -> None:
        self.h.update(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _cv2_decode(hasher, fallback):
    """`images.decode` for an untouched RGB JPEG (no orientation, within limits), else `fallback`."""
    import cv2

    from acedata import images

    def decode(data: bytes, limits=None, scheme=None):
        limits = limits or images.Limits()
        with images.bombs_as_errors():
            im = Image.open(io.BytesIO(data))
        w, h = im.size
        plain = (im.format == "JPEG" and im.mode == "RGB" and data.endswith(b"\xff\xd9")
                 and w * h <= limits.max_pixels and min(w, h) >= limits.min_side
                 and max(w, h) / min(w, h) <= limits.max_aspect and not (limits.max_side and max(w, h) > limits.max_side)
                 and im.getexif().get(0x0112, 1) == 1)
        if not plain:
            return fallback(data, limits, scheme)
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        if a is None or a.shape[:2] != (h, w):
            return fallback(data, limits, scheme)
        hh = hasher(f"{w}x{h}:".encode())
        hh.update(a.data)
        return images.Decoded(SimpleNamespace(width=w, height=h), data, "JPEG", hh.hexdigest(), "JPEG", "RGB",
                              w, h, 1)

    return decode


def variants() -> dict[str, tuple]:
    """name -> (pixel_id, decode) to install in `acedata.images` / the ingest stage module."""
    from acedata import images

    sha_id, pil_decode = images.pixel_id, images.decode

    def xxh3_id(rgb, pixels=None, scheme=None):
        h = _Xxh3(f"{rgb.width}x{rgb.height}:".encode())
        images._hash_packed(h, rgb)
        return h.hexdigest()

    counter = itertools.count()
    return {
        "sha256": (sha_id, pil_decode),
        "xxh3": (xxh3_id, pil_decode),
        "cv2+sha256": (sha_id, _cv2_decode(hashlib.sha256, pil_decode)),
        "cv2+xxh3": (xxh3_id, _cv2_decode(_Xxh3, pil_decode)),
        "no-hash": (lambda rgb, pixels=None, scheme=None: f"{next(counter):064x}", pil_decode),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="variants (default: all)")
    ap.add_argument("--variants", type=int, default=48, help="images per demo group (12 groups)")
    ap.add_argument("--side", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.disable(logging.INFO)

    import pyarrow.parquet as pq
    from ingest import bare_rates, make_corpus

    from acedata import images
    from acedata.pipeline import run_stages
    from acedata.stages import ingest as stage_module
    from acedata.stages.ingest import IngestConfig

    table = variants()
    names = args.names or list(table)
    tmp = tempfile.mkdtemp(prefix="bench-ingest-variants-")
    try:
        corpus, warm, files = make_corpus(tmp, args.variants, args.side)
        run_stages([IngestConfig(name="ingest", sources=[warm])], os.path.join(tmp, "warm-run"), executor="local")
        ratios: dict[str, list[float]] = {n: [] for n in names}
        ids: dict[str, list[str]] = {}
        for r in range(args.repeat):
            for n in names:
                images.pixel_id, stage_module.decode = table[n]
                out = os.path.join(tmp, f"{n}-{r}")
                _, bare1 = bare_rates(files)
                c = time.process_time()
                run = run_stages([IngestConfig(name="ingest", sources=[corpus])], out, executor="local",
                                 id_scheme="sha256")
                dc = time.process_time() - c
                _, bare2 = bare_rates(files)
                ratios[n].append(run["stages"][0]["counts"]["images"] / dc / max(bare1, bare2))
                ids[n] = sorted(pq.read_table(os.path.join(out, "ingest", "images"), columns=["image_id"])
                                .column(0).to_pylist())
                shutil.rmtree(out, ignore_errors=True)
        print(f"images: {len(files)} at long side {args.side}; local ingest, CPU ratio to the bare Pillow loop")
        for n, v in ratios.items():
            same = "" if "sha256" not in ids or n == "sha256" else (
                "  ids as sha256: " + ("same" if ids[n] == ids["sha256"] else "differ"))
            print(f"  {n:<12} median {statistics.median(v):.3f}   runs {' '.join(f'{x:.2f}' for x in v)}{same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
