"""Benchmark: the scale curve — cost per item of every stage as N grows, and peak memory.

Two families of runs, each stage driven through the `acedata` CLI in a child process that is
measured per stage (bench/_scale/measure.py: CPU seconds from the process tree, driver and
worker peak RSS; the whole tree is stopped past --rss-limit-gib and the size recorded as
`incomplete`, never priced):

- images: `acedata run bench/scale.yaml` (ingest, random-init SigLIP embed, cluster, pair,
  synthesize, templates-only instruct, assemble) plus `acedata stats`, on generated ~460-980 px
  JPEGs (bench/_scale/data.py: variants of 256 decoded bases, every file distinct in pixels;
  made once under --cache, ~8 ms each: 10^5 photos ~6 GB, ~7 min on 2 cores);
- meta: `acedata pair --embeddings` (cluster + pair, k = N/1000) on generated 768-d float16
  embeddings, then `acedata run` of an assemble-only spec on generated images/pairs/instructions
  tables (0.7 pairs per image, 30% chains) and `acedata stats` on its output. Everything is
  generated in shards (2^18 embedding rows, 2^20 metadata rows), never whole in memory.
  Cluster + pair run only up to --pair-max (default 10^6): 10^7 x 768 is 15 GB as float16 and
  30 GB as float32, which the current pair/cluster planners would hold on the driver of this
  24 GiB machine; so 10^7 measures assemble planning + stats only (stated in the JSON as
  `pair_skipped`). `--dim 64 --pair-max 1e7` runs mining at 10^7 at a reduced, labelled dim.

Prints CPU ms per item (item = one source image / one metadata row) at each size, the wall time,
driver / largest-worker peak RSS, and the ratio between sizes ('!' outside the +-20% goal);
then the cost model's check: each family's largest run predicted from the smaller ones the way
`acedata plan-cost` prices (predicted / measured per stage and in total, goal within 25%).
Writes (merges by kind and size) a JSON that `acedata plan-cost --measurements FILE` reads.

    .venv/bin/python bench/scale.py                     # images 100,400; meta 2e4,1e5 (~30 min here)
    .venv/bin/python bench/scale.py --only images --image-sizes 1e3,1e4,1e5 --cache /work/scale-cache
    .venv/bin/python bench/scale.py --only meta --meta-sizes 1e5,1e6,1e7
    .venv/bin/python bench/scale.py --full              # images 1e4,1e5; meta 1e5,1e6,1e7
    .venv/bin/python bench/scale.py --report FILE       # print the tables and the check again
    .venv/bin/python bench/scale.py --merge A.json B.json --out C.json

How long on the 2-vCPU development VM (nice 10, load 15-40; README "What 10^9 images cost" has
the details): photos ~8 ms each; images 300 / 1,000: 14 / 32 min; 10^4: ~7,000 CPU s (~1 h of
2 idle cores, ~5 h at the share a loaded machine gives); 10^5: ~70,000 CPU s and ~75 GB of
synthesized images, too much for this machine. Meta 10^5: 5 min; 10^6: ~46 min with generation.
A size stopped part-way is kept under `incomplete` (--salvage WORK records one whose harness died).
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
from _scale.report import report, report_check, report_incomplete
from _scale.results import merge, partial_stages, salvage

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


def run_images(n: int, cache: str, work: str, env: dict[str, str], rss_limit: float | None) -> dict[str, Any]:
    t = time.time()
    photos = scale_data.photo_cache(cache, n)
    print(f"  photos: {n} in {photos} ({time.time() - t:.0f} s to make the missing ones)", flush=True)
    run_dir = os.path.join(work, f"images-{n}")
    _fresh(run_dir, keep="corpus")
    scale_data.corpus(photos, n, os.path.join(run_dir, "corpus"))
    log = os.path.join(work, f"images-{n}.log")
    m = measure(acedata("run", SPEC, "--out", run_dir), env, log, os.path.join(run_dir, "_status.json"),
                rss_limit_mib=rss_limit, progress=os.path.join(work, f"images-{n}.progress.json"))
    base = {"kind": "images", "n": n, "corpus_bytes": scale_data.corpus_bytes(photos, n)}
    if m["rc"] != 0:
        return _incomplete(base, m, log, run_dir)
    stages = _stages(run_dir, m)
    stages["stats"] = _stats(os.path.join(run_dir, "assemble"), work, env)
    return {**base, "wall_s": m["wall_s"], "cpu_total_s": m["cpu_total_s"],
            "startup": m["stages"].get(STARTUP, {}), "stages": stages}


def _fresh(run_dir: str, keep: str | None = None) -> None:
    """Clear what an earlier run left in run_dir (a rerun with the same --work would otherwise
    resume its finished units and measure almost nothing); `keep` survives (the linked corpus)."""
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name == keep:
            continue
        p = os.path.join(run_dir, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


def _incomplete(base: dict[str, Any], m: dict[str, Any], log: str, run_dir: str | None = None) -> dict[str, Any]:
    """A run that failed or was stopped: what the sampler saw per stage, kept apart from `runs`
    (plan-cost never prices from it)."""
    with open(log, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-1500:]
    why = (f"stopped: process tree RSS {m['over_rss_limit']['tree_mib']:.0f} MiB over the "
           f"{m['over_rss_limit']['limit_mib']:.0f} MiB limit") if "over_rss_limit" in m else f"rc {m['rc']}"
    print(f"  INCOMPLETE ({why}); log {log}:\n{tail}", flush=True)
    return {**base, "incomplete": why, "wall_s": m["wall_s"], "cpu_total_s": m["cpu_total_s"],
            "stages": partial_stages(m["stages"], run_dir)}


def run_meta(n: int, work: str, env: dict[str, str], d: int, per_cluster: int, pair_max: int,
             rss_limit: float | None) -> dict[str, Any]:
    """cluster + pair on n generated embeddings (only when n <= pair_max: n x d float16 is written
    to disk and the current planners hold it whole), then assemble + stats on n images' tables."""
    stages: dict[str, Any] = {}
    wall = cpu = 0.0
    startup: dict[str, Any] = {}
    base: dict[str, Any] = {"kind": "meta", "n": n, "dim": d}
    if n <= pair_max:
        t = time.time()
        emb = scale_data.embeddings(os.path.join(work, f"emb-{n}"), n, d=d, per_cluster=per_cluster)
        print(f"  generated {n} x {d} embeddings in {time.time() - t:.0f} s", flush=True)
        run_dir = os.path.join(work, f"pair-{n}")
        log = run_dir + ".log"
        k = max(1, n // per_cluster)
        base["k"] = k
        base["bare_matmul_gflops"] = bare_matmul_gflops(d)
        base["bare_matmul_cpu_gflops"] = bare_matmul_cpu_gflops(d)
        _fresh(run_dir)
        m = measure(acedata("pair", "--embeddings", emb, "--out", run_dir, "--k", str(k)), env, log,
                    os.path.join(run_dir, "_status.json"), rss_limit_mib=rss_limit,
                    progress=run_dir + ".progress.json")
        shutil.rmtree(emb)
        if m["rc"] != 0:
            return _incomplete(base, m, log, run_dir)
        stages.update(_stages(run_dir, m))
        shutil.rmtree(run_dir, ignore_errors=True)
        wall, cpu, startup = m["wall_s"], m["cpu_total_s"], m["stages"].get(STARTUP, {})
    else:
        base["pair_skipped"] = f"n > --pair-max {pair_max:,}"
    t = time.time()
    inputs = scale_data.assemble_inputs(os.path.join(work, f"asm-in-{n}"), n)
    print(f"  generated assemble inputs for {n} images in {time.time() - t:.0f} s", flush=True)
    spec = {"name": "scale-assemble", "executor": "ray", "ray": {"num_cpus": 2}, "stages": [
        {"stage": "assemble", "inputs": inputs, "max_history": 3, "validation_fraction": 0.1,
         "rows_per_unit": 5000, "seed": 0}]}
    spec_path = os.path.join(work, f"assemble-{n}.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f)
    asm_dir = os.path.join(work, f"asm-{n}")
    _fresh(asm_dir)
    log = asm_dir + ".log"
    m2 = measure(acedata("run", spec_path, "--out", asm_dir), env, log, os.path.join(asm_dir, "_status.json"),
                 rss_limit_mib=rss_limit, progress=asm_dir + ".progress.json")
    if m2["rc"] != 0:
        return _incomplete({**base, "stages_done": stages}, m2, log, asm_dir)
    stages.update(_stages(asm_dir, m2))
    stages["stats"] = _stats(os.path.join(asm_dir, "assemble"), work, env)
    shutil.rmtree(os.path.join(work, f"asm-in-{n}"), ignore_errors=True)
    shutil.rmtree(asm_dir, ignore_errors=True)
    return {**base, "wall_s": wall + m2["wall_s"], "cpu_total_s": cpu + m2["cpu_total_s"],
            "startup": startup or m2["stages"].get(STARTUP, {}), "stages": stages}


def bare_matmul_gflops(d: int, block: int = 4096, repeat: int = 5) -> float:
    """The roofline the pair stage is held to: float32 block x d @ d x block in this process (best of
    `repeat`), measured right before the stage so it meets the same machine load."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((block, d), dtype=np.float32)
    b = rng.standard_normal((d, block), dtype=np.float32)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return round(2 * block * block * d / best / 1e9, 2)


def bare_matmul_cpu_gflops(d: int, block: int = 4096, repeat: int = 5) -> float:
    """The load-robust roofline: the same float32 block x d @ d x block on one thread, in GFLOP per
    CPU second (time.process_time; best of `repeat`). Other processes on a shared machine slow its
    wall clock, not (much) its CPU time, so "stage CPU s / (similarity FLOPs at this rate)" can be
    judged on a busy machine; one thread is the GEMM's own cost, without a thread pool's waits."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((block, d), dtype=np.float32)
    b = rng.standard_normal((d, block), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(1, user_api="blas"):
        for _ in range(repeat):
            t = time.process_time()
            a @ b
            best = min(best, time.process_time() - t)
    return round(2 * block * block * d / best / 1e9, 2)


def _sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def report_all(body: dict[str, Any]) -> None:
    """The tables, the unfinished runs and the check of a result body."""
    report(body["runs"])
    report_incomplete(body)
    report_check(body)


def merge_files(paths: list[str], out: str) -> dict[str, Any]:
    """Result files merged by (kind, n), later files winning, written to `out`."""
    body: dict[str, Any] = {"runs": [], "incomplete": [], "machines": []}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        for key in ("runs", "incomplete"):
            keys = {(r["kind"], r["n"]) for r in part.get(key, [])}
            body[key] = [r for r in body[key] if (r["kind"], r["n"]) not in keys] + part.get(key, [])
        done = {(r["kind"], r["n"]) for r in body["runs"]}
        body["incomplete"] = [r for r in body["incomplete"] if (r["kind"], r["n"]) not in done]
        body["machines"] += part.get("machines", [])
        body["host"] = part.get("host", body.get("host"))
        if part.get("note"):  # provenance written by hand: kept, later files' appended
            body["note"] = " ".join(x for x in (body.get("note"), part["note"]) if x)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
    return body


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-sizes", default="100,400", help="comma-separated image counts (1e4 is fine)")
    ap.add_argument("--meta-sizes", default="20000,100000", help="comma-separated row counts")
    ap.add_argument("--full", action="store_true", help="images 1e4,1e5 and meta 1e5,1e6,1e7")
    ap.add_argument("--only", choices=["images", "meta"])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--per-cluster", type=int, default=1000, help="k = N / this for the meta cluster runs")
    ap.add_argument("--pair-max", type=float, default=1e6,
                    help="meta sizes above this run assemble + stats only (N x dim embeddings must fit on disk "
                    "and in the pair stage's memory; default 1e6)")
    ap.add_argument("--rss-limit-gib", type=float, default=16.0,
                    help="stop a run whose process tree passes this much RSS (recorded as incomplete)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/acedata/bench-scale"),
                    help="generated photos, kept between runs (1e5 photos: ~6 GB)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", help="result JSON (default bench/results/scale-<host>.json); merged by (kind, n)")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="run nothing: merge result files into --out and report")
    ap.add_argument("--report", metavar="FILE", help="run nothing: print the tables and the check of a result file")
    ap.add_argument("--salvage", metavar="WORK", help="run nothing: record the unfinished image runs in WORK "
                    "(progress files, _status.json) under `incomplete` of --out")
    return ap


def main() -> int:
    a = _parser().parse_args()
    if a.report:
        with open(a.report, encoding="utf-8") as f:
            body = json.load(f)
        report_all(body)
        return 0
    if a.salvage:
        salvage(a.salvage, a.out or os.path.join(HERE, "results", f"scale-{platform.node() or 'host'}.json"))
        return 0
    if a.merge:
        report_all(merge_files(a.merge, a.out or os.path.join(HERE, "results", "merged.json")))
        return 0
    img = _sizes("1e4,1e5" if a.full else a.image_sizes)
    meta = _sizes("1e5,1e6,1e7" if a.full else a.meta_sizes)
    host = platform.node() or "host"
    out = a.out or os.path.join(HERE, "results", f"scale-{host}.json")
    work = a.work or tempfile.mkdtemp(prefix="acedata-scale-")
    os.makedirs(work, exist_ok=True)
    env = _env()
    limit = a.rss_limit_gib * 1024 if a.rss_limit_gib > 0 else None
    machine = {"host": host, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "started": time.time(),
               "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False,
                                     capture_output=True, text=True).stdout.strip(),
               "args": sys.argv[1:]}
    runs: list[dict[str, Any]] = []
    body: dict[str, Any] = {"runs": []}

    def save() -> None:
        nonlocal body
        machine["loadavg_end"] = os.getloadavg()
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        body = merge(out, runs[-1:], dict(machine))
        with open(out, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)

    try:
        for n in ([] if a.only == "meta" else img):
            print(f"images n={n:,}", flush=True)
            runs.append(run_images(n, a.cache, work, env, limit))
            save()  # after every size: a later failure or a stop keeps what was measured
            report(runs)
        for n in ([] if a.only == "images" else meta):
            print(f"meta n={n:,}", flush=True)
            runs.append(run_meta(n, work, env, a.dim, a.per_cluster, int(a.pair_max), limit))
            save()
            report(runs)
    finally:
        if runs:
            print(f"\nresults -> {out}")
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    report_all(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
