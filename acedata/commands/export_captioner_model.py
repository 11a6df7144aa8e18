"""`acedata export-captioner-model CHECKPOINT --out DIR`: a folder `vllm serve` loads."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-captioner-model",
        help="write a trained captioner as a servable model folder (merged, or a LoRA adapter)",
        description="Merges the LoRA deltas into the base weights (or saves the fully fine-tuned weights) with "
        "the processor, as a transformers model folder for `vllm serve DIR` / `transformers serve DIR`. "
        "--adapter keeps the LoRA adapter alone (serve: vllm serve BASE --enable-lora --lora-modules "
        "captioner=DIR). CHECKPOINT: a checkpoint folder, or a run folder (its newest checkpoint).",
    )
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--adapter", action="store_true", help="keep base + LoRA adapter instead of merging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.captioner.serve import export_model, serve_commands
    from acedata.captioner.train import latest_checkpoint
    from acedata.errors import UserError

    ckpt = latest_checkpoint(args.checkpoint)
    if ckpt is None:
        raise UserError(f"no captioner checkpoint at {args.checkpoint}")
    info = export_model(ckpt, args.out, keep_adapter=args.adapter)
    print(f"{info['layout']} model from {ckpt} (step {info['step']}) -> {args.out}; serve with:")
    for c in serve_commands(args.out, info):
        print("  " + c)
    return 0
