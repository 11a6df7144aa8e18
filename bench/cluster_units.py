"""Cluster stage, unit by unit: each kind of unit's largest peak RSS, and CPU per item, at several N.

The stage runs with the local executor in a fresh process (k = N / 1000, as `bench/scale.py --only
meta` runs it: flat k-means at 10^5, two-level at 10^6). Before each unit the process's peak RSS is
reset (`/proc/self/clear_refs` 5), so VmHWM after it is that unit's peak: the process's own memory
included, as a Ray worker's peak includes its imports. `rise` is the part the unit added.
`--baseline DIR` also runs a checkout of earlier code (its child with PYTHONPATH=DIR) on the same
input, then prints per-kind ratios (this code / baseline) and whether both wrote the same rows.

    nice -n 10 .venv/bin/python bench/cluster_units.py --sizes 1e5,1e6 --baseline /tmp/acedata-base
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# the code measured: a child's --code (this checkout's or the baseline's), else this checkout
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else os.path.dirname(HERE)
sys.path[1:1] = [CODE, os.path.join(CODE, "model")]
from _scale.proc import embeddings, peak_rss_mib, sizes


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _kind(payload: dict) -> str:
    return next((k for k in ("sample", "route", "fine") if k in payload), "assign")


def _digest(stage_dir: str) -> str:
    """The rows both tables hold, in a fixed order (shard names carry attempt ids)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from acedata import shards

    h = hashlib.sha256()
    for table, keys in (("clusters", ["image_id"]), ("members", ["cluster_id", "image_id"])):
        t = shards.read_table(os.path.join(stage_dir, table))
        t = t.take(pc.sort_indices(t, sort_keys=[(k, "ascending") for k in keys]))
        for name in t.column_names:
            col = t.column(name).combine_chunks()
            h.update(name.encode())
            if name == "image_id":
                h.update("\n".join(col.to_pylist()).encode())
            elif pa.types.is_fixed_size_binary(col.type):
                h.update(col.buffers()[1])
            else:
                h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()[:16]


def child(emb: str, out: str, n: int) -> None:
    import logging

    from acedata.pipeline import run_stages
    from acedata.stages.cluster import Cluster, ClusterConfig

    logging.disable(logging.WARNING)
    units: dict[str, dict] = {}
    process = Cluster.process

    def measured(self, unit):
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
            f.write("5")
        before, c0 = _rss_mib(), time.process_time()
        try:
            return process(self, unit)
        finally:
            peak = peak_rss_mib()
            u = units.setdefault(_kind(unit.payload), {"units": 0, "peak_mib": 0.0, "rise_mib": 0.0, "cpu_s": 0.0})
            u["units"] += 1
            u["peak_mib"] = round(max(u["peak_mib"], peak))
            u["rise_mib"] = round(max(u["rise_mib"], peak - before))
            u["cpu_s"] = round(u["cpu_s"] + time.process_time() - c0, 2)

    Cluster.process = measured
    c0, t0 = time.process_time(), time.time()
    s = run_stages([ClusterConfig(name="cluster", k=max(1, n // 1000), gpu=False, inputs={"embeddings": emb})],
                   out, executor="local")["stages"][0]
    cpu, wall = time.process_time() - c0, time.time() - t0
    import acedata

    print(json.dumps({"code": os.path.dirname(os.path.dirname(acedata.__file__)), "n": n, "k": s["kmeans"]["k"], "two_level": "two_level" in s["kmeans"],
                      "cpu_ms_per_item": round(1000 * cpu / n, 4), "wall_s": round(wall, 1),
                      "units": units, "rows": _digest(os.path.join(out, "cluster"))}))


def run(code: str, emb: str, out: str, n: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, os.path.join(HERE, "cluster_units.py"), "--code", code, "--child", emb, out,
                        str(n)], check=False, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        raise SystemExit(f"child failed ({code}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e5,1e6")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--work", default="/tmp/cluster-units-bench", help="generated inputs are kept here")
    ap.add_argument("--baseline", help="a checkout of earlier code, run on the same inputs")
    ap.add_argument("--child", nargs=3, metavar=("EMB", "OUT", "N"))
    ap.add_argument("--code", help=argparse.SUPPRESS)  # a child's checkout (read before the imports)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]))
        return 0
    for n in sizes(a.sizes):
        emb = embeddings(a.work, n, a.dim)
        new = run(os.path.dirname(HERE), emb, os.path.join(a.work, f"units-{n}"), n)
        print(json.dumps(new), flush=True)
        if a.baseline:
            old = run(a.baseline, emb, os.path.join(a.work, f"units-{n}-base"), n)
            print(json.dumps({"baseline": old}), flush=True)
            ratios = {k: round(v["peak_mib"] / old["units"][k]["peak_mib"], 2)
                      for k, v in new["units"].items() if k in old["units"]}
            print(f"n={n}: peak RSS this/baseline by unit kind {ratios}; CPU per item "
                  f"{new['cpu_ms_per_item']} / {old['cpu_ms_per_item']} ms = "
                  f"{new['cpu_ms_per_item'] / old['cpu_ms_per_item']:.2f}; rows "
                  f"{'identical' if new['rows'] == old['rows'] else 'DIFFER'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
