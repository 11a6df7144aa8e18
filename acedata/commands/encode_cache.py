"""`acedata encode-cache CONFIG --data LCU --out RUN`: encode LCU shards once for training."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode-cache",
        help="encode LCU shards with the frozen VAE and text encoder once (a training cache)",
        description="Write RUN/encode_cache: every LCU row's VAE latents and instruction embeddings as float16 "
        "Parquet shards, with the encoders and data settings of the training CONFIG. Train from it with "
        "`data: {cache: RUN/encode_cache}` in the config: same samples, same order, no encoder loaded.",
    )
    p.add_argument("config", help="training YAML whose text_encoder, vae and data settings the cache follows")
    p.add_argument("--data", required=True, nargs="+", help="LCU table directories or .parquet shards")
    p.add_argument("--out", required=True, help="run directory; the cache goes to OUT/encode_cache")
    p.add_argument("--batch-size", type=int, default=8, help="images / instructions per encoder forward")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="encoder compute dtype")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (Ray)")
    p.add_argument("--concurrency", type=int, default=1, help="actors in the pool")
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.commands._common import print_run
    from acedata.commands.train import load_config
    from acedata.errors import UserError
    from acedata.pipeline import run_stages
    from acedata.stages.encode_cache import EncodeCacheConfig

    tc = load_config(args.config)
    if len(args.data) > 1:
        raise UserError("encode-cache takes one LCU table (directory or .parquet file) per run")
    data = args.data[0]
    data = storage.absolute(data)
    if not storage.exists_uri(data):
        raise UserError(f"LCU table {data!r} does not exist")
    cfg = EncodeCacheConfig(
        name="encode_cache", text_encoder=tc.text_encoder, vae=tc.vae, token_budget=tc.data.token_budget,
        max_side=tc.data.max_side, text_tokens=tc.data.text_tokens, precision=args.precision,
        batch_size=args.batch_size, device=args.device,
        resources={"num_gpus": args.num_gpus, "concurrency": args.concurrency}, inputs={"lcu": data},
    )
    result = run_stages([cfg], args.out, executor=args.executor, address=args.address, name="encode-cache")
    print_run(result, args.json)
    if not args.json:
        print(f"train from it with data.cache: {storage.join(storage.absolute(args.out), 'encode_cache')}")
    return 0
