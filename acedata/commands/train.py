"""`acedata train CONFIG --data SHARDS --out DIR`: train the bundled ACE DiT on LCU shards."""

from __future__ import annotations

import argparse
import os

from acedata import storage
from acedata.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train (or fine-tune) the ACE DiT on LCU shards",
        description="Train the bundled ACE DiT (model/acemodel) on LCU training shards. One process "
        "(CPU or one GPU) by default; --workers N runs data-parallel with Ray Train (DDP/FSDP); "
        "--submit ships the run to a Ray cluster as a job. Reruns resume from the last checkpoint in --out.",
    )
    p.add_argument("config", help="training YAML (see model/configs/tiny.yaml, model/configs/ace-0.6b.yaml)")
    p.add_argument("--data", nargs="*", default=[], help="LCU table directories or .parquet shards")
    p.add_argument("--cache", help="train from an encode cache instead (acedata encode-cache): no VAE/T5 loaded")
    p.add_argument("--out", default="runs/train", help="run directory (checkpoints, logs)")
    p.add_argument("--steps", type=int, help="override the config's number of steps")
    p.add_argument("--workers", type=int, help="Ray Train workers (overrides num_workers; >1 uses Ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], help="data-parallel strategy for Ray Train")
    p.add_argument("--init-from", help="released ACE checkpoint (.pth/.safetensors) to fine-tune")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument("--address", help="Ray cluster address (Ray Train or --submit)")
    p.add_argument("--submit", action="store_true", help="submit as a Ray job (needs a cluster address)")
    p.add_argument("--insecure-trusted-network", action="store_true",
                   help="send the Ray auth token over plain http to a non-loopback job server (only on a trusted network)")
    p.set_defaults(func=run)


def load_config(path: str, args: argparse.Namespace | None = None):
    import yaml
    from acemodel.config import TrainConfig
    from pydantic import ValidationError

    if not os.path.isfile(path):
        raise UserError(f"training config {path!r} not found")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if args is not None:
        for key, val in (("steps", args.steps), ("num_workers", args.workers), ("strategy", args.strategy),
                         ("init_from", args.init_from)):
            if val is not None:
                raw[key] = val
        if args.gpu:
            raw["use_gpu"] = True
        if getattr(args, "cache", None):
            raw.setdefault("data", {})["cache"] = args.cache
    try:
        return TrainConfig(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{path}: {where}: {err['msg']}") from None


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args)
    if not args.data and not cfg.data.cache:
        raise UserError("nothing to train on: give --data LCU_DIR... or --cache ENCODE_CACHE")
    if args.submit:
        from acedata.jobs import submit_training

        job = submit_training(config=args.config, data=args.data, out=args.out, address=args.address,
                              overrides=cfg.model_dump(mode="json"))
        print(f"submitted training job {job}")
        return 0
    from acemodel.launch import train_ray
    from acemodel.train import train_local

    if cfg.num_workers > 1 or args.address:
        from acemodel.data import lcu_units

        from acedata.runtime import init_ray

        if args.data and not cfg.data.cache:
            lcu_units(args.data)  # a missing table is one line, before any Ray starts
        init_ray(args.address)  # the platform's Ray setup (job-server URLs, loopback) before the launch
        metrics = train_ray(cfg, args.data, args.out, address=args.address)
        print(f"trained with Ray Train ({cfg.num_workers} workers, {cfg.strategy}): {metrics}")
        return 0
    out = storage.absolute(args.out)  # a local path or a URI (s3://...): checkpoints go through pyarrow/fsspec
    trainer = train_local(cfg, [storage.absolute(d) for d in args.data], out, resume=not args.no_resume)
    print(f"trained to step {trainer.step}; checkpoints in {storage.join(out, 'checkpoints')}")
    return 0
