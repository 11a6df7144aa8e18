"""Ingest throughput (images/s) against a bare Pillow decode loop over the same files.

Both run in this process on the same corpus; the ratio is what the stage's safety checks,
content hashing (image ids, and the source digest that resume keys on), Parquet writing and
planning cost (local executor, one core), and what Ray gives back with parallel tasks (ray
executor: per core = images/s / (bare images/s x cores)). Both executors are warmed first (a small
ingest: imports, worker processes), as a long-running cluster would be; the timed runs include
planning and `finish`.

Two measures: wall-clock throughput, and CPU seconds of the whole process tree (this process, the
embedded Ray's raylet, GCS and workers; psutil) per image against the bare loop's. On a machine
shared with other work the CPU measure moves far less with the neighbours' load; for Ray it is
the efficiency per core actually used (idle, waiting workers cost no CPU time).

    .venv/bin/python bench/ingest.py [--variants 48] [--side 768] [--skip-ray] [--profile] [--repeat 3]

`--repeat N` times each measured run N times, each between two bare loops, and prints the median
of the N same-moment ratios: on a shared machine one pair moves by +-0.1 with the neighbours.
`--id-scheme` picks the image id scheme of the timed runs (`acedata.ids`; default: a new run's).

`--side` re-encodes the demo photos (120-384 px thumbnails) at that long side (JPEG q90), closer to
the photos a real corpus holds; `--profile` splits the local run's time into parts (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image


def tree_cpu() -> float:
    """User + system CPU seconds of this process and all its descendants (Ray's processes)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def bare_decode(files: list[str]) -> int:
    n = 0
    for p in files:
        with Image.open(p) as im:
            im.convert("RGB").load()
        n += 1
    return n


def resize_corpus(files: list[str], side: int) -> None:
    for p in files:
        with Image.open(p) as im:
            s = side / max(im.size)
            im.convert("RGB").resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS).save(
                p, "JPEG", quality=90)


def breakdown(prof: cProfile.Profile) -> dict[str, float]:
    st = pstats.Stats(prof).stats

    def ct(path_end: str, name: str) -> float:
        return sum(v[3] for k, v in st.items() if k[0].endswith(path_end) and k[2] == name)

    total = ct("acedata/pipeline.py", "run_stages")
    decode = ct("acedata/images.py", "decode")
    hashing = ct("acedata/images.py", "pixel_id")
    parts = {
        "read files (+ checks, sidecars)": ct("acedata/sources.py", "read_unit"),
        "decode (Pillow, EXIF, RGB)": decode - hashing - ct("acedata/codecs.py", "encode_lossless"),
        "hashing (pixel ids)": hashing,
        "re-encode (non-JPEG inputs)": ct("acedata/codecs.py", "encode_lossless"),
        "rows + Parquet + index (units)": ct("acedata/runtime.py", "execute_unit") - ct("stages/ingest.py", "process"),
        "source digest (resume key)": ct("acedata/source_digest.py", "source_digest"),
        "plan (listing)": ct("stages/ingest.py", "plan"),
        "finish (cross-unit duplicates)": ct("stages/ingest.py", "finish"),
    }
    parts["rest (per-row Python, stage start, manifest)"] = total - sum(parts.values())
    parts["= total"] = total
    return parts


def make_corpus(tmp: str, variants: int, side: int | None) -> tuple[str, str, list[str]]:
    """The demo corpus (its photos re-encoded at `side` when given) and a folder of 8 of them for warming up."""
    from acedata.demo_data import build

    corpus = os.path.join(tmp, "corpus")
    build(corpus, variants=variants, odd=False)
    files = sorted(glob.glob(os.path.join(corpus, "*", "*.jpg")))
    if side:
        resize_corpus(files, side)
    warm = os.path.join(tmp, "warm")
    os.makedirs(warm)
    for p in files[:8]:
        shutil.copy(p, warm)
    return corpus, warm, files


def bare_rates(files: list[str]) -> tuple[float, float]:
    """The bare decode loop over `files`: (images/s, images per CPU s)."""
    t, c = time.perf_counter(), time.process_time()
    k = bare_decode(files)
    return k / (time.perf_counter() - t), k / (time.process_time() - c)


def profile_report(stage, tmp: str) -> None:
    """One more local run under cProfile, its time split by part of the stage."""
    prof = cProfile.Profile(time.process_time)  # CPU time: the neighbours' load is not ours
    stage("local", os.path.join(tmp, "profile"), prof=prof)
    parts = breakdown(prof)
    print("where the local run's time goes (cProfile):")
    for part, sec in parts.items():
        print(f"  {part:<46} {sec:>7.3f} s {100 * sec / parts['= total']:>6.1f}%")


def repeated(stage, cpu_rates: dict[str, float], files: list[str], executor: str, tmp: str, n: int) -> str:
    """`n` runs of the stage, each between two bare loops: the median CPU ratio and each one."""
    ratios = []
    for i in range(n):
        b1 = bare_rates(files)[1]
        out = os.path.join(tmp, f"{executor}-rep{i}")
        stage(executor, out)
        b2 = bare_rates(files)[1]
        ratios.append(cpu_rates[out] / max(b1, b2))
    return f"median {statistics.median(ratios):.2f} of {n} ({', '.join(f'{r:.2f}' for r in ratios)})"


def ray_report(stage, cpu_rates: dict[str, float], tmp: str, cpus: int, bare: float, bare_cpu: float,
               files: list[str], repeat: int) -> None:
    """Two Ray runs (cold: worker processes starting, then warm) against the bare loop."""
    from acedata.runtime import init_ray

    init_ray(num_cpus=cpus)  # started outside the timed region: a cluster is already up
    cold = stage("ray", os.path.join(tmp, "ray-cold"))
    warm_rate = stage("ray", os.path.join(tmp, "ray-warm"))
    cold_cpu, warm_cpu = cpu_rates[os.path.join(tmp, "ray-cold")], cpu_rates[os.path.join(tmp, "ray-warm")]
    print(f"ingest stage, Ray cold  : {cold:8.1f} images/s (worker processes starting)"
          f"  per core {cold / bare / cpus:.2f}   {cold_cpu:8.1f} images per CPU s  "
          f"ratio {cold_cpu / bare_cpu:.2f}")
    print(f"ingest stage, Ray warm  : {warm_rate:8.1f} images/s ({cpus} cores)  "
          f"per core {warm_rate / bare / cpus:.2f}   {warm_cpu:8.1f} images per CPU s  "
          f"ratio {warm_cpu / bare_cpu:.2f}")
    if repeat > 1:
        print(f"ingest stage, Ray warm, CPU ratio: {repeated(stage, cpu_rates, files, 'ray', tmp, repeat)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=48, help="images per demo group (12 groups)")
    ap.add_argument("--side", type=int, default=None, help="re-encode the photos at this long side")
    ap.add_argument("--files-per-unit", type=int, default=None, help="default: the stage's")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="median CPU ratio of this many runs (see above)")
    ap.add_argument("--id-scheme", default=None, help="sha256 | xxh3-128 (default: a new run's)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import logging

    logging.disable(logging.INFO)

    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig

    tmp = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        corpus, warm, files = make_corpus(tmp, args.variants, args.side)
        extra = {"files_per_unit": args.files_per_unit} if args.files_per_unit else {}
        scheme = {"id_scheme": args.id_scheme} if args.id_scheme else {}
        bare_decode(files[:20])  # the page cache

        cpu_rates: dict[str, float] = {}

        def stage(executor: str, out: str, source: str = corpus, prof: cProfile.Profile | None = None) -> float:
            cfg = IngestConfig(name="ingest", sources=[source], **extra)
            t, c = time.perf_counter(), tree_cpu()
            if prof:
                prof.enable()
            run = run_stages([cfg], out, executor=executor, num_cpus=args.cpus, **scheme)
            if prof:
                prof.disable()
            dt, dc = time.perf_counter() - t, tree_cpu() - c
            images = run["stages"][0]["counts"]["images"]
            cpu_rates[out] = images / dc
            return images / dt

        stage("local", os.path.join(tmp, "warm-local"), warm)  # imports every stage module once
        n = len(files)
        bare, bare_cpu = bare_rates(files)
        local = stage("local", os.path.join(tmp, "local"))
        bare2, bare_cpu2 = bare_rates(files)
        # the faster of two loops around the stage run (load on the machine)
        bare, bare_cpu = max(bare, bare2), max(bare_cpu, bare_cpu2)
        local_cpu = cpu_rates[os.path.join(tmp, "local")]
        with Image.open(files[0]) as im:
            size = im.size
        print(f"images: {n} ({size[0]}x{size[1]} and similar), files per unit: "
              f"{args.files_per_unit or IngestConfig.model_fields['files_per_unit'].default}")
        print(f"bare Pillow decode loop : {bare:8.1f} images/s (1 core)   {bare_cpu:8.1f} images per CPU s")
        print(f"ingest stage, local     : {local:8.1f} images/s (1 core)  ratio {local / bare:.2f}   "
              f"{local_cpu:8.1f} images per CPU s  ratio {local_cpu / bare_cpu:.2f}")
        if args.repeat > 1:
            print(f"ingest stage, local, CPU ratio: {repeated(stage, cpu_rates, files, 'local', tmp, args.repeat)}")
        if args.profile:
            profile_report(stage, tmp)
        if not args.skip_ray:
            ray_report(stage, cpu_rates, tmp, args.cpus, bare, bare_cpu, files, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
