"""The captioner training loop: AdamW on the trainable parameters (LoRA adapters, or the LM +
projector), bf16 autocast on GPU, gradient accumulation, safetensors checkpoints, exact resume.
One process by default; data-parallel through Ray Train's TorchTrainer (DDP, or FSDP2 per
decoder layer for large models) when asked.

Exact resume: the batch of (step, micro-batch, rank) is a pure function of the seed (an epoch
permutation of the sorted training records), and the RNG (LoRA dropout) is reseeded per step,
so a resumed run computes the same next loss as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from acedata import storage
from acedata.captioner.config import CaptionerConfig
from acedata.captioner.data import Collator, Example, read_examples, split
from acedata.captioner.model import load_model, prepare_for_training, trainable_names
from acedata.errors import UserError

log = logging.getLogger("acedata.captioner")


def step_seed(*key) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CaptionerTrainer:
    def __init__(self, cfg: CaptionerConfig, data: str, out: str, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world_size
        self.device = device or pick_device(cfg.device)
        if cfg.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        examples = read_examples(data, cfg.data.max_records)
        self.train_set, self.heldout = split(examples, cfg.data.eval_fraction)
        if not self.train_set:
            raise UserError(f"all {len(examples)} records fell in the held-out split; lower data.eval_fraction")
        base, self.processor, self.base_path = load_model(cfg.model)
        torch.manual_seed(cfg.seed)  # LoRA init: identical on every rank and every run
        self.model = prepare_for_training(base, cfg).to(self.device)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        self.names = trainable_names(self.model)
        self.collate = Collator(self.processor)
        self.strategy = cfg.strategy if world_size > 1 and distributed() else "single"
        self.net = self._parallelize()
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self._perms: dict[int, np.ndarray] = {}
        self.step = 0

    def _parallelize(self) -> torch.nn.Module:
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(self.model, device_ids=ids)
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            bf16 = self.cfg.precision == "bf16"
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
            for m in self.model.modules():  # one all-gather group per decoder layer
                if type(m).__name__.endswith("DecoderLayer"):
                    fully_shard(m, mp_policy=mp)
            fully_shard(self.model, mp_policy=mp)
        return self.model

    # --- data: a pure function of (seed, step, micro-batch, rank) -------------------------------

    def indices(self, step: int, micro: int) -> list[int]:
        b, n = self.cfg.data.batch_size, len(self.train_set)
        first = ((step * self.cfg.optim.grad_accum + micro) * self.world + self.rank) * b
        out = []
        for k in range(first, first + b):
            epoch = k // n
            if epoch not in self._perms:
                self._perms = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(n)}
            out.append(int(self._perms[epoch][k % n]))
        return out

    def batch(self, step: int, micro: int) -> dict:
        examples: list[Example] = [self.train_set[i] for i in self.indices(step, micro)]
        return {k: v.to(self.device) for k, v in self.collate(examples).items()}

    # --- one step -------------------------------------------------------------------------------

    def loss_on(self, batch: dict) -> torch.Tensor:
        bf16 = self.cfg.precision == "bf16" and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
            return self.net(**batch).loss.float()

    def _lr(self) -> float:
        o = self.cfg.optim
        return o.lr * min(1.0, (self.step + 1) / o.warmup_steps) if o.warmup_steps else o.lr

    def train_step(self) -> float:
        self.net.train()
        torch.manual_seed(step_seed(self.cfg.seed, self.step, self.rank))  # dropout: resume-safe
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        self.opt.zero_grad(set_to_none=True)
        accum, total = self.cfg.optim.grad_accum, 0.0
        for micro in range(accum):
            last = micro == accum - 1
            sync = self.net.no_sync() if self.strategy == "ddp" and not last else nullcontext()
            if self.strategy == "fsdp":
                self.model.set_requires_gradient_sync(last)
            with sync:
                loss = self.loss_on(self.batch(self.step, micro))
                (loss / accum).backward()
            total += loss.item() / accum
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.cfg.optim.grad_clip)
        self.opt.step()
        self.step += 1
        return total

    # --- checkpoints ----------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full (gathered) trainable tensors on rank 0; every rank calls it."""
        from torch.distributed.tensor import DTensor

        params = dict(self.model.named_parameters())
        out = {}
        for n in self.names:
            p = params[n]
            full = p.full_tensor() if isinstance(p, DTensor) else p
            if self.rank == 0:
                out[n] = full.detach().float().cpu().contiguous()
        return out

    def save(self, loss: float | None = None) -> str:
        """checkpoints/step-XXXXXXXX/: trainable.safetensors, optimizer.pt, state.json."""
        from acemodel import parallel
        from acemodel.checkpoint import prune, write_folder

        root = storage.join(self.out, "checkpoints")
        final = storage.join(root, f"step-{self.step:08d}")
        weights = self.trainable_state()
        optim = parallel.full_optimizer_state(self.model, self.opt)
        if self.rank == 0:
            def write(folder: str) -> None:
                save_file(weights, os.path.join(folder, "trainable.safetensors"),
                          metadata={"format": "acedata-captioner"})
                torch.save({"optimizer": optim}, os.path.join(folder, "optimizer.pt"))

            state = {"step": self.step, "loss": loss, "world_size": self.world, "strategy": self.strategy,
                     "finetune": self.cfg.finetune, "base_model": self.base_path,
                     "train_records": len(self.train_set), "heldout_records": len(self.heldout),
                     "config": self.cfg.model_dump(mode="json")}
            # state.json is the commit marker, written last (acemodel.checkpoint: local rename / object stores)
            write_folder(final, write, json.dumps(state, indent=1).encode())
            prune(root, self.cfg.keep_checkpoints)
        parallel.barrier()
        return final

    def load(self, ckpt: str) -> None:
        from acemodel import parallel
        from acemodel.checkpoint import read_tensors, read_torch

        state = storage.read_json(storage.join(ckpt, "state.json"))
        if state["world_size"] != self.world:
            raise UserError(f"checkpoint {ckpt} was written by {state['world_size']} worker(s); resume it with "
                            f"as many (this run has {self.world}) — the batch order depends on it")
        load_trainable(self.model, read_tensors(storage.join(ckpt, "trainable.safetensors")))
        opt = read_torch(storage.join(ckpt, "optimizer.pt"))
        parallel.load_optimizer_state(self.model, self.opt, opt["optimizer"])
        self.step = state["step"]

    # --- loop -----------------------------------------------------------------------------------

    def fit(self, steps: int | None = None, progress: bool = True, report=None) -> list[float]:
        steps = self.cfg.steps if steps is None else steps
        losses: list[float] = []
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, desc="train-captioner", unit="step")
        t0, seen = time.time(), 0
        while self.step < steps:
            loss = self.train_step()
            losses.append(loss)
            seen += self.cfg.data.batch_size * self.cfg.optim.grad_accum * self.world
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{seen / (time.time() - t0):.1f}")
            saved = None
            if self.step % self.cfg.checkpoint_every == 0 or self.step == steps:
                saved = self.save(loss)
            if report:
                report({"step": self.step, "loss": loss}, saved)
        if bar:
            bar.close()
        return losses


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checkpointed trainable tensors into the (possibly sharded) parameters by name."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise UserError(f"checkpoint does not match this model/finetune setup (e.g. {missing[0]!r})")
    with torch.no_grad():
        for n, t in tensors.items():
            p = params[n]
            if isinstance(p, DTensor):
                p.copy_(distribute_tensor(t.to(p.device, p.dtype), p.device_mesh, p.placements))
            else:
                p.copy_(t.to(p.device, p.dtype))


def latest_checkpoint(path: str) -> str | None:
    """`path` when it is a checkpoint, else the newest committed one under path/checkpoints (any URI)."""
    from acemodel.checkpoint import latest_checkpoint as latest

    return latest(path)


def list_checkpoints(out: str) -> list[str]:
    """The committed checkpoints (state.json present) under out/checkpoints, oldest first."""
    from acemodel.checkpoint import step_dirs

    root = storage.join(out, "checkpoints")
    return [storage.join(root, d) for d in step_dirs(root)]


def train_local(cfg: CaptionerConfig, data: str, out: str, resume: bool = True,
                progress: bool = True) -> CaptionerTrainer:
    from acemodel.checkpoint import resume_latest

    trainer = CaptionerTrainer(cfg, data, out)
    resume_latest(trainer, out, resume)
    trainer.fit(progress=progress)
    return trainer


def _ray_worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    cfg = CaptionerConfig(**config["cfg"])
    trainer = CaptionerTrainer(cfg, config["data"], config["out"], ctx.get_world_rank(), ctx.get_world_size(),
                               device=ray.train.torch.get_device())
    ckpt = latest_checkpoint(config["out"])  # shared storage: every rank sees the same folder
    if ckpt:
        trainer.load(ckpt)
    trainer.fit(progress=False, report=lambda metrics, _saved: ray.train.report(metrics))


def train_ray(cfg: CaptionerConfig, data: str, out: str, address: str | None = None) -> dict:
    """Data-parallel training on a Ray cluster; `out` and `data` must be reachable from every node."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from acedata.captioner.data import read_examples
    from acedata.captioner.model import resolve_path

    # here, as one-line errors, not as worker tracebacks; the tiny model is built once, not per worker
    resolve_path(cfg.model)
    read_examples(data, 1)
    if not ray.is_initialized():
        from acedata.runtime import init_ray

        init_ray(address)
    out, data = storage.absolute(out), storage.absolute(data)
    if cfg.model.tiny is not None or os.path.exists(cfg.model.path):
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": os.path.abspath(cfg.model.path)})})
    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "data": data, "out": out},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(storage_path=storage.join(out, "ray"), name="train-captioner"),  # a path or URI
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    ckpt = latest_checkpoint(out)
    state = storage.read_json(storage.join(ckpt, "state.json"))
    return {"checkpoint": ckpt, "step": state["step"], "loss": state["loss"], "workers": cfg.num_workers,
            "strategy": cfg.strategy}
