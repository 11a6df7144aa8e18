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
    the pair stage's wall time; and load-robust, the stage's CPU seconds / (similarity FLOPs
    at the one-thread bare matmul's GFLOP per CPU second), goal <= 3x;
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
from _pairing.stage import bench_pairs


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


# --- (d) quality at several k -----------------------------------------------------------


def _write_emb(path: str, x: np.ndarray, ids: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.array(x.tolist(), pa.list_(pa.float32(), x.shape[1]))}),
                   os.path.join(path, "part-0.parquet"))


def bench_quality(tmp: str, ks: list[int | None], two_level: bool = False) -> None:
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
    runs = [(k, lvl) for k in ks for lvl in ((None, 1) if two_level else (1024,))]
    for k, lvl in runs:  # two_level: each k flat (None), then two-level (threshold 1)
        out = os.path.join(tmp, f"q-{k}-{lvl}")
        cluster = {"k": k, "two_level_min_k": lvl} if k else {"two_level_min_k": lvl}
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
        how = ("  two-level" if "two_level" in run["stages"][0]["kmeans"] else "  flat     ") if two_level else ""
        print(f"    k={'derived ' + str(kk) if not k else k:>10}{how}  pairs {len(got):6d}  precision "
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
    ap.add_argument("--two-level", action="store_true", help="(d) each k flat and two-level k-means")
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
            bench_quality(tmp, [int(k) or None for k in args.ks.split(",")], args.two_level)
        if "e" in parts:
            bench_dense(tmp, [int(n) for n in args.dense.split(",")], args.dense_d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
