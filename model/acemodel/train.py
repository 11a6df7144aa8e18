"""The training loop, top to bottom: set up (device, model, frozen encoders, optimizer, EMA, data),
then `fit` loops `train_step` (micro-batches -> loss -> backward -> clip -> step -> EMA), logging and
checkpointing as it goes.

One process by default. Under torch.distributed (Ray Train: acemodel.launch, or any launcher) with
world_size > 1 the model is wrapped for DDP or sharded with FSDP2 (acemodel.parallel). With
`data.cache` set, samples come pre-encoded (acemodel.cache) and the VAE / text encoder never load.
Checkpoints (acemodel.checkpoint) hold everything an exact resume needs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext

import torch

from acemodel import checkpoint, parallel
from acemodel.cache import CachedEncoders
from acemodel.checkpoint import latest_checkpoint, resume_latest
from acemodel.config import TrainConfig
from acemodel.data import Sample
from acemodel.diffusion import make_objective
from acemodel.dit import ACEDiT, DiTInput
from acemodel.encoders import Encoders
from acemodel.errors import UserError

log = logging.getLogger("acemodel.train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["DTYPES", "Trainer", "check_strategy", "latest_checkpoint", "pick_device", "step_generator",
           "train_local"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_generator(*key) -> torch.Generator:
    """Noise and timesteps of a step depend only on (seed, step, micro-batch, rank): resume-safe."""
    h = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(h)


def check_strategy(cfg: TrainConfig) -> None:
    if cfg.strategy == "fsdp" and cfg.precision == "fp16":
        raise UserError("strategy: fsdp trains in fp32 or bf16 (fp16 loss scaling over shards is not supported); "
                        "set precision: bf16")


def make_encoders(cfg: TrainConfig, device: torch.device) -> Encoders | CachedEncoders:
    """Live encoders, or with `data.cache` set the pre-encoded cache (no VAE / text encoder loaded)."""
    return CachedEncoders(cfg, device) if cfg.data.cache else Encoders(cfg, device)


def unwrap(model: torch.nn.Module) -> ACEDiT:
    return model.module if hasattr(model, "module") else model


class Trainer:
    """One training process. Under torch.distributed with world_size > 1 it wraps the model for
    `strategy` (cfg.strategy by default): DDP, or FSDP2 sharding."""

    def __init__(self, cfg: TrainConfig, data, out: str, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None, strategy: str | None = None) -> None:
        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world_size
        # device and seed: identical initial weights on every rank
        self.device = device or pick_device(cfg.device)
        if cfg.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)
        # the model, and the frozen encoders whose indicator embeddings it needs
        self.model = ACEDiT(cfg.dit()).to(self.device)
        self.model.attention_backend = cfg.attention
        self.enc = make_encoders(cfg, self.device)
        if self.enc.text_dim != self.model.cfg.text_dim:
            raise UserError(f"text encoder width {self.enc.text_dim} != model text_dim {self.model.cfg.text_dim}; "
                            "set model_overrides.text_dim")
        self.model.indicator_embeddings.copy_(self.enc.indicator_embeddings())
        if cfg.init_from:  # released weights (and their stored indicator embeddings, when present)
            from acemodel.convert import load_released

            load_released(self.model, cfg.init_from)
        # parallel wrap before the optimizer: FSDP replaces every parameter by its shard
        self.strategy = (strategy or cfg.strategy) if world_size > 1 and parallel.is_distributed() else "single"
        self.net: torch.nn.Module = self._parallelize()
        # objective, optimizer, fp32 EMA (under FSDP each rank keeps the EMA of its own shards), loss scaler
        self.objective = make_objective(cfg.objective)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                     weight_decay=o.weight_decay, foreach=True)
        self.ema = {k: v.detach().float().clone() for k, v in self.model.named_parameters()} if o.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # data: this rank's slice of the deterministic stream
        self.loader = self.enc.stream(cfg, rank, world_size) if cfg.data.cache else \
            self.enc.stream(cfg, rank, world_size, data)
        self._stream = None
        self.step = 0

    def _parallelize(self) -> torch.nn.Module:
        if self.strategy == "ddp":
            return parallel.wrap_ddp(self.model, self.device)
        if self.strategy == "fsdp":
            check_strategy(self.cfg)
            parallel.shard_fsdp(self.model, torch.bfloat16 if self.cfg.precision == "bf16" else None)
        return self.model

    # --- the loop -----------------------------------------------------------------------

    def fit(self, steps: int | None = None, progress: bool = True, report=None) -> list[float]:
        steps = self.cfg.steps if steps is None else steps
        losses = []
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, desc="train", unit="step")
        t0 = time.time()
        while self.step < steps:
            loss = self.train_step()
            losses.append(loss)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % self.cfg.log_every == 0 and self.rank == 0:
                log.info("step %d loss %.5f (%.2f s/step)", self.step, loss, (time.time() - t0) / len(losses))
            saved = None
            if self.step % self.cfg.checkpoint_every == 0 or self.step == steps:
                saved = self.save()
            if report:
                report({"step": self.step, "loss": loss}, saved)
        if bar:
            bar.close()
        return losses

    def train_step(self) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss."""
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        self.opt.zero_grad(set_to_none=True)
        accum, total = self.cfg.optim.grad_accum, 0.0
        for micro in range(accum):
            with self._grad_sync(micro == accum - 1):
                loss = self.loss_on(self._batch(), step_generator(self.cfg.seed, self.step, micro, self.rank))
                self.scaler.scale(loss / accum).backward()
            total += loss.item() / accum
        self.scaler.unscale_(self.opt)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            d = self.cfg.optim.ema_decay
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    self.ema[k].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.step += 1
        return total

    def loss_on(self, samples: list[Sample], gen: torch.Generator) -> torch.Tensor:
        """MSE between the prediction for the target frame and the objective's target."""
        obj = self.objective
        x0s, conds, texts = self.enc.encode(samples)
        ts = obj.sample_t(len(samples), gen)
        frames, targets = [], []
        for cond, x0, t in zip(conds, x0s, ts.tolist()):
            eps = torch.randn(x0.shape, generator=gen).to(x0.device)
            xt = obj.add_noise(x0, eps, t)
            frames.append([torch.cat([xt, torch.ones_like(xt[:1])])] + cond)  # frame 0: noised target, full mask
            targets.append(obj.target(x0, eps, t))
        model_t = torch.tensor([obj.model_time(t) for t in ts.tolist()])
        amp = DTYPES[self.cfg.precision]
        ctx = torch.autocast(self.device.type, dtype=amp) if amp != torch.float32 else nullcontext()
        with ctx:
            preds = self.net(DiTInput(frames, texts, model_t))
        losses = [torch.mean((p.float() - tgt) ** 2) for p, tgt in zip(preds, targets)]
        return torch.stack(losses).mean()

    # --- helpers of the step ------------------------------------------------------------

    def _batch(self) -> list[Sample]:
        if self._stream is None:
            self._stream = self.loader.batches(self.cfg.data.batch_size)
        return next(self._stream)

    def _lr(self) -> float:
        o = self.cfg.optim
        return o.lr * min(1.0, (self.step + 1) / o.warmup_steps) if o.warmup_steps else o.lr

    def _grad_sync(self, last_micro: bool):
        """Gradient accumulation syncs (all-reduce / reduce-scatter) only on the last micro-batch."""
        if self.strategy == "ddp" and not last_micro:
            return self.net.no_sync()
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last_micro)
        return nullcontext()

    # --- checkpoints (acemodel.checkpoint) ------------------------------------------------

    def save(self) -> str:
        return checkpoint.save(self)

    def load(self, ckpt: str) -> None:
        checkpoint.load(self, ckpt)
        self._stream = None


def train_local(cfg: TrainConfig, data, out: str, resume: bool = True, progress: bool = True) -> Trainer:
    """Train in this process, resuming from the newest checkpoint under `out` unless told not to."""
    trainer = Trainer(cfg, data, out)
    resume_latest(trainer, out, resume)
    trainer.fit(progress=progress)
    return trainer
