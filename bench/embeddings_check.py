"""`embeddings_input.check` (the check `acedata cluster` / `pair --embeddings` run first): the
driver's peak RSS and CPU on N generated 768-d float16 embeddings, this code against a baseline.

Each measurement is a fresh child process (its VmHWM is its peak). The baseline (`--baseline DIR`,
a checkout of earlier code) scanned serially on the driver, holding every id in a set; this code
runs the scan as units: with `--executor local` they run in the child itself (so its peak is a
unit's plus the driver's), with `ray` on Ray workers (the child is the driver alone).

    git archive 387a189 | tar -x -C /tmp/embc-base
    nice -n 10 .venv/bin/python bench/embeddings_check.py --sizes 1e6 --baseline /tmp/embc-base
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else os.path.dirname(HERE)
sys.path[1:1] = [CODE, os.path.join(CODE, "model")]
from _scale.proc import embeddings, peak_rss_mib, sizes


def child(emb: str, executor: str) -> None:
    import inspect

    from acedata import embeddings_input

    if executor == "ray":
        from acedata.runtime import init_ray

        init_ray("local", num_cpus=2)
    r = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = r.ru_utime + r.ru_stime
    if "executor" in inspect.signature(embeddings_input.check).parameters:
        out = embeddings_input.check([emb], executor)
    else:  # the baseline: serial, on the driver
        out = embeddings_input.check([emb])
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"result": out, "peak_rss_mib": round(peak_rss_mib()), "driver_cpu_s":
                      round(r.ru_utime + r.ru_stime - cpu0, 1)}))


def run(code: str, emb: str, executor: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([code, os.path.join(code, "model")]),
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    p = subprocess.run([sys.executable, __file__, "--child", emb, "--executor", executor, "--code", code],
                       capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2e5")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--work", default="/tmp/acedata-bench-embcheck")
    ap.add_argument("--baseline", help="a checkout of the code to compare with")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--code")
    ap.add_argument("--child")
    ap.add_argument("--executor", default="local")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.executor)
        return 0
    os.makedirs(a.work, exist_ok=True)
    for n in sizes(a.sizes):
        emb = embeddings(a.work, n, a.dim)
        rows = {}
        if a.baseline:
            rows["baseline"] = run(a.baseline, emb, "local")
        for ex in a.executors.split(","):
            rows[ex] = run(os.path.dirname(HERE), emb, ex)
        for name, r in rows.items():
            print(f"N={n:,} {name:>8}: driver peak {r['peak_rss_mib']:>6} MiB, driver CPU {r['driver_cpu_s']:>6} s, "
                  f"{r['result']}", flush=True)
        if a.baseline:
            for ex in a.executors.split(","):
                print(f"N={n:,} {ex} / baseline peak RSS: {rows[ex]['peak_rss_mib'] / rows['baseline']['peak_rss_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
