"""Checkpoints: one folder per step with everything an exact resume needs.

    checkpoints/step-XXXXXXXX/
      model.safetensors   full (unsharded) weights, PixArt-independent acemodel key names
      ema.safetensors     the EMA weights (when EMA is on)
      optimizer.pt        AdamW state keyed by parameter name, and the fp16 loss scaler
      state.json          step, every rank's loader position, world size, strategy, config, encoder ids

Files are strategy-independent: a DDP checkpoint resumes under FSDP and back. Rank 0 writes a
`.tmp` folder and renames it, so a killed run never leaves a half checkpoint that looks done.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from acemodel import parallel
from acemodel.errors import UserError

# `tr` below is an acemodel.train.Trainer (not imported: the trainer imports this module)
Trainer = Any


def step_dirs(root: str) -> list[str]:
    """Names of the finished checkpoints under `root`/checkpoints, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))


def latest_checkpoint(path: str) -> str | None:
    """`path` itself when it is a checkpoint, else the newest checkpoints/step-* under it."""
    if os.path.exists(os.path.join(path, "state.json")):
        return path
    done = step_dirs(os.path.join(path, "checkpoints"))
    return os.path.join(path, "checkpoints", done[-1]) if done else None


def save(tr: Trainer) -> str:
    """Every rank calls it (FSDP gathers shards); rank 0 writes full, strategy-independent files."""
    final = os.path.join(tr.out, "checkpoints", f"step-{tr.step:08d}")
    writer = tr.rank == 0
    sd = parallel.full_model_state(tr.model)
    ema = parallel.full_tensors(tr.ema, writer) if tr.ema is not None else None
    optim = parallel.full_optimizer_state(tr.model, tr.opt)
    loaders = parallel.gather_objects(tr.loader.state_dict())
    if writer:
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "acemodel"})
        if ema is not None:
            ema = {**sd, **{k: v.to(sd[k].dtype) for k, v in ema.items()}}
            save_file(ema, os.path.join(tmp, "ema.safetensors"), metadata={"format": "acemodel"})
        torch.save({"format": "by-name", "optimizer": optim, "scaler": tr.scaler.state_dict()},
                   os.path.join(tmp, "optimizer.pt"))
        state = {"step": tr.step, "loader": loaders[0], "loaders": loaders, "world_size": tr.world,
                 "strategy": tr.strategy, "config": tr.cfg.model_dump(mode="json"),
                 "text_encoder": tr.enc.text_weights_id, "vae": tr.enc.vae_weights_id}
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(state, f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(os.path.join(tr.out, "checkpoints"), tr.cfg.keep_checkpoints)
    parallel.barrier()
    return final


def prune(root: str, keep: int) -> None:
    done = step_dirs(root)
    for d in done[: max(0, len(done) - keep)]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def load(tr: Trainer, ckpt: str) -> None:
    """Every rank calls it; rank 0 reads the files and the state goes to the other ranks by
    broadcast (replicated) or scatter (FSDP shards)."""
    reader = tr.rank == 0 or not parallel.is_distributed()
    path = lambda name: os.path.join(ckpt, name)
    state = None
    if reader:
        with open(path("state.json")) as f:
            state = json.load(f)
    state = parallel.broadcast_object(state)
    loaders = state.get("loaders") or [state["loader"]]
    if len(loaders) != tr.world:
        raise UserError(f"checkpoint {ckpt} was written by {len(loaders)} rank(s); resume it with "
                        f"{len(loaders)} worker(s) (this run has {tr.world})")
    parallel.load_model_state(tr.model, load_file(path("model.safetensors")) if reader else {})
    if tr.ema is not None:
        has_ema = parallel.broadcast_object(reader and os.path.exists(path("ema.safetensors")))
        full = load_file(path("ema.safetensors")) if reader and has_ema else {}
        if has_ema:
            tr.ema = {k: parallel.shard_like(full.get(k), p) for k, p in tr.model.named_parameters()}
    opt = torch.load(path("optimizer.pt"), map_location="cpu", weights_only=True) if reader else None
    if parallel.broadcast_object(opt.get("format") if opt is not None else None) != "by-name":
        # older checkpoints: the int-keyed state of an unsharded optimizer, which every rank reads
        opt = opt or torch.load(path("optimizer.pt"), map_location="cpu", weights_only=True)
        tr.opt.load_state_dict(opt["optimizer"])
    else:
        parallel.load_optimizer_state(tr.model, tr.opt, opt["optimizer"] if opt is not None else {})
    tr.scaler.load_state_dict(parallel.broadcast_object(opt["scaler"] if opt is not None else None))
    tr.step = state["step"]
    tr.loader.load_state_dict(loaders[tr.rank])
