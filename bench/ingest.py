"""Ingest throughput (images/s) against a bare Pillow decode loop over the same files.

Both run in this process on the same corpus; the ratio is what the stage's safety
checks, hashing, re-encoding and Parquet writing cost (local executor), and what Ray
buys back with parallel tasks (ray executor).

    .venv/bin/python bench/ingest.py [--variants 24] [--skip-ray]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

from PIL import Image


def bare_decode(files: list[str]) -> int:
    n = 0
    for p in files:
        with Image.open(p) as im:
            im.convert("RGB").load()
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=48, help="images per demo group (12 groups)")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from acedata.demo_data import build
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig

    tmp = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        corpus = os.path.join(tmp, "corpus")
        build(corpus, variants=args.variants, odd=False)
        files = sorted(glob.glob(os.path.join(corpus, "*", "*.jpg")))
        bare_decode(files[:20])  # warm the page cache

        t = time.perf_counter()
        n = bare_decode(files)
        bare = n / (time.perf_counter() - t)

        def stage(executor: str, out: str) -> float:
            cfg = IngestConfig(name="ingest", sources=[corpus], files_per_unit=32)
            t = time.perf_counter()
            run = run_stages([cfg], out, executor=executor, num_cpus=2)
            dt = time.perf_counter() - t
            assert run["stages"][0]["counts"]["images"] == n
            return n / dt

        local = stage("local", os.path.join(tmp, "local"))
        print(f"images: {n}")
        print(f"bare Pillow decode loop : {bare:8.1f} images/s (1 core)")
        print(f"ingest stage, local     : {local:8.1f} images/s (1 core)  ratio {local / bare:.2f}")
        if not args.skip_ray:
            from acedata.runtime import init_ray

            init_ray(num_cpus=2)  # started outside the timed region: a cluster is already up
            cold = stage("ray", os.path.join(tmp, "ray-cold"))
            warm = stage("ray", os.path.join(tmp, "ray-warm"))
            print(f"ingest stage, Ray cold  : {cold:8.1f} images/s (worker processes starting)"
                  f"  ratio {cold / bare:.2f}")
            print(f"ingest stage, Ray warm  : {warm:8.1f} images/s ({os.cpu_count()} cores)  ratio {warm / bare:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
