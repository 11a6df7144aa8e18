"""The pair stage's CPU against the bare matmul's CPU for the same similarity FLOPs, on a run that
already has a cluster stage (so the same inputs can be mined again and again, before and after a
change), in this process with the local code path (`Pair.plan`, `setup`, then per unit `process` and
writing its pairs shard: `runtime.execute_unit`).

CPU seconds (time.process_time: every thread of this process), not wall: on a shared machine
they move far less with other load. Printed per run:

- stage CPU / bare CPU of the same blocks: after each unit, a bare `torch.mm` over exactly the
  kernel's block shapes of that unit's clusters (its inverse is the kernel share of the stage);
- stage CPU / (similarity FLOPs at the one-thread bare matmul rate, GFLOP per CPU second:
  `scale.bare_matmul_cpu_gflops`), the figure bench/scale.py reports (goal <= 3x);
- stage wall / (FLOPs at the wall-clock bare rate), for reference (load-bound here);
- a digest of the pairs (sorted rows of every column; order-free), which a change that keeps the
  output must not move; `--profile FILE` writes a cProfile of the units.

    .venv/bin/python bench/pair_cpu.py RUN_DIR [--units 20] [--profile /tmp/pair.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import logging
import os
import sys
import time

import numpy as np


def pairs_digest(tables: list) -> tuple[int, str]:
    """Rows and a digest of the pairs, order-free: every column of the rows sorted by pair_id,
    through Arrow IPC (the same content gives the same bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not tables or not sum(t.num_rows for t in tables):
        return 0, "empty"
    t = pa.concat_tables(tables)
    t = t.take(pc.sort_indices(t, sort_keys=[("pair_id", "ascending")])).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return t.num_rows, hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def bare_blocks_cpu(sizes: list[int], d: int, block: int, reps: int = 1) -> float:
    """CPU seconds of a bare torch.mm over the blocks `band_edges` multiplies for clusters of `sizes`."""
    import torch

    rng = np.random.default_rng(0)
    big = torch.from_numpy(rng.standard_normal((max(sizes), d), dtype=np.float32))
    out = torch.empty(block * block)
    t = time.process_time()
    with torch.inference_mode():
        for n in sizes:
            x = big[:n]
            for r0 in range(0, n, block):
                rows = x[r0:r0 + block]
                for c0 in range(r0, n, block):
                    cols = x[c0:c0 + block]
                    torch.mm(rows, cols.T, out=out[:len(rows) * len(cols)].view(len(rows), len(cols)))
    return time.process_time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory with cluster/{clusters,members} (bench/scale.py meta layout)")
    ap.add_argument("--embeddings", help="the embeddings table (default RUN/../emb)")
    ap.add_argument("--units", type=int, default=0, help="only the first N units (0: all)")
    ap.add_argument("--profile", help="write a cProfile of the units' process() here")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from scale import bare_matmul_cpu_gflops, bare_matmul_gflops

    from acedata import shards
    from acedata.mining.members import read_meta
    from acedata.runtime import execute_unit
    from acedata.stage import RunContext
    from acedata.stages.pair import Pair, PairConfig

    run = os.path.abspath(a.run)
    emb = a.embeddings or os.path.join(os.path.dirname(run), "emb")
    tables = {t: [f"{run}/cluster/{t}"] for t in ("clusters", "members")} | {"embeddings": [emb]}
    stage = Pair(PairConfig(name="pair", inputs={"embeddings": emb}), RunContext(run, f"{run}/pair-cpu", tables))
    units = stage.plan()
    if a.units:
        units = units[:a.units]
    stage.setup()
    sizes = np.asarray(read_meta(f"{run}/cluster/members")["sizes"], np.int64)
    d = 768
    bare_blocks_cpu([4096], d, stage.config.block)  # thread pool and buffers warm
    g_wall, g_cpu = bare_matmul_gflops(d), bare_matmul_cpu_gflops(d)
    prof = cProfile.Profile(time.process_time) if a.profile else None  # CPU, not wall: load moves wall
    cpu = wall = bare = 0.0
    flops = 0.0
    counts: dict[str, int] = {}
    for u in units:
        lo, hi = u.payload["clusters"]
        t, w = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        got = execute_unit(stage, u)  # process + writing the unit's pairs shard, as a worker does
        if prof:
            prof.disable()
        cpu += time.process_time() - t
        wall += time.perf_counter() - w
        bare += bare_blocks_cpu([int(s) for s in sizes[lo:hi + 1] if s >= 2], d, stage.config.block)
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
        flops = counts.get("sim_flops", 0)
    rows, digest = pairs_digest([shards.read_table(stage.ctx.out("pairs"))])
    if prof:
        prof.dump_stats(a.profile)
    core_s = flops / (g_cpu * 1e9)
    print(f"pair on {run}: {len(units)} units, {rows} pairs, digest {digest}; torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    kept = {k: v for k, v in sorted(counts.items()) if not k.endswith(("_us", "micros"))}
    print(f"  counts (timings left out) digest {hashlib.sha256(repr(kept).encode()).hexdigest()[:16]}: "
          f"pass1_sets {kept.get('pass1_sets')}, final_sets {kept.get('final_sets')}, guard1_sets_incoherent "
          f"{kept.get('guard1_sets_incoherent')}, guard1_members_dropped {kept.get('guard1_members_dropped')}")
    print(f"  stage {cpu:.1f} CPU s ({wall:.1f} s wall): read {counts.get('read_us', 0) / 1e6:.1f} s, mine "
          f"{counts.get('mine_us', 0) / 1e6:.1f} s, kernel {counts.get('sim_matmul_us', 0) / 1e6:.1f} s (wall)")
    print(f"  bare torch.mm over the same blocks {bare:.1f} CPU s: stage/bare = {cpu / bare:.2f} "
          f"(kernel share {bare / cpu:.3f})")
    print(f"  {flops / 1e12:.3f} TFLOP at the one-thread bare rate {g_cpu:.1f} GFLOP/CPU-s = {core_s:.1f} CPU s: "
          f"stage CPU = {cpu / core_s:.2f}x (goal <= 3x)")
    print(f"  wall: bare {g_wall:.1f} GFLOP/s -> {flops / (g_wall * 1e9):.1f} s; stage wall = "
          f"{wall / (flops / (g_wall * 1e9)):.2f}x (load-bound here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
