"""Pairs/s per weight-free synthesizer: the synthesize stage vs the bare algorithm call.

Both run on the same ingested demo photos in this process. The bare call is
`synth.make(photo, rng)` on already-decoded photos; the stage run adds reading and
decoding, the filters, PNG encoding and content-addressing of new images, and the
Parquet shard commit (executor=local, one stage per synthesizer). The ratio bare/stage
is the stage's overhead factor.

    .venv/bin/python bench/synthesis.py            # 12 photos at 384 px (~2-3 min on 2 cores)
    .venv/bin/python bench/synthesis.py --full     # 48 photos at 512 px
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="48 photos at 512 px")
    ap.add_argument("--photos", type=int, default=None)
    ap.add_argument("--side", type=int, default=None)
    ap.add_argument("--only", nargs="*", help="synthesizer names (default: every weight-free one)")
    args = ap.parse_args()
    n = args.photos or (48 if args.full else 12)
    side = args.side or (512 if args.full else 384)
    logging.disable(logging.INFO)

    from acedata import shards
    from acedata.demo_data import build
    from acedata.images import open_rgb
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig
    from acedata.stages.synthesize import SynthesizeConfig
    from acedata.synth import REGISTRY, Img, weight_free

    work = tempfile.mkdtemp(prefix="bench-synth-")
    build(os.path.join(work, "corpus"), variants=4, seed=0)
    ingest = IngestConfig(name="ingest", sources=[os.path.join(work, "corpus")])
    run_stages([ingest], os.path.join(work, "base"), executor="local")
    images_table = os.path.join(work, "base", "ingest", "images")
    rows = shards.read_table(images_table, columns=["image_id", "image", "kind"]).to_pylist()[:n]
    photos = []
    for r in rows:
        im = open_rgb(r["image"]["bytes"])
        if max(im.size) > side:
            s = side / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
        photos.append(Img(im, "image", r["image_id"]))

    names = args.only or weight_free()
    print(f"{len(photos)} photos, long side <= {side} px; executor=local; cpus={os.cpu_count()}")
    print(f"{'synthesizer':<18} {'bare pairs/s':>13} {'stage pairs/s':>14} {'ratio bare/stage':>17} "
          f"{'accepted':>9}")
    ratios = []
    for name in names:
        cls = REGISTRY[name]
        synth = cls()
        t0 = time.perf_counter()
        made = 0
        if cls.inputs == "group":
            made = len(synth.make_group(photos[:4], np.random.default_rng(0))) * (len(photos) // 4)
            for k in range(0, len(photos) - 3, 4):
                synth.make_group(photos[k : k + 4], np.random.default_rng(k))
        else:
            for k, p in enumerate(photos):
                made += len(synth.make(p, np.random.default_rng(k)))
        bare = made / (time.perf_counter() - t0)
        cfg = SynthesizeConfig(name="synthesize", synthesizers=[name], max_images=n, max_side=side,
                               chain_fraction=0.0, reference_max_set=4, inputs={"images": images_table})
        t0 = time.perf_counter()
        run = run_stages([cfg], os.path.join(work, f"stage-{name}"), executor="local")
        dt = time.perf_counter() - t0
        c = run["stages"][0]["counts"]
        stage = c["candidates"] / dt
        ratios.append(bare / stage)
        print(f"{name:<18} {bare:>13.1f} {stage:>14.1f} {bare / stage:>17.2f} "
              f"{c['pairs']:>4}/{c['candidates']:<4}")
    print(f"geometric mean overhead (bare/stage): {float(np.exp(np.mean(np.log(ratios)))):.2f}x")


if __name__ == "__main__":
    main()
