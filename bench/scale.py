"""Benchmark: the scale curve — cost per item of every stage as N grows, and peak memory.

Two families of runs, each stage driven through the `acedata` CLI in a child process that is
measured per stage (bench/_scale/measure.py: CPU seconds from the process tree, driver and
worker peak RSS):

- images: `acedata run bench/scale.yaml` (ingest, random-init SigLIP embed, cluster, pair,
  synthesize, templates-only instruct, assemble) plus `acedata stats`, on generated 512-1024 px
  JPEGs (bench/_scale/data.py; cached under --cache, made once);
- meta: `acedata pair --embeddings` (cluster + pair) on generated 768-d embeddings, `acedata run`
  of an assemble-only spec on generated pairs/instructions/images tables, `acedata stats` on
  its output — metadata-sized work (10^4-10^6 rows; 10^7 with --full).

Prints CPU ms per item (item = one source image) at each size and the ratio between sizes
(goal: flat within +-20%), and writes a JSON file that `acedata plan-cost` reads.

    .venv/bin/python bench/scale.py                     # images 100,400; meta 2e4,1e5 (~1 h on 2 busy cores)
    .venv/bin/python bench/scale.py --only meta --meta-sizes 100000,1000000
    .venv/bin/python bench/scale.py --full              # images 1e4,1e5; meta 1e5,1e6,1e7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml
from _scale import data as scale_data
from _scale.measure import STARTUP, measure, tree_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SPEC = os.path.join(HERE, "scale.yaml")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "model"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)  # an embedded Ray per run: its processes are the child's tree
    return env


def acedata(*args: str) -> list[str]:
    return [sys.executable, "-m", "acedata", *args]


def _check(m: dict[str, Any], log: str, what: str) -> None:
    if m["rc"] != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{what} failed (rc {m['rc']}); log {log}:\n{tail}")


def _stages(run_dir: str, m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-stage record: wall seconds and counts from _run.json, CPU and RSS from the sampler,
    bytes of each table folder the stage wrote."""
    with open(os.path.join(run_dir, "_run.json"), encoding="utf-8") as f:
        run = json.load(f)
    out = {}
    for s in run["stages"]:
        d = os.path.join(run_dir, s["name"])
        tables = {t: tree_bytes(os.path.join(d, t)) for t in sorted(os.listdir(d))
                  if os.path.isdir(os.path.join(d, t)) and not t.startswith("_")}
        out[s["name"]] = {"wall_s": s.get("seconds"), "counts": s.get("counts", {}), "table_bytes": tables,
                          **m["stages"].get(s["name"], {"cpu_s": 0.0})}
    return out


def _stats(dataset: str, work: str, env: dict[str, str]) -> dict[str, Any]:
    log = os.path.join(work, "stats.log")
    m = measure(acedata("stats", dataset, "--json"), env, log, stage="stats")
    _check(m, log, "acedata stats")
    return {"wall_s": m["wall_s"], **m["stages"]["stats"]}


def run_images(n: int, cache: str, work: str, env: dict[str, str]) -> dict[str, Any]:
    t = time.time()
    scale_data.photo_cache(cache, n)
    print(f"  photos: {n} in cache ({time.time() - t:.0f} s to make the missing ones)", flush=True)
    run_dir = os.path.join(work, f"images-{n}")
    scale_data.corpus(cache, n, os.path.join(run_dir, "corpus"))
    log = os.path.join(work, f"images-{n}.log")
    m = measure(acedata("run", SPEC, "--out", run_dir), env, log, os.path.join(run_dir, "_status.json"))
    _check(m, log, f"acedata run (images {n})")
    stages = _stages(run_dir, m)
    stages["stats"] = _stats(os.path.join(run_dir, "assemble"), work, env)
    return {"kind": "images", "n": n, "wall_s": m["wall_s"], "cpu_total_s": m["cpu_total_s"],
            "startup": m["stages"].get(STARTUP, {}), "corpus_bytes": tree_bytes(cache) * n // max(1, _count(cache)),
            "stages": stages}


def _count(d: str) -> int:
    return sum(1 for n in os.listdir(d) if n.endswith(".jpg"))


def run_meta(n: int, work: str, env: dict[str, str], d: int, per_cluster: int) -> dict[str, Any]:
    t = time.time()
    emb = scale_data.embeddings(os.path.join(work, f"emb-{n}"), n, d=d, per_cluster=per_cluster)
    inputs = scale_data.assemble_inputs(os.path.join(work, f"asm-in-{n}"), n)
    print(f"  generated {n} embeddings + assemble inputs in {time.time() - t:.0f} s", flush=True)
    stages: dict[str, Any] = {}
    run_dir = os.path.join(work, f"pair-{n}")
    log = run_dir + ".log"
    k = max(1, n // per_cluster)
    m = measure(acedata("pair", "--embeddings", emb, "--out", run_dir, "--k", str(k)), env, log,
                os.path.join(run_dir, "_status.json"))
    _check(m, log, f"acedata pair ({n})")
    stages.update(_stages(run_dir, m))
    shutil.rmtree(emb)
    spec = {"name": "scale-assemble", "executor": "ray", "ray": {"num_cpus": 2}, "stages": [
        {"stage": "assemble", "inputs": inputs, "max_history": 3, "validation_fraction": 0.1,
         "rows_per_unit": 5000, "seed": 0}]}
    spec_path = os.path.join(work, f"assemble-{n}.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f)
    asm_dir = os.path.join(work, f"asm-{n}")
    log = asm_dir + ".log"
    m2 = measure(acedata("run", spec_path, "--out", asm_dir), env, log, os.path.join(asm_dir, "_status.json"))
    _check(m2, log, f"acedata run assemble ({n})")
    stages.update(_stages(asm_dir, m2))
    stages["stats"] = _stats(os.path.join(asm_dir, "assemble"), work, env)
    return {"kind": "meta", "n": n, "dim": d, "k": k, "wall_s": m["wall_s"] + m2["wall_s"],
            "cpu_total_s": m["cpu_total_s"] + m2["cpu_total_s"], "startup": m["stages"].get(STARTUP, {}),
            "stages": stages}


# --- report ------------------------------------------------------------------------------


def report(runs: list[dict[str, Any]]) -> None:
    for kind in ("images", "meta"):
        rs = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["n"])
        if not rs:
            continue
        names = list(dict.fromkeys(s for r in rs for s in r["stages"]))
        print(f"\n{kind}: CPU ms per image (wall s) | driver / worker peak RSS MiB; ratio = per-item cost vs the "
              "previous size (goal 0.8-1.2)")
        print(f"{'stage':<12}" + "".join(f"{'n=' + format(r['n'], ',d'):>34}" for r in rs) + "   ratios")
        for s in names:
            cells, ratios, prev = [], [], None
            for r in rs:
                st = r["stages"].get(s)
                if not st:
                    cells.append(f"{'-':>34}")
                    prev = None
                    continue
                per = 1000 * st["cpu_s"] / r["n"]
                cells.append(f"{per:9.3f} ({st.get('wall_s') or 0:7.1f}) {st.get('driver_peak_mib', 0):6.0f}/"
                             f"{st.get('worker_peak_mib', 0):5.0f}")
                if prev:
                    ratios.append(f"{per / prev:.2f}")
                prev = per or None
            print(f"{s:<12}" + "".join(cells) + "   " + " ".join(ratios))
        print(f"{'(startup)':<12}" + "".join(f"{r['startup'].get('cpu_s', 0):>20.1f} s CPU{'':>9}" for r in rs))


def merge(path: str, runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Replace (kind, n) entries of an existing result file; keep the others."""
    body = {"runs": []}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    new = {(r["kind"], r["n"]) for r in runs}
    body["runs"] = [r for r in body.get("runs", []) if (r["kind"], r["n"]) not in new] + runs
    body.setdefault("machines", []).append(meta)
    body["host"] = meta["host"]
    return body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-sizes", default="100,400", help="comma-separated image counts")
    ap.add_argument("--meta-sizes", default="20000,100000", help="comma-separated row counts")
    ap.add_argument("--full", action="store_true", help="images 1e4,1e5 and meta 1e5,1e6,1e7")
    ap.add_argument("--only", choices=["images", "meta"])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--per-cluster", type=int, default=1000, help="k = N / this for the meta cluster runs")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/acedata/bench-photos"))
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", help="result JSON (default bench/results/scale-<host>.json); merged by (kind, n)")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="run nothing: merge result files into --out and report")
    a = ap.parse_args()
    if a.merge:
        body: dict[str, Any] = {"runs": [], "machines": []}
        for path in a.merge:
            with open(path, encoding="utf-8") as f:
                part = json.load(f)
            keys = {(r["kind"], r["n"]) for r in part["runs"]}
            body["runs"] = [r for r in body["runs"] if (r["kind"], r["n"]) not in keys] + part["runs"]
            body["machines"] += part.get("machines", [])
            body["host"] = part.get("host", body.get("host"))
        with open(a.out or os.path.join(HERE, "results", "merged.json"), "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
        report(body["runs"])
        return 0
    img = [int(x) for x in ("10000,100000" if a.full else a.image_sizes).split(",") if x]
    meta = [int(x) for x in ("100000,1000000,10000000" if a.full else a.meta_sizes).split(",") if x]
    host = platform.node() or "host"
    out = a.out or os.path.join(HERE, "results", f"scale-{host}.json")
    work = a.work or tempfile.mkdtemp(prefix="acedata-scale-")
    os.makedirs(work, exist_ok=True)
    env = _env()
    machine = {"host": host, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "started": time.time(),
               "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False,
                                     capture_output=True, text=True).stdout.strip()}
    runs = []
    try:
        for n in ([] if a.only == "meta" else img):
            print(f"images n={n}", flush=True)
            runs.append(run_images(n, a.cache, work, env))
            report(runs)
        for n in ([] if a.only == "images" else meta):
            print(f"meta n={n}", flush=True)
            runs.append(run_meta(n, work, env, a.dim, a.per_cluster))
            report(runs)
    finally:
        if runs:
            machine["loadavg_end"] = os.getloadavg()
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            body = merge(out, runs, machine)
            with open(out, "w", encoding="utf-8") as f:
                json.dump(body, f, indent=1)
            print(f"\nresults -> {out}")
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    report(body["runs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
