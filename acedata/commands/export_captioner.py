"""`acedata export-captioner RUN_DIR --out DIR`: instruction-captioner fine-tuning data."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-captioner",
        help="export (pair, instruction) records with their images, to fine-tune an instruction captioner",
        description="Writes fine-tuning records for an instruction captioner. Inputs come first, the target image "
        "last; paths are relative to DIR. Formats: internvl (DIR/captioner.jsonl, InternVL chat layout), messages "
        "(DIR/captioner.jsonl, content parts), sharegpt (DIR/captioner_sharegpt.json plus a dataset_info.json entry "
        "'acedata_captioner' for LLaMA-Factory), hf (DIR/data/*.parquet, a Hugging Face dataset with the image "
        "bytes inline: datasets.load_dataset(DIR)). Image files go to DIR/images/ (except hf). "
        "When the run has a reviews table (RUN/review/reviews), the default is --curated: only pairs a reviewer "
        "accepted or corrected, with the human text; --no-curated exports every machine instruction instead.",
    )
    p.add_argument("run_dir", help="run directory with instructions, pairs and images tables")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["internvl", "messages", "sharegpt", "hf"], default="internvl")
    p.add_argument("--curated", action=argparse.BooleanOptionalAction, default=None,
                   help="only accepted or corrected pairs with the reviewed text (default: on when the run has "
                   "reviews, off otherwise)")
    p.add_argument("--reviews", help="a reviews table to curate by (default: RUN/review/reviews)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="instruction methods to keep when not curated (default: template llm_rewrite mllm_llm "
                   "captioner)")
    p.add_argument("--first-variant-only", action="store_true", help="one record per pair (variant 0; not curated)")
    p.add_argument("--limit", type=int, help="at most this many records")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from acedata import shards
    from acedata.errors import UserError
    from acedata.instruct.export import CURATED_METHODS, export_captioner_data, find_tables
    from acedata.review.table import reviews_dir

    instructions = find_tables(args.run_dir, "instructions")
    if not instructions:
        raise UserError(f"no instructions tables under {args.run_dir} (run `acedata instruct {args.run_dir}` first)")
    table = args.reviews or reviews_dir(args.run_dir)
    has_reviews = shards.read_manifest(table) is not None
    curated = has_reviews if args.curated is None else args.curated
    if curated and not has_reviews:
        raise UserError(f"--curated needs a reviews table, and {table} has none (review the run first, or import "
                        "Label Studio annotations with `acedata review-tasks import`)")
    counts = export_captioner_data(
        instructions, find_tables(args.run_dir, "pairs"), find_tables(args.run_dir, "images"), args.out,
        fmt=args.format, methods=tuple(args.methods or CURATED_METHODS),
        variants="first" if args.first_variant_only else "all", limit=args.limit, progress=not args.json,
        reviews=[table] if curated else None,
    )
    counts["curated"] = int(curated)
    if args.json:
        print(json.dumps(counts))
    else:
        what = "curated records (accepted or corrected)" if curated else "records"
        print(f"{counts['records']} {what}, {counts['images']} images -> {args.out} ({args.format}); "
              + ", ".join(f"{k}={v}" for k, v in counts.items() if k.startswith("skipped") and v))
    return 0
