"""Training loop: AdamW, EMA, autocast, gradient checkpointing and accumulation, safetensors
checkpoints with optimizer and loader state, exact resume. One process by default; many
GPUs / nodes through Ray Train's TorchTrainer with DDP or FSDP2 (acemodel.parallel) when asked.
With `data.cache` set, samples come pre-encoded from an encode cache (acemodel.cache) and the
VAE / text encoder are never loaded.
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

from acemodel import parallel
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
        self.text_dim = self.text.dim
        self.text_weights_id, self.vae_weights_id = self.text.weights_id, self.vae.weights_id

    def indicator_embeddings(self) -> torch.Tensor:
        return self.text.indicator_embeddings(INDICATORS)

    def stream(self, cfg: TrainConfig, rank: int, world_size: int, data) -> LCUStream:
        return LCUStream(data, cfg.data, cfg.seed, rank, world_size)

    def condition_frames(self, s: Sample) -> list[torch.Tensor]:
        lats = self.vae.encode([f.image for f in s.conditions]) if s.conditions else []
        return [torch.cat([z, downsample_mask(f.mask, z.shape[-2:]).to(z.device)]) for z, f in zip(lats, s.conditions)]

    def encode(self, samples: list[Sample]):
        """(target latents, condition frames (latent ⊕ mask), per-frame instruction states)."""
        x0s = self.vae.encode([s.target for s in samples])
        conds = [self.condition_frames(s) for s in samples]
        texts = [self.text.encode(s.frame_instructions()) for s in samples]
        return x0s, conds, texts


def make_encoders(cfg: TrainConfig, device: torch.device):
    if cfg.data.cache:
        from acemodel.cache import CachedEncoders

        return CachedEncoders(cfg, device)
    return Encoders(cfg, device)


def check_strategy(cfg: TrainConfig) -> None:
    if cfg.strategy == "fsdp" and cfg.precision == "fp16":
        from acedata.errors import UserError

        raise UserError("strategy: fsdp trains in fp32 or bf16 (fp16 loss scaling over shards is not supported); "
                        "set precision: bf16")


def unwrap(model: torch.nn.Module) -> ACEDiT:
    return model.module if hasattr(model, "module") else model


class Trainer:
    """One training process. Under torch.distributed (Ray Train, or any launcher) with world_size > 1
    it wraps the model for `strategy` (cfg.strategy by default): DDP, or FSDP2 sharding."""

    def __init__(self, cfg: TrainConfig, data, out: str, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None, strategy: str | None = None) -> None:
        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world_size
        self.device = device or pick_device(cfg.device)
        if cfg.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = ACEDiT(cfg.dit()).to(self.device)
        self.model.attention_backend = cfg.attention
        self.enc = make_encoders(cfg, self.device)
        if self.enc.text_dim != self.model.cfg.text_dim:
            from acedata.errors import UserError

            raise UserError(f"text encoder width {self.enc.text_dim} != model text_dim {self.model.cfg.text_dim}; "
                            "set model_overrides.text_dim")
        self.model.indicator_embeddings.copy_(self.enc.indicator_embeddings())
        if cfg.init_from:  # released weights (and their stored indicator embeddings, when present)
            from acemodel.convert import load_released

            load_released(self.model, cfg.init_from)
        self.strategy = (strategy or cfg.strategy) if world_size > 1 and parallel.is_distributed() else "single"
        # before the optimizer: FSDP replaces every parameter by its shard
        self.net: torch.nn.Module = self._parallelize()
        self.objective = make_objective(cfg.objective)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                     weight_decay=o.weight_decay, foreach=True)
        # fp32 EMA; under FSDP each rank keeps the EMA of its own shards
        self.ema = {k: v.detach().float().clone() for k, v in self.model.named_parameters()} if o.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
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

    # --- one step -------------------------------------------------------------------

    def _batch(self) -> list[Sample]:
        if self._stream is None:
            self._stream = self.loader.batches(self.cfg.data.batch_size)
        return next(self._stream)

    def loss_on(self, samples: list[Sample], gen: torch.Generator) -> torch.Tensor:
        """MSE between the prediction for the target frame and the objective's target."""
        obj = self.objective
        x0s, conds, texts = self.enc.encode(samples)
        ts = obj.sample_t(len(samples), gen)
        frames, targets = [], []
        for cond, x0, t in zip(conds, x0s, ts.tolist()):
            eps = torch.randn(x0.shape, generator=gen).to(x0.device)
            xt = obj.add_noise(x0, eps, t)
            frames.append([torch.cat([xt, torch.ones_like(xt[:1])])] + cond)
            targets.append(obj.target(x0, eps, t))
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

    def _grad_sync(self, last_micro: bool):
        """Gradient accumulation syncs (all-reduce / reduce-scatter) only on the last micro-batch."""
        if self.strategy == "ddp" and not last_micro:
            return self.net.no_sync()
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last_micro)
        return nullcontext()

    def train_step(self) -> float:
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

    # --- checkpoints ------------------------------------------------------------------

    def save(self) -> str:
        """checkpoints/step-XXXXXXXX/: model + ema (safetensors), optimizer, loader states, config.

        Every rank calls it (FSDP gathers shards); rank 0 writes full, strategy-independent files."""
        final = os.path.join(self.out, "checkpoints", f"step-{self.step:08d}")
        writer = self.rank == 0
        sd = parallel.full_model_state(self.model)
        ema = parallel.full_tensors(self.ema, writer) if self.ema is not None else None
        optim = parallel.full_optimizer_state(self.model, self.opt)
        loaders = parallel.gather_objects(self.loader.state_dict())
        if writer:
            tmp = final + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "acemodel"})
            if ema is not None:
                ema = {**sd, **{k: v.to(sd[k].dtype) for k, v in ema.items()}}
                save_file(ema, os.path.join(tmp, "ema.safetensors"), metadata={"format": "acemodel"})
            torch.save({"format": "by-name", "optimizer": optim, "scaler": self.scaler.state_dict()},
                       os.path.join(tmp, "optimizer.pt"))
            state = {"step": self.step, "loader": loaders[0], "loaders": loaders, "world_size": self.world,
                     "strategy": self.strategy, "config": self.cfg.model_dump(mode="json"),
                     "text_encoder": self.enc.text_weights_id, "vae": self.enc.vae_weights_id}
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f, indent=1)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._prune()
        parallel.barrier()
        return final

    def _prune(self) -> None:
        root = os.path.join(self.out, "checkpoints")
        done = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))
        for d in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)

    def load(self, ckpt: str) -> None:
        """Resume from a checkpoint. Every rank calls it; rank 0 reads the files and the state goes
        to the other ranks by broadcast (replicated) or scatter (FSDP shards)."""
        reader = self.rank == 0 or not parallel.is_distributed()
        path = lambda name: os.path.join(ckpt, name)
        state = None
        if reader:
            with open(path("state.json")) as f:
                state = json.load(f)
        state = parallel.broadcast_object(state)
        loaders = state.get("loaders") or [state["loader"]]
        if len(loaders) != self.world:
            from acedata.errors import UserError

            raise UserError(f"checkpoint {ckpt} was written by {len(loaders)} rank(s); resume it with "
                            f"{len(loaders)} worker(s) (this run has {self.world})")
        parallel.load_model_state(self.model, load_file(path("model.safetensors")) if reader else {})
        if self.ema is not None:
            has_ema = parallel.broadcast_object(reader and os.path.exists(path("ema.safetensors")))
            full = load_file(path("ema.safetensors")) if reader and has_ema else {}
            if has_ema:
                self.ema = {k: parallel.shard_like(full.get(k), p) for k, p in self.model.named_parameters()}
        opt = torch.load(path("optimizer.pt"), map_location="cpu", weights_only=True) if reader else None
        if parallel.broadcast_object(opt.get("format") if opt is not None else None) != "by-name":
            # older checkpoints: the int-keyed state of an unsharded optimizer, which every rank reads
            opt = opt or torch.load(path("optimizer.pt"), map_location="cpu", weights_only=True)
            self.opt.load_state_dict(opt["optimizer"])
        else:
            parallel.load_optimizer_state(self.model, self.opt, opt["optimizer"] if opt is not None else {})
        self.scaler.load_state_dict(parallel.broadcast_object(opt["scaler"] if opt is not None else None))
        self.step = state["step"]
        self.loader.load_state_dict(loaders[self.rank])
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
            if self.step % self.cfg.checkpoint_every == 0 or self.step == steps:
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
    ckpt = parallel.broadcast_object(latest_checkpoint(config["out"]) if ctx.get_world_rank() == 0 else None)
    if ckpt:
        trainer.load(ckpt)
    trainer.fit(progress=False, report=lambda metrics, _saved: ray.train.report(metrics))


def _absolute(path: str) -> str:
    """A user path as every Ray worker must see it: URIs as given, local paths made absolute here,
    on the driver (a worker's working directory is not the user's)."""
    return path if "://" in path else os.path.abspath(path)


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
    """Data-parallel training on a Ray cluster: DDP, or FSDP (parameters, gradients, optimizer state
    and EMA sharded per DiT block). Rank 0 writes full checkpoints to `out`, which must be storage
    every node can reach for multi-node runs; a rerun resumes from the newest one."""
    from acedata.errors import UserError
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
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        from acedata.runtime import init_ray

        init_ray(address)
    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "data": data, "out": out},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(storage_path=os.path.join(out, "ray"), name="train"),
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
    with open(os.path.join(ckpt, "state.json")) as f:
        step = json.load(f)["step"]
    return {"step": step, "checkpoint": ckpt, "workers": cfg.num_workers, "strategy": cfg.strategy}
