"""Launching the training loop on a Ray cluster: Ray Train's TorchTrainer runs `Trainer` once per
worker (DDP, or FSDP with parameters, gradients, optimizer state and EMA sharded per DiT block).

Rank 0 writes full checkpoints to `out`, which must be storage every node can reach for multi-node
runs; a rerun resumes from the newest one. The loop itself lives in acemodel.train.
"""

from __future__ import annotations

import json
import os

from acemodel import parallel
from acemodel.checkpoint import latest_checkpoint
from acemodel.config import TrainConfig
from acemodel.errors import UserError
from acemodel.train import Trainer, check_strategy


def connect(address: str | None = None) -> None:
    """Attach to a running Ray (`address`, else $RAY_ADDRESS), or start one on this machine.

    Callers that manage Ray themselves initialise it first; this is then a no-op."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise UserError(f"{address} is a Ray job server address; give the cluster's GCS address (HEAD:6379) "
                        "or submit the training as a Ray job")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # an embedded Ray on loopback (Ray would otherwise advertise the NIC address)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")


def _worker_loop(config: dict) -> None:
    """What each Ray Train worker runs: build a Trainer for its rank, resume, fit."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    cfg = TrainConfig(**config["cfg"])
    trainer = Trainer(cfg, config["data"], config["out"], ctx.get_world_rank(), ctx.get_world_size(),
                      device=ray.train.torch.get_device())
    ckpt = parallel.broadcast_object(latest_checkpoint(config["out"]) if ctx.get_world_rank() == 0 else None)
    if ckpt:
        trainer.load(ckpt)
    trainer.fit(progress=False, report=lambda metrics, _saved: ray.train.report(metrics))


def train_ray(cfg: TrainConfig, data, out: str, address: str | None = None) -> dict:
    """Data-parallel training with `cfg.num_workers` Ray Train workers; returns the final step,
    the newest checkpoint, the worker count and the strategy."""
    check_strategy(cfg)  # here, not as a worker's traceback
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(address)
    out = os.path.abspath(out)
    if cfg.data.cache and "://" not in cfg.data.cache:  # workers may run in another directory
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache": os.path.abspath(cfg.data.cache)})})
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "data": data, "out": out},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(storage_path=os.path.join(out, "ray"), name="train"),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    ckpt = latest_checkpoint(out)
    with open(os.path.join(ckpt, "state.json")) as f:
        step = json.load(f)["step"]
    return {"step": step, "checkpoint": ckpt, "workers": cfg.num_workers, "strategy": cfg.strategy}
