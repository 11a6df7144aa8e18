"""Checkpoints: one folder per step with everything an exact resume needs, on a local path or any
pyarrow/fsspec URI (s3://, gs://, memory://, file://; acemodel.files).

    checkpoints/step-XXXXXXXX/
      model.safetensors   full (unsharded) weights, PixArt-independent acemodel key names
      ema.safetensors     the EMA weights (when EMA is on)
      optimizer.pt        AdamW state keyed by parameter name, and the fp16 loss scaler
      state.json          step, every rank's loader position, world size, strategy, config, encoder ids

Files are strategy-independent: a DDP checkpoint resumes under FSDP and back.

Commit protocol: `state.json` is the marker, always written last; a step folder without it is not a
checkpoint (`latest_checkpoint` skips it, the next save deletes it). Locally rank 0 also writes a
`.tmp` folder and renames it, so the folder appears whole. Object stores have no rename: there the
files are staged on local disk, uploaded one object each (one PUT / multipart upload, visible whole or
not at all) and `state.json` goes up last, so a killed run never leaves a half checkpoint that looks
done. Deleting goes the other way round: the marker first.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from acemodel import files, parallel
from acemodel.errors import UserError

# `tr` below is an acemodel.train.Trainer (not imported: the trainer imports this module)
Trainer = Any
MARKER = "state.json"


def is_checkpoint(path: str) -> bool:
    """A committed checkpoint: its marker is there."""
    return files.exists(files.join(path, MARKER))


def _step_names(root: str) -> list[str]:
    return [i.base_name for i in files.list_dir(root)
            if i.base_name.startswith("step-") and not i.base_name.endswith(".tmp")]


def step_dirs(root: str) -> list[str]:
    """Names of the committed checkpoints under `root` (a run's checkpoints/ folder), oldest first."""
    return [d for d in _step_names(root) if is_checkpoint(files.join(root, d))]


def latest_checkpoint(path: str) -> str | None:
    """`path` itself when it is a checkpoint, else the newest committed checkpoints/step-* under it
    (spelled like `path`: a URI stays a URI)."""
    if is_checkpoint(path):
        return path
    done = step_dirs(files.join(path, "checkpoints"))
    return files.join(path, "checkpoints", done[-1]) if done else None


def resume_latest(trainer, out: str, resume: bool = True) -> str | None:
    """Load the newest committed checkpoint under `out` into `trainer` (anything with `load` and
    `step`: the DiT trainer, the captioner trainer) unless told not to; returns it."""
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt:
        trainer.load(ckpt)
        logging.getLogger("acemodel").info("resumed from %s (step %d)", ckpt, trainer.step)
    return ckpt


def _write_files(tr: Trainer, folder: str, sd: dict, ema: dict | None, optim: dict) -> None:
    """The checkpoint's files but the marker, into a local folder."""
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "acemodel"})
    if ema is not None:
        ema = {**sd, **{k: v.to(sd[k].dtype) for k, v in ema.items()}}
        save_file(ema, os.path.join(folder, "ema.safetensors"), metadata={"format": "acemodel"})
    torch.save({"format": "by-name", "optimizer": optim, "scaler": tr.scaler.state_dict()},
               os.path.join(folder, "optimizer.pt"))


def _state(tr: Trainer, loaders: list) -> bytes:
    state = {"step": tr.step, "loader": loaders[0], "loaders": loaders, "world_size": tr.world,
             "strategy": tr.strategy, "config": tr.cfg.model_dump(mode="json"),
             "text_encoder": tr.enc.text_weights_id, "vae": tr.enc.vae_weights_id}
    return json.dumps(state, indent=1).encode()


def save(tr: Trainer) -> str:
    """Every rank calls it (FSDP gathers shards); rank 0 writes full, strategy-independent files."""
    root = files.join(tr.out, "checkpoints")
    final = files.join(root, f"step-{tr.step:08d}")
    writer = tr.rank == 0
    sd = parallel.full_model_state(tr.model)
    ema = parallel.full_tensors(tr.ema, writer) if tr.ema is not None else None
    optim = parallel.full_optimizer_state(tr.model, tr.opt)
    loaders = parallel.gather_objects(tr.loader.state_dict())
    if writer:
        write_folder(final, lambda folder: _write_files(tr, folder, sd, ema, optim), _state(tr, loaders))
        prune(root, tr.cfg.keep_checkpoints)
    parallel.barrier()
    return final


def write_folder(final: str, write: Callable[[str], None], state: bytes) -> None:
    """Commit one checkpoint folder at `final` (a path or URI): `write(local_folder)` writes the data
    files, then the marker `state` goes last (see the module doc for the protocol)."""
    fs, final_p = files.resolve(final)
    if files.is_local(fs):
        # stage next to the destination, marker inside, then one atomic rename
        tmp, tmp_p = final + ".tmp", final_p + ".tmp"
        files.delete_dir(tmp)
        fs.create_dir(tmp_p, recursive=True)
        write(tmp_p)
        files.write_bytes(files.join(tmp, MARKER), state)
        files.delete_file(files.join(final, MARKER))  # an older copy of this step: uncommit, then replace
        files.delete_dir(final)
        fs.move(tmp_p, final_p)
        return
    # object store: stage on local disk, upload write-once objects, the marker last
    files.delete_file(files.join(final, MARKER))
    files.delete_dir(final)  # leftovers of an attempt that never committed
    with tempfile.TemporaryDirectory(prefix="acemodel-ckpt-") as stage:
        write(stage)
        for name in sorted(os.listdir(stage)):
            files.upload(os.path.join(stage, name), files.join(final, name))
    files.write_bytes(files.join(final, MARKER), state)


def prune(root: str, keep: int) -> None:
    """Keep the newest `keep` committed checkpoints; delete older ones and any uncommitted folder
    (a save that died before its marker). Marker first, so a half-deleted one is never taken."""
    done = step_dirs(root)
    for d in done[: max(0, len(done) - keep)]:
        files.delete_file(files.join(root, d, MARKER))
        files.delete_dir(files.join(root, d))
    kept = set(done)
    for i in files.list_dir(root):
        name = i.base_name
        if name.startswith("step-") and (name.endswith(".tmp") or name not in kept):
            files.delete_dir(files.join(root, name))


def load(tr: Trainer, ckpt: str) -> None:
    """Every rank calls it; rank 0 reads the files and the state goes to the other ranks by
    broadcast (replicated) or scatter (FSDP shards)."""
    reader = tr.rank == 0 or not parallel.is_distributed()
    path = lambda name: files.join(ckpt, name)
    state = files.read_json(path(MARKER)) if reader else None
    state = parallel.broadcast_object(state)
    loaders = state.get("loaders") or [state["loader"]]
    if len(loaders) != tr.world:
        raise UserError(f"checkpoint {ckpt} was written by {len(loaders)} rank(s); resume it with "
                        f"{len(loaders)} worker(s) (this run has {tr.world})")
    parallel.load_model_state(tr.model, read_tensors(path("model.safetensors")) if reader else {})
    if tr.ema is not None:
        has_ema = parallel.broadcast_object(reader and files.exists(path("ema.safetensors")))
        full = read_tensors(path("ema.safetensors")) if reader and has_ema else {}
        if has_ema:
            tr.ema = {k: parallel.shard_like(full.get(k), p) for k, p in tr.model.named_parameters()}
    opt = read_torch(path("optimizer.pt")) if reader else None
    if parallel.broadcast_object(opt.get("format") if opt is not None else None) != "by-name":
        # older checkpoints: the int-keyed state of an unsharded optimizer, which every rank reads
        opt = opt or read_torch(path("optimizer.pt"))
        tr.opt.load_state_dict(opt["optimizer"])
    else:
        parallel.load_optimizer_state(tr.model, tr.opt, opt["optimizer"] if opt is not None else {})
    tr.scaler.load_state_dict(parallel.broadcast_object(opt["scaler"] if opt is not None else None))
    tr.step = state["step"]
    tr.loader.load_state_dict(loaders[tr.rank])


def read_tensors(uri: str) -> dict[str, torch.Tensor]:
    """A safetensors file from a local path or URI (remote ones via a temporary local copy)."""
    with files.local_copy(uri) as local:
        return load_file(local)


def read_torch(uri: str) -> Any:
    with files.local_copy(uri) as local:
        return torch.load(local, map_location="cpu", weights_only=True)
