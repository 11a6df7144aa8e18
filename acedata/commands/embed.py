"""`acedata embed IMAGES --out DIR`: SigLIP image embeddings of images tables."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed images tables with a SigLIP (open_clip) model",
        description="Write DIR/embed/embeddings: L2-normalised float16 image embeddings. Weights come from "
        "--model-path or the Hugging Face cache (never downloaded); --random-init builds the architecture "
        "with random weights (demo/tests; marked in the model column).",
    )
    p.add_argument("images", help="an images table folder (e.g. RUN/ingest/images)")
    p.add_argument("--out", required=True, help="output run directory")
    from acedata.commands._common import add_run_options
    from acedata.commands._common import config_option as opt
    from acedata.stages.embed import EmbedConfig as C

    opt(p, C, "model.name", "open_clip model name (or hf-hub:org/repo); acedata-tiny-siglip for demos", "--model")
    opt(p, C, "model.path", "checkpoint file or open_clip model folder", "--model-path")
    opt(p, C, "model.random_init", "random weights (demo/tests only)")
    opt(p, C, "model.device", "auto | cpu | cuda")
    opt(p, C, "batch_size", "images per model forward")
    opt(p, C, "images_per_unit", "images per work unit")
    opt(p, C, "decode_threads", "image decoding threads per actor")
    opt(p, C, "resources.num_gpus", "GPUs per actor (Ray)")
    opt(p, C, "resources.concurrency", "actors in the pool")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.commands._common import config_values, print_run
    from acedata.errors import UserError
    from acedata.pipeline import run_stages
    from acedata.stages.embed import EmbedConfig

    if not storage.exists_uri(args.images):
        raise UserError(f"images table {args.images!r} does not exist")
    cfg = EmbedConfig(name="embed", inputs={"images": args.images}, **config_values(args, EmbedConfig))
    result = run_stages([cfg], args.out, executor=args.executor, address=args.address, name="embed")
    print_run(result, args.json)
    return 0

