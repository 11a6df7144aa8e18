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
    p.add_argument("--model", default="ViT-SO400M-14-SigLIP-384",
                   help="open_clip model name (or hf-hub:org/repo); acedata-tiny-siglip for demos")
    p.add_argument("--model-path", help="checkpoint file or open_clip model folder")
    p.add_argument("--random-init", action="store_true", help="random weights (demo/tests only)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images-per-unit", type=int, default=2048)
    p.add_argument("--decode-threads", type=int, default=4)
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (Ray)")
    p.add_argument("--concurrency", type=int, default=2, help="actors in the pool")
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.commands._common import print_run
    from acedata.errors import UserError
    from acedata.pipeline import run_stages
    from acedata.stages.embed import EmbedConfig

    if not storage.exists_uri(args.images):
        raise UserError(f"images table {args.images!r} does not exist")
    cfg = EmbedConfig(
        name="embed",
        model={"name": args.model, "path": args.model_path, "random_init": args.random_init, "device": args.device},
        batch_size=args.batch_size,
        images_per_unit=args.images_per_unit,
        decode_threads=args.decode_threads,
        resources={"num_gpus": args.num_gpus, "concurrency": args.concurrency},
        inputs={"images": args.images},
    )
    result = run_stages([cfg], args.out, executor=args.executor, address=args.address, name="embed")
    print_run(result, args.json)
    return 0

