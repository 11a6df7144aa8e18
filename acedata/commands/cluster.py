"""`acedata cluster --embeddings FILE_OR_DIR --out DIR [--k K]`: spherical k-means."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster",
        help="FAISS spherical k-means over an embeddings table",
        description="Train k cosine centroids on a bounded sample and assign every embedding; writes "
        "DIR/cluster/clusters (image_id, cluster_id, distance) and cluster-size statistics.",
    )
    add_cluster_args(p)
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    from acedata.stages.cluster import ClusterConfig

    default = {k: f.default for k, f in ClusterConfig.model_fields.items()}  # defaults live in the config
    p.add_argument("--embeddings", required=True,
                   help="embeddings table folder or Parquet file (image_id + embedding, float16/32, list or fixed)")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--k", type=int, default=None, help="number of clusters (default: N / --target-cluster-size)")
    p.add_argument("--target-cluster-size", type=int, default=default["target_cluster_size"],
                   help="points per cluster when k is derived from N")
    p.add_argument("--border-margin", type=float, default=default["border_margin"],
                   help="a point within this cosine of its second centroid is mined in both clusters")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--max-points-per-centroid", type=int, default=256, help="training sample bound per centroid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", choices=["auto", "true", "false"], default="auto")


def cluster_config(args: argparse.Namespace):
    from acedata import storage
    from acedata.errors import UserError
    from acedata.stages.cluster import ClusterConfig

    if not storage.exists_uri(args.embeddings):
        raise UserError(f"embeddings {args.embeddings!r} does not exist")
    from acedata import embeddings_input

    embeddings_input.check([args.embeddings])  # a table made elsewhere: bad rows fail here, in one line
    gpu = {"auto": "auto", "true": True, "false": False}[args.gpu]
    return ClusterConfig(name="cluster", k=args.k, target_cluster_size=args.target_cluster_size,
                         border_margin=args.border_margin, niter=args.niter,
                         max_points_per_centroid=args.max_points_per_centroid,
                         seed=args.seed, gpu=gpu, inputs={"embeddings": storage.absolute(args.embeddings)})


def run(args: argparse.Namespace) -> int:
    from acedata.commands._common import print_run
    from acedata.pipeline import run_stages

    result = run_stages([cluster_config(args)], args.out, executor=args.executor, address=args.address, name="cluster")
    print_run(result, args.json)
    if not args.json:
        print("cluster sizes:", result["stages"][0].get("cluster_sizes"))
    return 0
