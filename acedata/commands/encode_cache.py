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
    from acedata.commands._common import add_run_options
    from acedata.commands._common import config_option as opt
    from acedata.stages.encode_cache import EncodeCacheConfig as C

    opt(p, C, "batch_size", "images / instructions per encoder forward")
    opt(p, C, "precision", "encoder compute dtype")
    opt(p, C, "device", "auto | cpu | cuda")
    opt(p, C, "resources.num_gpus", "GPUs per actor (Ray)")
    # One actor unless asked: each holds its own copy of the text encoder (T5-XXL is ~10 GB in bf16).
    opt(p, C, "resources.concurrency", "actors in the pool", default=1)
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata import storage
    from acedata.commands._common import config_values, print_run
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
        max_side=tc.data.max_side, text_tokens=tc.data.text_tokens, inputs={"lcu": data},
        **config_values(args, EncodeCacheConfig),
    )
    result = run_stages([cfg], args.out, executor=args.executor, address=args.address, name="encode-cache")
    print_run(result, args.json)
    if not args.json:
        print(f"train from it with data.cache: {storage.join(storage.absolute(args.out), 'encode_cache')}")
    return 0
