"""Training loop: AdamW, EMA, autocast, gradient checkpointing and accumulation, safetensors
checkpoints with optimizer and loader state, exact resume. One process by default; many
GPUs / nodes through Ray Train's TorchTrainer (DDP) when asked; FSDP is refused until checkpoint
gathering for flattened parameters exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import nullcontext

import torch
from safetensors.torch import load_file, save_file

from acemodel.config import TrainConfig
from acemodel.data import LCUStream, Sample
from acemodel.diffusion import make_objective
from acemodel.dit import INDICATORS, ACEDiT, DiTInput
from acemodel.encoders import VAE, TextEncoder, downsample_mask

log = logging.getLogger("acemodel.train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_generator(*key) -> torch.Generator:
    """Noise and timesteps of a step depend only on (seed, step, micro-batch, rank): resume-safe."""
    h = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(h)


class Encoders:
    """The frozen text encoder and VAE plus the conversion of Samples to model inputs."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.text = TextEncoder(cfg.text_encoder, cfg.data.text_tokens, str(device))
        self.vae = VAE(cfg.vae, str(device))
        self.device = device

    def condition_frames(self, s: Sample) -> list[torch.Tensor]:
        lats = self.vae.encode([f.image for f in s.conditions]) if s.conditions else []
        return [torch.cat([z, downsample_mask(f.mask, z.shape[-2:]).to(z.device)]) for z, f in zip(lats, s.conditions)]


def unwrap(model: torch.nn.Module) -> ACEDiT:
    return model.module if hasattr(model, "module") else model


class Trainer:
    def __init__(self, cfg: TrainConfig, data, out: str, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world_size
        self.device = device or pick_device(cfg.device)
        if cfg.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = ACEDiT(cfg.dit()).to(self.device)
        self.model.attention_backend = cfg.attention
        self.enc = Encoders(cfg, self.device)
        if self.enc.text.dim != self.model.cfg.text_dim:
            from acedata.errors import UserError

            raise UserError(f"text encoder width {self.enc.text.dim} != model text_dim {self.model.cfg.text_dim}; "
                            "set model_overrides.text_dim")
        self.model.indicator_embeddings.copy_(self.enc.text.indicator_embeddings(INDICATORS))
        if cfg.init_from:  # released weights (and their stored indicator embeddings, when present)
            from acemodel.convert import load_released

            load_released(self.model, cfg.init_from)
        self.net: torch.nn.Module = self.model  # replaced by a DDP/FSDP wrapper in distributed runs
        self.objective = make_objective(cfg.objective)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                     weight_decay=o.weight_decay, foreach=True)
        self.ema = {k: v.detach().float().clone() for k, v in self.model.named_parameters()} if o.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.loader = LCUStream(data, cfg.data, cfg.seed, rank, world_size)
        self._stream = None
        self.step = 0

    # --- one step -------------------------------------------------------------------

    def _batch(self) -> list[Sample]:
        if self._stream is None:
            self._stream = self.loader.batches(self.cfg.data.batch_size)
        return next(self._stream)

    def loss_on(self, samples: list[Sample], gen: torch.Generator) -> torch.Tensor:
        """MSE between the prediction for the target frame and the objective's target."""
        enc, obj = self.enc, self.objective
        x0s = enc.vae.encode([s.target for s in samples])
        ts = obj.sample_t(len(samples), gen)
        frames, targets = [], []
        for s, x0, t in zip(samples, x0s, ts.tolist()):
            eps = torch.randn(x0.shape, generator=gen).to(x0.device)
            xt = obj.add_noise(x0, eps, t)
            frames.append([torch.cat([xt, torch.ones_like(xt[:1])])] + enc.condition_frames(s))
            targets.append(obj.target(x0, eps, t))
        texts = [enc.text.encode(s.frame_instructions()) for s in samples]
        model_t = torch.tensor([obj.model_time(t) for t in ts.tolist()])
        amp = DTYPES[self.cfg.precision]
        ctx = torch.autocast(self.device.type, dtype=amp) if amp != torch.float32 else nullcontext()
        with ctx:
            preds = self.net(DiTInput(frames, texts, model_t))
        losses = [torch.mean((p.float() - tgt) ** 2) for p, tgt in zip(preds, targets)]
        return torch.stack(losses).mean()

    def _lr(self) -> float:
        o = self.cfg.optim
        return o.lr * min(1.0, (self.step + 1) / o.warmup_steps) if o.warmup_steps else o.lr

    def train_step(self) -> float:
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        self.opt.zero_grad(set_to_none=True)
        accum, total = self.cfg.optim.grad_accum, 0.0
        for micro in range(accum):
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

    # --- checkpoints ------------------------------------------------------------------

    def save(self) -> str:
        """checkpoints/step-XXXXXXXX/: model + ema (safetensors), optimizer, loader state, config."""
        final = os.path.join(self.out, "checkpoints", f"step-{self.step:08d}")
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "acemodel"})
        if self.ema is not None:
            ema = {**sd, **{k: v.to(sd[k].dtype).cpu() for k, v in self.ema.items()}}
            save_file(ema, os.path.join(tmp, "ema.safetensors"), metadata={"format": "acemodel"})
        torch.save({"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict()},
                   os.path.join(tmp, "optimizer.pt"))
        state = {"step": self.step, "loader": self.loader.state_dict(), "config": self.cfg.model_dump(mode="json"),
                 "text_encoder": self.enc.text.weights_id, "vae": self.enc.vae.weights_id}
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(state, f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._prune()
        return final

    def _prune(self) -> None:
        root = os.path.join(self.out, "checkpoints")
        done = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))
        for d in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)

    def load(self, ckpt: str) -> None:
        self.model.load_state_dict(load_file(os.path.join(ckpt, "model.safetensors"), device=str(self.device)))
        if self.ema is not None and os.path.exists(os.path.join(ckpt, "ema.safetensors")):
            ema = load_file(os.path.join(ckpt, "ema.safetensors"))
            self.ema = {k: ema[k].float().to(self.device) for k in self.ema}
        opt = torch.load(os.path.join(ckpt, "optimizer.pt"), map_location=self.device, weights_only=True)
        self.opt.load_state_dict(opt["optimizer"])
        self.scaler.load_state_dict(opt["scaler"])
        with open(os.path.join(ckpt, "state.json")) as f:
            state = json.load(f)
        self.step = state["step"]
        self.loader.load_state_dict(state["loader"])
        self._stream = None

    # --- loop ---------------------------------------------------------------------------

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
            if self.rank == 0 and (self.step % self.cfg.checkpoint_every == 0 or self.step == steps):
                saved = self.save()
            if report:
                report({"step": self.step, "loss": loss}, saved)
        if bar:
            bar.close()
        return losses


def latest_checkpoint(path: str) -> str | None:
    """`path` itself when it is a checkpoint, else the newest checkpoints/step-* under it."""
    if os.path.exists(os.path.join(path, "state.json")):
        return path
    root = os.path.join(path, "checkpoints")
    if not os.path.isdir(root):
        return None
    done = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))
    return os.path.join(root, done[-1]) if done else None


def train_local(cfg: TrainConfig, data, out: str, resume: bool = True, progress: bool = True) -> Trainer:
    trainer = Trainer(cfg, data, out)
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt:
        trainer.load(ckpt)
        log.info("resumed from %s (step %d)", ckpt, trainer.step)
    trainer.fit(progress=progress)
    return trainer


def _ray_worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    cfg = TrainConfig(**config["cfg"])
    trainer = Trainer(cfg, config["data"], config["out"], ctx.get_world_rank(), ctx.get_world_size(),
                      device=ray.train.torch.get_device())
    ckpt = latest_checkpoint(config["out"])
    if ckpt:
        trainer.load(ckpt)
    trainer.net = ray.train.torch.prepare_model(trainer.model, parallel_strategy=cfg.strategy,
                                                move_to_device=True)
    trainer.fit(progress=False, report=lambda metrics, _saved: ray.train.report(metrics))


def train_ray(cfg: TrainConfig, data, out: str, address: str | None = None) -> dict:
    """Data-parallel (DDP) training on a Ray cluster. Rank 0 writes checkpoints to `out`,
    which must be storage every node can reach for multi-node runs."""
    if cfg.strategy == "fsdp":
        # FSDP flattens parameters: EMA and safetensors checkpoints would need a full-state-dict gather
        # on every rank, which is not implemented yet. ACE-0.6B (~10 GB of weights + AdamW) fits DDP.
        from acedata.errors import UserError

        raise UserError("strategy: fsdp is not supported yet (checkpoint gathering); use strategy: ddp")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        from acedata.runtime import init_ray

        init_ray(address)
    out = os.path.abspath(out)
    trainer = TorchTrainer(
        _ray_worker_loop,
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
