"""`acedata export-captioner RUN_DIR --out DIR`: instruction-captioner fine-tuning data (chat JSONL)."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-captioner",
        help="export (pair, instruction) records as chat JSONL with image files, to fine-tune a captioner",
        description="Writes DIR/captioner.jsonl (InternVL fine-tuning layout by default) and DIR/images/. "
        "Inputs come first, the target image last; paths are relative to the JSONL file.",
    )
    p.add_argument("run_dir", help="run directory with instructions, pairs and images tables")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["internvl", "messages"], default="internvl")
    p.add_argument("--methods", nargs="+", default=None,
                   help="instruction methods to keep (default: template llm_rewrite mllm_llm captioner)")
    p.add_argument("--first-variant-only", action="store_true", help="one record per pair (variant 0)")
    p.add_argument("--limit", type=int, help="at most this many records")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from acedata.errors import UserError
    from acedata.instruct.export import CURATED_METHODS, export_captioner_data, find_tables

    instructions = find_tables(args.run_dir, "instructions")
    if not instructions:
        raise UserError(f"no instructions tables under {args.run_dir} (run `acedata instruct {args.run_dir}` first)")
    counts = export_captioner_data(
        instructions, find_tables(args.run_dir, "pairs"), find_tables(args.run_dir, "images"), args.out,
        fmt=args.format, methods=tuple(args.methods or CURATED_METHODS),
        variants="first" if args.first_variant_only else "all", limit=args.limit, progress=not args.json,
    )
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"{counts['records']} records, {counts['images']} images -> {args.out}/captioner.jsonl; "
              + ", ".join(f"{k}={v}" for k, v in counts.items() if k.startswith("skipped") and v))
    return 0
