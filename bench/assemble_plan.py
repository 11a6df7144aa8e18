"""Assemble's driver memory: the distributed planner (waves on Ray workers) vs the single-process
reference planner (what the driver did before: every pair, instruction and image size in memory).

For each size N (images; ~0.7 N pairs with edit chains, from bench/_scale/data.py) it runs, each in
a fresh process: the assemble stage on a private 2-CPU Ray (`distributed`), and `reference.plan`
alone (`reference`). It prints the driver's peak RSS (VmHWM of that process; Ray workers are
other processes), wall time, and the ratio of each to the previous size. Goal: the distributed
driver's peak flat in N, while the reference grows with it.

    python bench/assemble_plan.py --sizes 20000 100000 [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DRIVER = r"""
import json, os, sys, time
mode, inputs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
from acedata.assemble.config import AssembleConfig
cfg = dict(max_history=3, validation_fraction=0.1, rows_per_unit=5000, dataset_card=False)
t0 = time.time()
if mode == "reference":
    from acedata.assemble import reference
    p = reference.plan(AssembleConfig(name="ref", **cfg), [inputs["images"]], [inputs["pairs"]],
                       [inputs["instructions"]], [])
    rows = sum(len(v) for v in p.samples.values())
else:
    from acedata.pipeline import run_stages
    s = run_stages([AssembleConfig(name="assemble", inputs=inputs, **cfg)], out, executor="ray", num_cpus=2)
    c = s["stages"][0]["counts"]
    rows = c["lcu"] + c["lcu_validation"]
# VmHWM: this process's own peak (ru_maxrss would start from the forking parent's size)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_mib": hwm / 1024,
                  "wall_s": time.time() - t0, "rows": rows}))
"""


def run(mode: str, inputs: dict[str, str], out: str) -> dict[str, float]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run([sys.executable, "-c", DRIVER, mode, json.dumps(inputs), out], env=env,
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000], help="images per run")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    from _scale import data as scale_data

    work = args.work or tempfile.mkdtemp(prefix="asm-plan-")
    print(f"{'N':>9} {'mode':>12} {'rows':>9} {'driver MiB':>11} {'wall s':>8} {'MiB ratio':>10}")
    prev: dict[str, float] = {}
    for n in args.sizes:
        inputs = scale_data.assemble_inputs(os.path.join(work, f"in-{n}"), n)
        for mode in ("reference", "distributed"):
            out = os.path.join(work, f"run-{n}")
            shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resumed one
            r = run(mode, inputs, out)
            ratio = f"{r['rss_mib'] / prev[mode]:.2f}" if mode in prev else "-"
            prev[mode] = r["rss_mib"]
            print(f"{n:>9,} {mode:>12} {r['rows']:>9,} {r['rss_mib']:>11.0f} {r['wall_s']:>8.1f} {ratio:>10}", flush=True)


if __name__ == "__main__":
    main()
