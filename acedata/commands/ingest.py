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
    p.add_argument("--min-side", type=int, default=32)
    p.add_argument("--max-aspect", type=float, default=8.0)
    p.add_argument("--max-pixels", type=int, default=64_000_000)
    p.add_argument("--max-side", type=int, default=4096, help="downscale larger images (0: never)")
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.commands._common import print_run
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig

    cfg = IngestConfig(
        name="ingest",
        sources=[storage.absolute(s) for s in args.sources],  # resolved where typed, before Ray
        min_side=args.min_side,
        max_aspect=args.max_aspect,
        max_pixels=args.max_pixels,
        max_side=args.max_side or None,
    )
    result = run_stages([cfg], args.out, executor=args.executor, address=args.address, name="ingest")
    print_run(result, args.json)
    c = result["stages"][0]["counts"]
    print(f"inputs {c.get('inputs', 0)} = images {c.get('images', 0)} + duplicates {c.get('duplicates', 0)}"
          f" + quarantined {c.get('quarantine', 0)}")
    return 0
