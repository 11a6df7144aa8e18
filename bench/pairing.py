"""Pair-mining benchmarks, each against a baseline measured in this process.

(a) embed stage images/s (decode + preprocess on the thread pool, model, Parquet-ready
    output) vs a bare forward loop over the same batches already decoded to tensors;
(b) FAISS spherical k-means vs scikit-learn MiniBatchKMeans on the same vectors: time
    ratio, and inertia (sum of squared distances to the nearest centroid) and cosine
    objective of both;
(c) cluster + pair stages on many generated vectors (local executor, so the process's
    peak RSS is the stages' peak memory): wall time, peak memory, and the similarity
    FLOP rate inside the pair stage vs a bare torch matmul over the same cluster shapes;
    the roofline fraction of the whole stage = (similarity FLOPs / bare-matmul rate) /
    the pair stage's wall time;
(d) mining quality on generated hierarchical data (bridges, near-duplicates, singletons,
    loose fine groups) at several k: precision (a pair touching a bridge is wrong),
    recall, and written pairs outside [tau_low, tau_high];
(e) dense sets larger than max_set_size (65 .. 4000 images at pairwise cosine ~0.9, band
    0.8-0.95): pairs written, out-of-band pairs, largest set, seconds.

    .venv/bin/python bench/pairing.py                 # ~3 min on a small CPU machine
    .venv/bin/python bench/pairing.py --full          # (c) at 100k and 1M x 768
    .venv/bin/python bench/pairing.py --only c --n 100000,300000
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


# --- (a) embed ---------------------------------------------------------------------


def bench_embed(tmp: str, model: str, images: int, batch: int, threads: int) -> None:
    import torch

    from acedata import shards
    from acedata.demo_data import build
    from acedata.images import open_rgb
    from acedata.pipeline import run_stages
    from acedata.stage import RunContext
    from acedata.stages.embed import Embed, EmbedConfig
    from acedata.stages.ingest import IngestConfig

    variants = max(1, -(-images // 12))
    corpus = os.path.join(tmp, "corpus")
    build(corpus, variants=variants, odd=False)
    run = os.path.join(tmp, "embed-run")
    run_stages([IngestConfig(name="ingest", sources=[corpus])], run, executor="local")
    images_dir = os.path.join(run, "ingest", "images")
    cfg = EmbedConfig(name="embed", model={"name": model, "random_init": True}, batch_size=batch,
                      images_per_unit=10_000, decode_threads=threads, inputs={"images": images_dir})
    stage = Embed(cfg, RunContext(run, os.path.join(run, "embed"), {"images": [images_dir]}))
    stage.setup()
    e = stage.embedder
    units = stage.plan()
    rows = shards.read_table(images_dir, ["image"]).column("image").to_pylist()[:images]
    tensors = [e.preprocess(open_rgb(r["bytes"])) for r in rows]
    batches = [torch.stack(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
    n = len(tensors)

    def bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                f = e.model.encode_image(x.to(e.device, e.dtype))
                torch.nn.functional.normalize(f.float(), dim=-1).half().cpu()
        return n / (time.perf_counter() - t)

    def staged() -> float:
        t = time.perf_counter()
        done = 0
        for u in units:
            res = stage.process(u)
            done += res.tables["embeddings"].num_rows
        return done / (time.perf_counter() - t)

    bare()  # warm-up (allocator, kernels)
    b1, s1, b2, s2 = bare(), staged(), bare(), staged()  # interleaved: load drift hits both
    b, s = (b1 + b2) / 2, (s1 + s2) / 2
    print(f"(a) embed {model} random-init, {n} images, batch {batch}, {threads} decode threads, "
          f"device {e.device}, torch threads {torch.get_num_threads()}")
    print(f"    bare forward loop  {b:8.1f} img/s")
    print(f"    embed stage        {s:8.1f} img/s   ratio stage/bare = {s / b:.2f}")


# --- (b) k-means ---------------------------------------------------------------------


def inertia_and_cos(x: np.ndarray, centroids: np.ndarray, cosine: bool) -> tuple[float, float, float]:
    """(inertia to the centroids, inertia of the induced partition to its own means, cosine objective).

    The partition inertia puts both methods on an equal footing: spherical centroids are
    unit-norm, so their raw Euclidean inertia is larger by construction.
    """
    import faiss

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1]) if cosine else faiss.IndexFlatL2(x.shape[1])
    index.add(c)
    _, ids = index.search(x, 1)
    ids = ids[:, 0]
    raw = float(((x - c[ids]) ** 2).sum())
    sums = np.zeros_like(c, dtype=np.float64)
    np.add.at(sums, ids, x)
    counts = np.bincount(ids, minlength=len(c))[:, None]
    means = sums / np.maximum(counts, 1)
    part = float(((x - means[ids]) ** 2).sum())
    unit = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = float(np.einsum("nd,nd->n", x, unit[ids]).sum())
    return raw, part, cos


def bench_kmeans(n: int, d: int, k: int, niter: int) -> None:
    from sklearn.cluster import MiniBatchKMeans

    from acedata.mining.kmeans import train_spherical
    from acedata.mining.synthetic import bulk

    x = bulk(n, d, n_coarse=k, seed=1).astype(np.float32)
    t = time.perf_counter()
    km = train_spherical(x, k, niter=niter, seed=0, gpu="auto", max_points_per_centroid=256)
    tf = time.perf_counter() - t
    t = time.perf_counter()
    mb = MiniBatchKMeans(n_clusters=k, batch_size=4096, max_iter=niter, n_init=1, random_state=0).fit(x)
    ts = time.perf_counter() - t
    fi, fp, fc = inertia_and_cos(x, km.centroids, cosine=True)
    si, sp, sc = inertia_and_cos(x, mb.cluster_centers_.astype(np.float32), cosine=False)
    print(f"(b) k-means n={n} d={d} k={k} niter={niter} (faiss sample {km.train_points}, gpu={km.gpu})")
    print(f"    faiss spherical    {tf:7.2f} s   inertia {fi:10.1f} (partition {fp:10.1f})   cosine objective {fc:10.1f}")
    print(f"    sklearn MiniBatch  {ts:7.2f} s   inertia {si:10.1f} (partition {sp:10.1f})   cosine objective {sc:10.1f}")
    print(f"    time ratio sklearn/faiss = {ts / tf:.2f}   partition inertia ratio faiss/sklearn = {fp / sp:.3f}")


# --- (c) pair stage -------------------------------------------------------------------


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


def bench_pairs(tmp: str, sizes: list[int], d: int, per_cluster: int, tau_low: float, tau_high: float) -> None:
    from acedata import shards
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
        t = time.perf_counter()
        run = run_stages(cfgs, out, executor="local")
        wall = time.perf_counter() - t
        pr = run["stages"][1]
        c = pr["counts"]
        stage_rate = c["sim_flops"] / (c["sim_matmul_us"] / 1e6) / 1e9
        device = "cuda" if __import__("torch").cuda.is_available() else "cpu"
        # the same vectors grouped by cluster (a few clusters' worth is enough for the rates)
        from acedata.mining.vectors import normalize, to_matrix

        clusters = shards.read_table(os.path.join(out, "cluster", "clusters"), ["image_id", "cluster_id"])
        order = np.argsort(clusters.column("cluster_id").to_numpy(), kind="stable")[:200_000]
        cids = clusters.column("cluster_id").to_numpy()[order]
        ids = clusters.column("image_id").take(order)
        emb_t = shards.read_table(emb, ["image_id", "embedding"])
        where = __import__("pyarrow.compute", fromlist=["x"]).index_in(ids, value_set=emb_t.column("image_id"))
        xs = normalize(to_matrix(emb_t.column("embedding").take(where)))
        del emb_t, clusters
        sizes_c = np.bincount(cids)[np.unique(cids)]
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
              f"{frac:.3f} (bare matmul of its FLOPs {bare_s:.1f} s vs stage {pr['seconds']} s; goal >= 0.33)",
              flush=True)
        rows.append((n, cl["seconds"] / n * 1e6, pr["seconds"] / n * 1e6, driver["plan_mib"], worker.get("unit_mib", 0),
                     frac))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(emb, ignore_errors=True)
    print("(c) per-item cost and memory by size (ratios against the smallest size)")
    _, c0, p0, d0, _, _ = rows[0]
    for n, cu, pu, dm, wm, frac in rows:
        print(f"    n={n:>8}  cluster {cu:7.1f} us/item (x{cu / c0:.2f})  pair {pu:7.1f} us/item (x{pu / p0:.2f})  "
              f"pair driver peak {dm:6.0f} MiB (x{dm / d0:.2f})  worker peak {wm:6.0f} MiB  roofline {frac:.3f}")


# --- (d) quality at several k -----------------------------------------------------------


def _write_emb(path: str, x: np.ndarray, ids: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.array(x.tolist(), pa.list_(pa.float32(), x.shape[1]))}),
                   os.path.join(path, "part-0.parquet"))


def bench_quality(tmp: str, ks: list[int | None]) -> None:
    from acedata import shards
    from acedata.mining.synthetic import generate
    from acedata.pipeline import run_stages
    from acedata.stages.cluster import ClusterConfig
    from acedata.stages.pair import PairConfig

    g = generate(n_coarse=30, fine_per_coarse=6, group_size=8, d=128, near_dups=60, bridges=60, singletons=100,
                 loose_fraction=0.2, loose_b2=0.3, seed=3)
    truth = g.true_pairs()
    emb = os.path.join(tmp, "q-emb")
    _write_emb(emb, g.x, g.ids)
    lo, hi = 0.7, 0.97
    print(f"(d) quality: {len(g.ids)} vectors (30 coarse x 6 fine x 8, 20% loose, 60 near-dups, 60 bridges, "
          f"100 singletons), band [{lo}, {hi}], {len(truth)} true pairs")
    for k in ks:
        out = os.path.join(tmp, f"q-{k}")
        cluster = {"k": k} if k else {}
        t = time.perf_counter()
        run = run_stages([ClusterConfig(name="cluster", nredo=3, inputs={"embeddings": emb}, **cluster),
                          PairConfig(name="pair", tau_low=lo, tau_high=hi, guard={"min_pair_sim": lo},
                                     inputs={"embeddings": emb})], out, executor="local")
        secs = time.perf_counter() - t
        pairs = shards.read_table(os.path.join(out, "pair", "pairs"), ["source_id", "target_id", "sim_pass1"])
        got = set(zip(pairs.column("source_id").to_pylist(), pairs.column("target_id").to_pylist()))
        sim = pairs.column("sim_pass1").to_numpy()
        oob = int(((sim < lo - 1e-6) | (sim > hi + 1e-6)).sum())
        tp = len(got & truth)
        kk = run["stages"][0]["kmeans"]["k"]
        print(f"    k={'derived ' + str(kk) if not k else k:>10}  pairs {len(got):6d}  precision "
              f"{tp / max(1, len(got)):.3f}  recall {tp / len(truth):.3f}  out-of-band {oob:5d}  {secs:5.1f} s")


# --- (e) dense sets larger than max_set_size ----------------------------------------------


def bench_dense(tmp: str, sizes: list[int], d: int = 768) -> None:
    import pyarrow as pa

    from acedata import shards
    from acedata.pipeline import run_stages
    from acedata.stages.cluster import ClusterConfig
    from acedata.stages.pair import PairConfig

    print(f"(e) dense sets at pairwise cosine ~0.9 (d={d}), band [0.8, 0.95], max_set_size 64")
    for n in sizes:
        rng = np.random.default_rng(n)
        c = rng.standard_normal(d)
        c /= np.linalg.norm(c)
        noise = rng.standard_normal((n, d))
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x = np.sqrt(0.9) * c + np.sqrt(0.1) * noise
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        emb = os.path.join(tmp, f"dense-emb-{n}")
        _write_emb(emb, x, [f"d{i:05d}" for i in range(n)])
        out = os.path.join(tmp, f"dense-{n}")
        t = time.perf_counter()
        run = run_stages([ClusterConfig(name="cluster", k=1, inputs={"embeddings": emb}),
                          PairConfig(name="pair", tau_low=0.8, tau_high=0.95, inputs={"embeddings": emb})],
                         out, executor="local")
        secs = time.perf_counter() - t
        p = shards.read_table(os.path.join(out, "pair", "pairs"))
        if p.num_rows == 0:  # no shards at all: an empty table
            p = pa.table({"source_id": pa.array([], pa.string()), "target_id": pa.array([], pa.string()),
                          "set_id": pa.array([], pa.int64()), "sim_pass1": pa.array([], pa.float32())})
        sim = p.column("sim_pass1").to_numpy()
        members: dict[int, set[str]] = {}
        for s, a, b in zip(p.column("set_id").to_pylist(), p.column("source_id").to_pylist(),
                           p.column("target_id").to_pylist()):
            members.setdefault(s, set()).update((a, b))
        chain = run["stages"][1]["chaining"]
        print(f"    n={n:5d}  pairs {p.num_rows:6d}  sets {len(members):4d}  largest set "
              f"{max((len(v) for v in members.values()), default=0):3d}  out-of-band "
              f"{int(((sim < 0.8 - 1e-6) | (sim > 0.95 + 1e-6)).sum()):5d}  members_dropped "
              f"{chain['members_dropped']:5d}  {secs:5.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["a", "b", "c", "d", "e"], action="append", help="run only these parts")
    ap.add_argument("--ks", default="15,30,60,120,0", help="(d) k values; 0: derived from N")
    ap.add_argument("--dense", default="65,300,1000,4000", help="(e) dense set sizes")
    ap.add_argument("--dense-d", type=int, default=768, help="(e) dimension")
    ap.add_argument("--full", action="store_true", help="(c) at 1M x 768")
    ap.add_argument("--model", default="ViT-B-32", help="(a) open_clip architecture (random-init)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="(a) decode threads")
    ap.add_argument("--kmeans-n", type=int, default=100_000)
    ap.add_argument("--kmeans-k", type=int, default=256)
    ap.add_argument("--n", default="100000", help="(c) vectors; a comma list runs each size (e.g. 100000,300000)")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--per-cluster", type=int, default=500, help="(c) mean points per cluster (k = n / this)")
    args = ap.parse_args()
    if args.full:
        args.n = "100000,1000000"
    parts = args.only or ["a", "b", "c", "d", "e"]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    logging.disable(logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="bench-pairing-")
    try:
        if "a" in parts:
            bench_embed(tmp, args.model, args.images, args.batch, args.threads)
        if "b" in parts:
            bench_kmeans(args.kmeans_n, 128, args.kmeans_k, 20)
        if "c" in parts:
            bench_pairs(tmp, [int(n) for n in str(args.n).split(",")], args.d, args.per_cluster, tau_low=0.7,
                        tau_high=0.97)
        if "d" in parts:
            bench_quality(tmp, [int(k) or None for k in args.ks.split(",")])
        if "e" in parts:
            bench_dense(tmp, [int(n) for n in args.dense.split(",")], args.dense_d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
