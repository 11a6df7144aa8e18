"""Launching the training loop on a Ray cluster: Ray Train's TorchTrainer runs `Trainer` once per
worker (DDP, or FSDP with parameters, gradients, optimizer state and EMA sharded per DiT block).

Rank 0 writes full checkpoints to `out`, which must be storage every node can reach for multi-node
runs (a shared folder, or an object store URI such as s3://bucket/run); a rerun resumes from the newest one. The loop itself lives in acemodel.train.
"""

from __future__ import annotations

import os

from acemodel import files, parallel
from acemodel.checkpoint import MARKER, latest_checkpoint
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


def _absolute(path: str) -> str:
    """A user path as every Ray worker must see it: URIs as given, local paths made absolute here,
    on the driver (Ray Train runs each worker in its own working directory)."""
    return files.absolute(path)


def root_cause(err: BaseException) -> BaseException:
    """The exception behind a Ray Train failure: the first failing rank's error, unwrapped."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)
        if failures:
            err = failures[min(failures)]
            continue
        inner = getattr(err, "controller_failure", None) or getattr(err, "cause", None) or err.__cause__
        if isinstance(inner, BaseException):
            err = inner
            continue
        break
    return err


def train_ray(cfg: TrainConfig, data, out: str, address: str | None = None) -> dict:
    """Data-parallel training with `cfg.num_workers` Ray Train workers; returns the final step,
    the newest checkpoint, the worker count and the strategy."""
    from acemodel.data import lcu_units

    check_strategy(cfg)  # here, not as a worker's traceback
    data = [_absolute(p) for p in ([data] if isinstance(data, str) else list(data or []))]
    out = _absolute(out)
    update: dict = {}
    if cfg.data.cache:
        update["data"] = cfg.data.model_copy(update={"cache": _absolute(cfg.data.cache)})
    elif data:
        lcu_units(data)  # a missing or empty table fails here, in one line, before any worker starts
    if cfg.init_from:
        update["init_from"] = _absolute(cfg.init_from)
    cfg = cfg.model_copy(update=update)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(address)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "data": data, "out": out},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        # Ray Train takes a local folder or a URI (its own pyarrow filesystem, same AWS env config)
        run_config=RunConfig(storage_path=files.join(out, "ray"), name="train"),
    )
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
    except Exception as e:  # a worker's user error comes back wrapped; show its message, not the wrapping
        cause = root_cause(e)
        if isinstance(cause, UserError | FileNotFoundError | PermissionError):
            raise UserError(f"training failed on a worker: {str(cause).strip().splitlines()[0]}") from None
        raise
    ckpt = latest_checkpoint(out)
    step = files.read_json(files.join(ckpt, MARKER))["step"]
    return {"step": step, "checkpoint": ckpt, "workers": cfg.num_workers, "strategy": cfg.strategy}
