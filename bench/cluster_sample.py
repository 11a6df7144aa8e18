"""Cluster's training sample: the driver's peak RSS and wall, drawn on the driver (`sample_rows`,
the former `plan`) vs in a wave (`acedata.mining.sample`: units in worker processes, `pick` on the
driver). Each variant runs in a fresh process so its peak RSS is its own; the units run in a
spawned pool, whose memory is not the driver's. Both give the same sample (checked).

    .venv/bin/python bench/cluster_sample.py --sizes 1e5,1e6 --dim 768 --work /tmp/cs-bench
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _scale.proc import embeddings, peak_rss_mib, sizes


def _unit(args):
    from acedata.mining import sample

    unit, stage_dir = args
    return sample.write_candidates(unit, stage_dir)


def child(variant: str, emb: str, want: int, out: str, rows_per_unit: int) -> None:
    from acedata.mining import sample
    from acedata.stages.cluster import shard_rows

    base = peak_rss_mib()
    t0 = time.time()
    worker_s = 0.0
    if variant == "old":
        x = sample.sample_rows([emb], want, 0, set())
        driver_s = time.time() - t0
    else:
        stage_dir = os.path.join(out, "stage")
        n = sum(r for _, r in shard_rows([emb]))
        units = sample.sample_units([emb], rows_per_unit, 0, sample.threshold(want, n, sample.FIRST_FACTOR), 0)
        planned = time.time() - t0
        t1 = time.time()
        with mp.get_context("spawn").Pool(2) as pool:
            pool.map(_unit, [(u, stage_dir) for u in units])
        worker_s = time.time() - t1
        t2 = time.time()
        x, _ = sample.pick(stage_dir, [u.id for u in units], want, False)
        driver_s = planned + time.time() - t2
    np.save(os.path.join(out, f"{variant}.npy"), x)
    print(json.dumps({"variant": variant, "driver_s": round(driver_s, 2), "workers_wall_s": round(worker_s, 2),
                      "driver_peak_rss_mib": round(peak_rss_mib()), "rss_after_imports_mib": round(base)}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e5,1e6")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--want", type=int, default=0, help="sample size (0: cluster's default config's for n)")
    ap.add_argument("--rows-per-unit", type=int, default=200_000)
    ap.add_argument("--work", default="/tmp/cluster-sample-bench")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "EMB", "OUT"))
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.want, a.child[2], a.rows_per_unit)
        return 0
    from acedata.mining.kmeans import derive_k, sample_size
    from acedata.stages.cluster import ClusterConfig

    c = ClusterConfig(name="cluster")
    for n in sizes(a.sizes):
        want = a.want or sample_size(derive_k(n, c.target_cluster_size), c.max_points_per_centroid,
                                     c.min_points_per_centroid, c.max_train_points)
        emb = embeddings(a.work, n, a.dim)
        out = os.path.join(a.work, f"out-{n}")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for v in ("old", "new"):
            r = subprocess.run([sys.executable, __file__, "--want", str(want), "--rows-per-unit",
                                str(a.rows_per_unit), "--child", v, emb, out], check=True,
                               capture_output=True, text=True)
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
            print(json.dumps({"n": n, "dim": a.dim, "want": want, **json.loads(line)}), flush=True)
        same = np.array_equal(np.load(os.path.join(out, "old.npy")), np.load(os.path.join(out, "new.npy")))
        print(json.dumps({"n": n, "same_sample": same}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
