"""The synthesize stage against a bare loop doing only the work that must be done, per synthesizer.

Bare loop (the baseline, issue 12 item 3): for each photo, decode its stored bytes (shrunk to
`max_side` as the stage does), run the synthesizer (`make`, or `make_group` on the same subject
sets the stage forms) and encode every image it drew with the codec of its kind
(`acedata.codecs.encode_kind`, the stage's codecs). Stage: `run_stages` with that one synthesizer
on the same photos (executor=local, no chains). Two stage times:

- units: the time inside `execute_unit` (read rows, decode, synthesize, filters, hashing,
  encoding, the rows and their Parquet shards and image index): the per-item cost;
- whole: plus planning, `finish` (cross-unit duplicates, counts) and the stage's own start: fixed
  per stage, amortised over the run at scale.

Ratios are stage / bare CPU time of this process (`time.process_time`, all its threads; 1.0 = the
stage adds nothing): on a machine shared with other work, wall time measures the neighbours as
much as the code. Wall seconds are printed too. `--profile NAME` runs one stage under
cProfile and splits its unit time into read, decode, algorithm, filters, hashing, encode, Parquet
and the rest (per-item Python).

    .venv/bin/python bench/synthesis.py                 # 48 photos at 384 px, every weight-free synthesizer
    .venv/bin/python bench/synthesis.py --only grayscale mosaic --profile grayscale
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np


def _photos(images_table: str, n: int) -> tuple[list[dict], list[list[dict]]]:
    """The rows the stage takes (kind image, unique ids, in id order, the first n) and the subject
    sets it forms from their ingest groups (reference_max_set = 4)."""
    from acedata import shards

    rows = shards.read_table(images_table, columns=["image_id", "image", "kind", "group"]).to_pylist()
    seen: dict[str, dict] = {}
    for r in rows:
        if r["kind"] in (None, "image") and r["image_id"] not in seen:
            seen[r["image_id"]] = r
    photos = sorted(seen.values(), key=lambda r: r["image_id"])[:n]
    groups: dict[str, list[dict]] = defaultdict(list)
    for p in photos:
        if p["group"]:
            groups[p["group"]].append(p)
    sets = [m[:4] for _, m in sorted(groups.items()) if len(m) >= 2]
    return photos, sets


def _codecs():
    """(encode_kind, open_rgb_fit); before acedata.codecs existed (to measure older commits):
    PNG level 3 for every kind and a full decode then LANCZOS, what the stage did then."""
    try:
        from acedata.codecs import encode_kind
        from acedata.images import open_rgb_fit
    except ImportError:
        from PIL import Image

        from acedata.images import encode, open_rgb

        def encode_kind(im, kind):
            return encode(im, "PNG"), "PNG"

        def open_rgb_fit(data, side):
            im = open_rgb(data)
            if side is None or max(im.size) <= side:
                im.load()
                return im, False
            s = side / max(im.size)
            return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))),
                             Image.Resampling.LANCZOS), True
    return encode_kind, open_rgb_fit


def bare(name: str, photos: list[dict], sets: list[list[dict]], side: int, seed: int = 0) -> tuple[float, int]:
    """Seconds and drafts of the bare loop: decode, make, encode the new images."""
    from acedata.synth import Img, get

    encode_kind, open_rgb_fit = _codecs()

    synth = get(name)()

    def decode(r: dict, fit: int | None) -> Img:
        im, resized = open_rgb_fit(r["image"]["bytes"], fit)
        return Img(im, "image", None if resized else r["image_id"])

    def encode(drafts) -> None:
        done: set[int] = set()
        for d in drafts:
            for im in (d.source, d.target, d.mask, *d.extras):
                if im is not None and im.is_new and id(im) not in done:
                    done.add(id(im))
                    encode_kind(im.pil, im.kind)

    made = 0
    t = time.process_time()
    if synth.inputs == "group":
        for k, members in enumerate(sets):
            rng = np.random.default_rng([seed, int(members[0]["image_id"][:12], 16), 2_000, k])
            drafts = synth.make_group([decode(r, None) for r in members], rng)
            encode(drafts)
            made += len(drafts)
    else:
        for r in photos:
            rng = np.random.default_rng([seed, int(r["image_id"][:12], 16), 0])
            drafts = synth.make(decode(r, side), rng, None)
            encode(drafts)
            made += len(drafts)
    return time.process_time() - t, made


def stage(name: str, images_table: str, out: str, n: int, side: int, profile: cProfile.Profile | None = None,
          images_per_unit: int | None = None):
    """(whole CPU seconds, CPU seconds inside units, wall seconds, counts) of one stage run."""
    from acedata import runtime
    from acedata.pipeline import run_stages
    from acedata.stages.synthesize import SynthesizeConfig

    cfg = SynthesizeConfig(name="synthesize", synthesizers=[name], max_images=n, max_side=side, chain_fraction=0.0,
                           reference_max_set=4, inputs={"images": images_table},
                           **({"images_per_unit": images_per_unit} if images_per_unit else {}))
    inner, spent = runtime.execute_unit, [0.0]

    def timed(stage_obj, unit):
        t = time.process_time()
        try:
            return inner(stage_obj, unit)
        finally:
            spent[0] += time.process_time() - t

    runtime.execute_unit = timed  # _run_local looks the name up per unit
    try:
        t, wall = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        run = run_stages([cfg], out, executor="local")
        if profile is not None:
            profile.disable()
        whole, wall = time.process_time() - t, time.perf_counter() - wall
    finally:
        runtime.execute_unit = inner
    return whole, spent[0], wall, run["stages"][0]["counts"]


def breakdown(prof: cProfile.Profile) -> dict[str, float]:
    """Seconds per part of the unit time, from the profile's cumulative times and call edges."""
    st = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def ct(path_end: str, name: str) -> float:
        return sum(v[3] for k, v in st.items() if k[0].endswith(path_end) and k[2] == name)

    def edges(path_end: str, name: str, caller_in: tuple[str, ...]) -> float:
        total = 0.0
        for k, v in st.items():
            if k[0].endswith(path_end) and k[2] == name:
                total += sum(e[3] for c, e in v[4].items() if c[0].endswith(caller_in))
        return total

    unit = ct("acedata/runtime.py", "timed") or ct("acedata/runtime.py", "execute_unit")
    hashing = ct("acedata/images.py", "pixel_id")
    hash_in_filters = edges("acedata/synth/base.py", "id", ("filters.py", "definitions.py"))
    parts = {
        "read rows (image index, Parquet)": ct("stages/synthesize.py", "_read_ids"),
        "decode": ct("acedata/images.py", "open_rgb_fit") or ct("stages/synthesize.py", "_source"),
        "algorithm (make)": ct("stages/synthesize.py", "_call"),
        "filters": ct("stages/synthesize.py", "_judge") - hash_in_filters,
        "hashing (content ids)": hashing,
        "encode": ct("acedata/codecs.py", "encode_kind") or ct("acedata/images.py", "encode"),
        "Parquet write + commit + index": ct("acedata/shards.py", "write") + ct("acedata/shards.py", "commit")
        + ct("acedata/image_index.py", "write_index") + ct("acedata/shards.py", "clear_attempts"),
    }
    parts["rest (rows, per-item Python)"] = unit - sum(parts.values())
    parts["= unit total"] = unit
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--side", type=int, default=384)
    ap.add_argument("--only", nargs="*", help="synthesizer names (default: every weight-free one)")
    ap.add_argument("--profile", nargs="*", default=[], help="synthesizers to split into parts (cProfile)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side; the fastest counts (load noise)")
    ap.add_argument("--images-per-unit", type=int, default=None,
                    help="photos per unit (default: the stage's); a unit's commit is a fixed cost")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    os.environ.setdefault("TQDM_DISABLE", "1")

    from acedata.demo_data import build
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig
    from acedata.synth import weight_free

    work = tempfile.mkdtemp(prefix="bench-synth-")
    build(os.path.join(work, "corpus"), variants=max(4, -(-args.photos // 12)), seed=0)
    run_stages([IngestConfig(name="ingest", sources=[os.path.join(work, "corpus")])], os.path.join(work, "base"),
               executor="local")
    images_table = os.path.join(work, "base", "ingest", "images")
    photos, sets = _photos(images_table, args.photos)
    names = args.only or weight_free()
    print(f"{len(photos)} photos ({len(sets)} subject sets), long side <= {args.side} px; executor=local; "
          f"cpus={os.cpu_count()}; fastest of {args.repeat}")
    print("CPU seconds (bare loop, stage units, whole stage), ratios stage/bare, wall pairs/s of the stage")
    print(f"{'synthesizer':<16} {'bare s':>7} {'units s':>8} {'whole s':>8} {'units/bare':>11} {'whole/bare':>11} "
          f"{'pairs/s':>8} {'accepted':>9}")
    unit_ratios, whole_ratios = [], []
    for name in names:
        b = u = w = float("inf")
        wall = 0.0
        for k in range(args.repeat):
            b = min(b, bare(name, photos, sets, args.side)[0])
            w_k, u_k, wall_k, c = stage(name, images_table, os.path.join(work, f"stage-{name}-{k}"), args.photos,
                                        args.side, images_per_unit=args.images_per_unit)
            u, w, wall = min(u, u_k), min(w, w_k), max(wall, c["candidates"] / wall_k)
        unit_ratios.append(u / b)
        whole_ratios.append(w / b)
        print(f"{name:<16} {b:>7.2f} {u:>8.2f} {w:>8.2f} {u / b:>11.2f} {w / b:>11.2f} {wall:>8.1f} "
              f"{c['pairs']:>4}/{c['candidates']:<4}", flush=True)
    gm = lambda r: float(np.exp(np.mean(np.log(r))))
    print(f"geometric mean stage/bare: units {gm(unit_ratios):.2f}x, whole {gm(whole_ratios):.2f}x; "
          f"worst units {max(unit_ratios):.2f}x ({names[int(np.argmax(unit_ratios))]})")
    for name in args.profile:
        prof = cProfile.Profile(time.process_time)  # CPU time, like the ratios
        stage(name, images_table, os.path.join(work, f"profile-{name}"), args.photos, args.side, prof,
              args.images_per_unit)
        parts = breakdown(prof)
        total = parts["= unit total"]
        print(f"\nwhere {name}'s unit time goes (cProfile, {total:.2f} s):")
        for part, sec in parts.items():
            print(f"  {part:<34} {sec:>7.3f} s {100 * sec / total:>6.1f}%")


if __name__ == "__main__":
    main()
