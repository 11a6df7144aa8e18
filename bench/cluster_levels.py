"""Cluster stage alone, flat vs two-level k-means: CPU per item and peak RSS, at several N.

Each (N, variant) runs the cluster stage with the local executor in a fresh process, so the
process's CPU time is the stage's (driver and units) and its peak RSS (VmHWM) is the driver's
plus one unit's at a time; `--executor ray` runs the units in Ray workers, so the peak RSS is the
driver's alone (CPU then the driver's only). Defaults: k derived (N / 1000), flat (`two_level_min_k: null`) vs
two-level (`two_level_min_k: 1`).

    .venv/bin/python bench/cluster_levels.py --sizes 1e5,1e6 --work /tmp/cl-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _scale.proc import embeddings, peak_rss_mib, sizes


def child(emb: str, out: str, variant: str, executor: str) -> None:
    import logging

    from acedata.pipeline import run_stages
    from acedata.stages.cluster import ClusterConfig

    logging.disable(logging.WARNING)
    lvl = None if variant == "flat" else 1
    t0, c0 = time.time(), time.process_time()
    s = run_stages([ClusterConfig(name="cluster", gpu=False, two_level_min_k=lvl, inputs={"embeddings": emb})],
                   out, executor=executor)["stages"][0]
    cpu, wall = time.process_time() - c0, time.time() - t0
    n = s["kmeans"]["vectors"]
    print(json.dumps({"variant": variant, "n": n, "k": s["kmeans"]["k"],
                      "coarse_k": s["kmeans"].get("two_level", {}).get("coarse_k"),
                      "cpu_ms_per_item": round(1000 * cpu / n, 4), "wall_s": round(wall, 1),
                      "executor": executor, "peak_rss_mib": round(peak_rss_mib()),
                      "cluster_sizes": s["cluster_sizes"]}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e5,1e6")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--variants", default="flat,two")
    ap.add_argument("--executor", default="local", help="ray: units in worker processes, RSS the driver's alone")
    ap.add_argument("--work", default="/tmp/cluster-levels-bench")
    ap.add_argument("--child", nargs=3, metavar=("EMB", "OUT", "VARIANT"))
    a = ap.parse_args()
    if a.child:
        child(*a.child, a.executor)
        return 0
    for n in sizes(a.sizes):
        emb = embeddings(a.work, n, a.dim)
        for v in a.variants.split(","):
            out = os.path.join(a.work, f"run-{n}-{v}")
            shutil.rmtree(out, ignore_errors=True)
            r = subprocess.run([sys.executable, __file__, "--executor", a.executor, "--child", emb, out, v], check=False, capture_output=True,
                               text=True)
            lines = r.stdout.strip().splitlines()
            print(lines[-1] if lines else r.stderr[-3000:], flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
