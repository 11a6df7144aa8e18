"""Review app: item pages (item JSON + its images) served per second and p95 latency, from a
run with >= 100k pairs, against reading the same rows directly with pyarrow in this process.

The run is the review tool's sample run (acedata.review.sample): 100k generated pair rows and
200k instruction rows over a handful of real photographs, so the images repeat — after the
first request of each image the server answers from its resized-image cache, which is the
steady state of an annotator's session too (the page preloads the next item); the first,
cold fetch of each image is reported separately. The server is the real `acedata review`
process (uvicorn, SQLite) on loopback; requests come over HTTP from one client thread.
The annotator's write path (claim + decision, committed before the answer) is measured too.

    .venv/bin/python bench/review.py [--pairs 100000] [--items 400]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "review"))


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) >= 20 else max(xs)


def pyarrow_item(run: str, pid: str) -> int:
    """The same rows the item page needs, read with pyarrow filters: pair, candidates, image bytes."""
    from acedata.review.catalog import run_tables

    pair = pq.read_table(run_tables(run, "pairs")[0], filters=[("pair_id", "=", pid)]).to_pylist()[0]
    cands = pq.read_table(run_tables(run, "instructions")[0], filters=[("pair_id", "=", pid)],
                          columns=["variant", "instruction", "method", "provenance"]).to_pylist()
    ids = [i for i in (pair["source_id"], *(pair["extra_input_ids"] or []), pair["mask_id"], pair["target_id"]) if i]
    imgs = pq.read_table(run_tables(run, "images")[0], filters=pc.field("image_id").isin(ids),
                         columns=["image_id", "image"])
    return len(cands) + sum(len(b["bytes"]) > 0 for b in imgs.column("image").to_pylist())


def serve_pages(api, pids: list[str]) -> tuple[list[float], list[float], int, float]:
    """Item pages over HTTP: (cold latencies of the first 5, steady latencies, images fetched, pages/s)."""

    def page(pid: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        item = api.http.get(f"/api/items/{pid}", headers=api.headers).json()
        n = 0
        for image_id in (*item["inputs"], item["mask"], item["target"]):
            if image_id:
                r = api.http.get(f"/img/{image_id}?s=768", headers=api.headers)
                assert r.status_code == 200
                n += 1
        return time.perf_counter() - t0, n

    cold = [page(p)[0] for p in pids[:5]]  # first requests: images decoded and resized
    lat, images = [], 0
    t = time.perf_counter()
    for pid in pids:
        dt, n = page(pid)
        lat.append(dt)
        images += n
    return cold, lat, images, len(pids) / (time.perf_counter() - t)


def pyarrow_pages(run: str, pids: list[str]) -> tuple[list[float], float]:
    """The baseline: the same rows read in process. (latencies, items/s)"""
    base_lat = []
    t = time.perf_counter()
    for pid in pids:
        t0 = time.perf_counter()
        pyarrow_item(run, pid)
        base_lat.append(time.perf_counter() - t0)
    return base_lat, len(base_lat) / (time.perf_counter() - t)


def decisions(api, db: str, run: str) -> tuple[list[float], float]:
    """200 claim + accept round trips on a fresh queue: (latencies, decisions/s)."""
    from review_helpers import make_queue

    make_queue(db, run, "w", size=300, seed=0)
    wl = []
    t = time.perf_counter()
    for _ in range(200):
        t0 = time.perf_counter()
        item = api.claim("w")
        assert api.decide("w", item["pair_id"], decision="accept", candidate=1).status_code == 200
        wl.append(time.perf_counter() - t0)
    return wl, len(wl) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=400, help="item pages requested from the server")
    ap.add_argument("--baseline-items", type=int, default=100, help="items read directly with pyarrow")
    args = ap.parse_args()

    from review_helpers import Api, Server, add_users

    from acedata.review.sample import build_run

    tmp = tempfile.mkdtemp(prefix="bench-review-")
    srv = None
    try:
        run = os.path.join(tmp, "run")
        t = time.perf_counter()
        counts = build_run(run, n_pairs=args.pairs)
        print(f"sample run: {counts} in {time.perf_counter() - t:.1f} s")
        db = "sqlite:///" + os.path.join(tmp, "review.db")
        add_users(db, "bench")
        t = time.perf_counter()
        srv = Server(run, db).start()
        print(f"server up (catalog of {args.pairs} pairs loaded) in {time.perf_counter() - t:.1f} s")
        api = Api(srv.url, "bench")
        rng = random.Random(0)
        pids = [f"p{rng.randrange(args.pairs):06d}" for _ in range(args.items)]

        cold, lat, images, server_rate = serve_pages(api, pids)
        base_lat, base_rate = pyarrow_pages(run, pids[: args.baseline_items])
        wl, write_rate = decisions(api, db, run)

        print(f"server : {server_rate:8.1f} item pages/s ({images / len(pids):.1f} images each, "
              f"{server_rate * images / len(pids):.0f} images/s), p95 {1000 * p95(lat):.1f} ms, "
              f"first (cold) pages {1000 * max(cold):.0f} ms max")
        print(f"pyarrow: {base_rate:8.1f} items/s (pair + candidates + image bytes by filter), "
              f"p95 {1000 * p95(base_lat):.1f} ms")
        print(f"ratio server/pyarrow: {server_rate / base_rate:.1f}x")
        print(f"writes : {write_rate:8.1f} claim+decision/s (each committed before the answer), "
              f"p95 {1000 * p95(wl):.1f} ms")
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
