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
    from acedata.commands._common import add_run_options

    add_run_options(p)
    p.set_defaults(func=run)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    from acedata.commands._common import config_option as opt
    from acedata.stages.cluster import ClusterConfig as C

    p.add_argument("--embeddings", required=True,
                   help="embeddings table folder or Parquet file (image_id + embedding, float16/32, list or fixed)")
    p.add_argument("--out", required=True, help="output run directory")
    opt(p, C, "k", "number of clusters (default: N / --target-cluster-size)")
    opt(p, C, "target_cluster_size", "points per cluster when k is derived from N")
    opt(p, C, "border_margin", "a point within this cosine of its second centroid is mined in both clusters")
    opt(p, C, "niter", "k-means iterations")
    opt(p, C, "max_points_per_centroid", "training sample bound per centroid")
    opt(p, C, "seed", "sampling and k-means seed")
    opt(p, C, "gpu", "FAISS on GPU")


def cluster_config(args: argparse.Namespace):
    from acedata import storage
    from acedata.commands._common import config_values
    from acedata.errors import UserError
    from acedata.stages.cluster import ClusterConfig

    if not storage.exists_uri(args.embeddings):
        raise UserError(f"embeddings {args.embeddings!r} does not exist")
    from acedata import embeddings_input

    # A table made elsewhere: bad rows fail here, in one line. The check runs as units on the run's
    # executor, its scratch in the run output (where every Ray node can reach it), removed after.
    concurrency = 2
    if args.executor == "ray":
        import ray

        from acedata import runtime

        runtime.init_ray(args.address)
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 2)))
    out = storage.absolute(args.out)
    had_out = storage.exists_uri(out)
    try:
        embeddings_input.check([args.embeddings], args.executor, storage.join(out, "_scratch"), concurrency)
    except UserError:
        if not had_out and not storage.listdir(out):  # a refused table leaves no empty run folder
            storage.delete_dir(out)
        raise
    return ClusterConfig(name="cluster", inputs={"embeddings": storage.absolute(args.embeddings)},
                         **config_values(args, ClusterConfig))


def run(args: argparse.Namespace) -> int:
    from acedata.commands._common import print_run
    from acedata.pipeline import run_stages

    result = run_stages([cluster_config(args)], args.out, executor=args.executor, address=args.address, name="cluster")
    print_run(result, args.json)
    if not args.json:
        print("cluster sizes:", result["stages"][0].get("cluster_sizes"))
    return 0
