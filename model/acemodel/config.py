"""Model and training configuration (sizes from tiny CPU tests up to ACE-0.6B, DESIGN.md §6)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiTConfig(_Strict):
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 2
    latent_channels: int = 4  # SD-style VAE latent; +1 mask channel goes into the patch embed
    text_dim: int = 4096  # T5 v1.1 XXL hidden size
    num_indicators: int = 10  # {image}, {image1} ... {image9}
    rope_theta: float = 10000.0
    max_positions: int = 1024  # largest frame index / patch row / patch column
    # "own": keys normalised by their own RMSNorm (new training). "query": the released
    # implementation normalised keys with the query's norm; its weights need that to reproduce.
    key_norm: Literal["own", "query"] = "own"
    grad_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @model_validator(mode="after")
    def _check(self) -> DiTConfig:
        d = self.hidden_size // self.num_heads
        if self.hidden_size % self.num_heads or d % 2:
            raise ValueError("hidden_size / num_heads must be an even integer")
        if d // 6 == 0:
            raise ValueError("head dim must be at least 6 for the 3D RoPE split")
        return self


PRESETS: dict[str, dict] = {
    # a few seconds per step on a laptop CPU; for tests and the offline demo
    "tiny": {"hidden_size": 96, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "text_dim": 64, "max_positions": 256},
    "small": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "ace-0.6b": {"hidden_size": 1152, "depth": 28, "num_heads": 16, "mlp_ratio": 4.0, "patch_size": 2,
                 "text_dim": 4096},
}


def dit_config(preset: str = "ace-0.6b", **overrides) -> DiTConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model size {preset!r}; known: {sorted(PRESETS)}")
    return DiTConfig(**{**PRESETS[preset], **overrides})


def weights_id(name: str, path: str | None, random_init: bool) -> str:
    """What produced an output, for provenance: `name@random-init`, `name@PATH` or `name@hf-cache`
    (the one spelling, shared by the data platform's model specs)."""
    return f"{name}@random-init" if random_init else f"{name}@{path or 'hf-cache'}"


class EncoderSpec(_Strict):
    """Where a frozen encoder lives: a local path / HF cache id, or a tiny random one (demo, tests)."""

    name: str
    path: str | None = None
    random_init: bool = False

    @property
    def weights_id(self) -> str:
        return weights_id(self.name, self.path, self.random_init)


class DataConfig(_Strict):
    token_budget: int = 1024  # max patch tokens per image (aspect ratio preserved)
    max_side: int = 1024  # pixels
    min_side: int = 64
    text_tokens: int = 120
    cfg_dropout: float = 0.1  # probability of blanking the current instruction
    shuffle: bool = True
    shuffle_buffer_row_groups: int = 16
    batch_size: int = 4
    num_workers: int = 0
    # a latent / text-embedding cache (the data CLI's `encode-cache`): train from it instead of encoding on the fly
    cache: str | None = None


class OptimConfig(_Strict):
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0
    grad_accum: int = 1
    ema_decay: float = 0.9999  # 0 disables EMA


class TrainConfig(_Strict):
    """One YAML file: model size, encoders, data, objective, optimiser, schedule."""

    model: str = "tiny"  # preset name
    model_overrides: dict = Field(default_factory=dict)
    text_encoder: EncoderSpec = EncoderSpec(name="google/t5-v1_1-xxl")
    vae: EncoderSpec = EncoderSpec(name="stabilityai/sd-vae-ft-mse")
    init_from: str | None = None  # released checkpoint (.pth / .safetensors) to fine-tune
    objective: Literal["ddpm_eps", "rectified_flow"] = "ddpm_eps"
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    steps: int = 1000
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    attention: Literal["auto", "flash", "flex", "sdpa", "naive"] = "auto"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    device: str = "auto"
    cpu_threads: int | None = None  # torch intra-op threads on CPU (tiny models: 1 is fastest)
    # scale-out (Ray Train): 1 worker = a plain single process
    num_workers: int = 1
    use_gpu: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"

    def dit(self) -> DiTConfig:
        return dit_config(self.model, **self.model_overrides)
