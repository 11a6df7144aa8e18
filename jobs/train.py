"""Ray job entrypoint for a training run: `python jobs/train.py CONFIG --data ... --out ...`.

Submitted by `acedata train ... --submit` (or `ray job submit -- python jobs/train.py ...`). It runs
inside the cluster, attaches to it, and trains with Ray Train (DDP/FSDP) per the config; rerunning it
resumes from the newest checkpoint under --out (which must be storage all nodes share).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int)
    p.add_argument("--workers", type=int)
    args = p.parse_args(argv)

    from acemodel.launch import train_ray

    from acedata.commands.train import load_config

    ns = argparse.Namespace(steps=args.steps, workers=args.workers, strategy=None, init_from=None, gpu=False)
    cfg = load_config(args.config, ns)
    metrics = train_ray(cfg, args.data, args.out, address="auto")
    print(f"training finished: {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
