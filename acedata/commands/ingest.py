"""`acedata ingest SOURCE... --out DIR`: ingest image collections."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="ingest image folders, Parquet files and WebDataset tars into an images table",
        description="Decode, normalise and content-address images. Every input ends in "
        "DIR/ingest/images, DIR/ingest/duplicates or DIR/ingest/quarantine (with a reason).",
    )
    p.add_argument("sources", nargs="+", help="folders (recursive), .parquet files, .tar WebDataset shards: local paths "
                   "or URIs (s3://bucket/corpus/, gs://..., file://..., memory://...)")
    p.add_argument("--out", required=True, help="output run directory (local path or URI)")
    p.add_argument("--id-scheme", choices=["xxh3-128", "sha256"], default=None,
                   help="image id scheme of a new run: xxh3-128 (the default) or sha256; an existing run keeps its own")
    from acedata.commands._common import add_run_options
    from acedata.commands._common import config_option as opt
    from acedata.stages.ingest import IngestConfig as C

    opt(p, C, "min_side", "quarantine images with a shorter side")
    opt(p, C, "max_aspect", "quarantine images with a larger long/short side ratio")
    opt(p, C, "max_pixels", "quarantine images with more pixels")
    opt(p, C, "max_side", "downscale larger images (0: never)")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.commands._common import config_values, print_run
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig

    values = config_values(args, IngestConfig)
    values["max_side"] = values["max_side"] or None  # 0 on the command line: never downscale
    cfg = IngestConfig(name="ingest", sources=[storage.absolute(s) for s in args.sources],  # resolved before Ray
                       **values)
    result = run_stages([cfg], args.out, executor=args.executor, address=args.address, name="ingest",
                        id_scheme=args.id_scheme)
    print_run(result, args.json)
    c = result["stages"][0]["counts"]
    print(f"inputs {c.get('inputs', 0)} = images {c.get('images', 0)} + duplicates {c.get('duplicates', 0)}"
          f" + quarantined {c.get('quarantine', 0)}")
    return 0
