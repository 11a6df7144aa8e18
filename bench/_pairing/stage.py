"""Pair-mining benchmark (c), run by bench/pairing.py: cluster + pair stages on many generated
vectors, their wall time and peak memory, and the similarity kernel's FLOP rate against a bare
torch matmul over the same cluster shapes (the roofline fraction of the whole stage), and the
stage's CPU seconds against the CPU seconds its FLOPs take at the one-thread bare matmul's rate
(`scale.bare_matmul_cpu_gflops`: judged the same on a busy machine)."""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np


def write_vectors(path: str, n: int, d: int, n_coarse: int) -> None:
    import pyarrow as pa

    from acedata.mining.synthetic import bulk
    from acedata.mining.vectors import fixed_list
    from acedata.schemas import schema_for
    from acedata.shards import ShardWriter, finalize_manifest

    schema = schema_for("embeddings", dim=d)
    w = ShardWriter(path, schema, unit="gen", max_rows=200_000)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        x = bulk(m, d, n_coarse, seed=s + 1)  # each chunk: its own groups (of 8 consecutive rows)
        w.write(pa.table({"image_id": [f"v{i:08d}" for i in range(s, s + m)], "embedding": fixed_list(x),
                          "model": ["synthetic"] * m}, schema=schema))
    w.commit()
    finalize_manifest(path, schema, table="embeddings")


def kernel_vs_bare(x: np.ndarray, sizes: np.ndarray, tau: tuple[float, float], device: str,
                   budget_s: float = 20.0) -> tuple[float, float]:
    """GFLOP/s of the pair stage's similarity kernel (`band_edges`) and of a bare torch
    matmul over the same blocks, interleaved cluster by cluster on real cluster shapes
    (so load changes on a shared machine hit both alike)."""
    import torch

    from acedata.mining.similarity import BandStats, band_edges

    rng = np.random.default_rng(0)
    start = np.concatenate([[0], np.cumsum(sizes)])
    warm = np.ascontiguousarray(x[: min(len(x), 1024)], dtype=np.float32)
    band_edges(warm, *tau, device=device)  # first calls pay for thread pools and buffers
    torch.from_numpy(warm).to(device) @ torch.from_numpy(warm).to(device).T
    stats = BandStats()
    flops, secs = 0.0, 0.0
    for c in rng.permutation(len(sizes)):
        xc = np.ascontiguousarray(x[start[c] : start[c + 1]], dtype=np.float32)
        if len(xc) < 2:
            continue
        band_edges(xc, *tau, device=device, stats=stats)
        xt = torch.from_numpy(xc).to(device)
        for r0 in range(0, len(xc), 4096):
            for c0 in range(r0, len(xc), 4096):
                t = time.perf_counter()
                y = xt[r0 : r0 + 4096] @ xt[c0 : c0 + 4096].T
                if device != "cpu":
                    torch.cuda.synchronize()
                secs += time.perf_counter() - t
                flops += 2.0 * y.shape[0] * y.shape[1] * xc.shape[1]
        if secs + stats.matmul_seconds > budget_s:
            break
    return stats.flops / stats.matmul_seconds / 1e9, flops / secs / 1e9


_PROBE = r"""
import json, sys, time, logging
logging.disable(logging.WARNING)
from acedata.stage import RunContext
from acedata.stages.pair import Pair, PairConfig
run, emb = sys.argv[1], sys.argv[2]
tables = {t: [f"{run}/cluster/{t}"] for t in ("clusters", "members")} | {"embeddings": [emb]}
cfg = PairConfig(name="pair", tau_low=0.7, tau_high=0.97, guard={"min_pair_sim": 0.6})
stage = Pair(cfg, RunContext(run, f"{run}/pair-probe", tables))

def hwm():  # this process's peak RSS (MiB); unlike ru_maxrss it does not inherit the parent's at fork
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

r0, t = hwm(), time.perf_counter()
units = stage.plan()
out = {"import_mib": r0, "plan_mib": hwm(), "plan_s": time.perf_counter() - t, "units": len(units)}
stage.setup()
t = time.perf_counter()
stage.process(units[0])
out.update(unit_mib=hwm(), unit_s=time.perf_counter() - t)
print(json.dumps(out))
"""


def probe(run: str, emb: str) -> dict:
    """Peak RSS of pair's driver (`plan`, in a fresh process: no Ray, no earlier stages' memory),
    then of the same process as a worker (`setup` + one unit; the peak includes the plan's)."""
    import json
    import subprocess

    r = subprocess.run([sys.executable, "-c", _PROBE, run, emb], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def grouped_by_cluster(out: str, emb: str) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of `emb` ordered by their cluster in run `out` (the first 200k: a few clusters'
    worth is enough for the rates) and the sizes of those clusters in that order."""
    from acedata import shards
    from acedata.mining.vectors import normalize, to_matrix

    clusters = shards.read_table(os.path.join(out, "cluster", "clusters"), ["image_id", "cluster_id"])
    order = np.argsort(clusters.column("cluster_id").to_numpy(), kind="stable")[:200_000]
    cids = clusters.column("cluster_id").to_numpy()[order]
    ids = clusters.column("image_id").take(order)
    emb_t = shards.read_table(emb, ["image_id", "embedding"])
    where = __import__("pyarrow.compute", fromlist=["x"]).index_in(ids, value_set=emb_t.column("image_id"))
    xs = normalize(to_matrix(emb_t.column("embedding").take(where)))
    return xs, np.bincount(cids)[np.unique(cids)]


def bench_pairs(tmp: str, sizes: list[int], d: int, per_cluster: int, tau_low: float, tau_high: float) -> None:
    from scale import bare_matmul_cpu_gflops

    from acedata.pipeline import run_stages
    from acedata.stages.cluster import ClusterConfig
    from acedata.stages.pair import PairConfig

    rows = []
    for n in sizes:
        emb = os.path.join(tmp, f"emb-{n}")
        k = max(1, n // per_cluster)
        t = time.perf_counter()
        write_vectors(emb, n, d, n_coarse=max(1, k))
        gen = time.perf_counter() - t
        out = os.path.join(tmp, f"pair-run-{n}")
        cfgs = [ClusterConfig(name="cluster", k=k, inputs={"embeddings": emb}),
                PairConfig(name="pair", tau_low=tau_low, tau_high=tau_high, guard={"min_pair_sim": tau_low - 0.1},
                           inputs={"embeddings": emb})]
        cl = run_stages(cfgs[:1], out, executor="local")["stages"][0]
        driver = worker = probe(out, emb)
        t, t_cpu = time.perf_counter(), time.process_time()
        run = run_stages(cfgs, out, executor="local")  # cluster is done: this is the pair stage, in this process
        wall, cpu = time.perf_counter() - t, time.process_time() - t_cpu
        pr = run["stages"][1]
        c = pr["counts"]
        stage_rate = c["sim_flops"] / (c["sim_matmul_us"] / 1e6) / 1e9
        device = "cuda" if __import__("torch").cuda.is_available() else "cpu"
        xs, sizes_c = grouped_by_cluster(out, emb)
        kern, bare = kernel_vs_bare(xs, sizes_c, (tau_low, tau_high), device)
        bare_s = c["sim_flops"] / (bare * 1e9)
        frac = bare_s / pr["seconds"]
        print(f"(c) cluster + pair, {n} x {d} float16 vectors, k={k} (generated in {gen:.0f} s)")
        print(f"    cluster {cl['seconds']} s, pair {pr['seconds']} s (wall {wall:.1f} s): pair units read "
              f"{c.get('read_us', 0) / 1e6:.1f} s, mine {c['mine_us'] / 1e6:.1f} s, similarity matmuls "
              f"{c['sim_matmul_us'] / 1e6:.1f} s")
        print(f"    pair driver: plan {driver['plan_s']:.2f} s, peak RSS {driver['plan_mib']:.0f} MiB "
              f"(after imports {driver['import_mib']:.0f} MiB); worker: the first unit of {worker['units']} "
              f"{worker.get('unit_s', 0):.1f} s, peak RSS {worker.get('unit_mib', 0):.0f} MiB")
        print(f"    cluster sizes {cl['cluster_sizes']}")
        print(f"    pass-1 edges {c['pass1_edges']}, final sets {c.get('final_sets', 0)}, pairs {c.get('pairs', 0)}, "
              f"chaining {pr['chaining']}")
        print(f"    similarity: {c['sim_flops'] / 1e12:.2f} TFLOP at {stage_rate:.1f} GFLOP/s inside the stage run")
        print(f"    kernel vs bare matmul, interleaved on the same cluster blocks ({device}): {kern:.1f} vs "
              f"{bare:.1f} GFLOP/s -> fraction {kern / bare:.2f}")
        print(f"    whole pair stage: {c['sim_flops'] / pr['seconds'] / 1e9:.1f} GFLOP/s = roofline fraction "
              f"{frac:.3f} (bare matmul of its FLOPs {bare_s:.1f} s vs stage {pr['seconds']} s; goal >= 0.33)")
        core_s = c["sim_flops"] / (bare_matmul_cpu_gflops(d) * 1e9)
        print(f"    CPU (load-robust): pair stage {cpu:.1f} CPU s vs {core_s:.1f} CPU s for its FLOPs at the one-thread "
              f"bare matmul's GFLOP per CPU second = {cpu / core_s:.2f}x (goal <= 3x)", flush=True)
        rows.append((n, cl["seconds"] / n * 1e6, pr["seconds"] / n * 1e6, driver["plan_mib"], worker.get("unit_mib", 0),
                     frac))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(emb, ignore_errors=True)
    print("(c) per-item cost and memory by size (ratios against the smallest size)")
    _, c0, p0, d0, _, _ = rows[0]
    for n, cu, pu, dm, wm, frac in rows:
        print(f"    n={n:>8}  cluster {cu:7.1f} us/item (x{cu / c0:.2f})  pair {pu:7.1f} us/item (x{pu / p0:.2f})  "
              f"pair driver peak {dm:6.0f} MiB (x{dm / d0:.2f})  worker peak {wm:6.0f} MiB  roofline {frac:.3f}")
