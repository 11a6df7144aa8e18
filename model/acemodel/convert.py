"""Released ACE checkpoints (PixArt-style keys) -> this model's state dict.

Key mapping (DESIGN.md §6): `attn.qkv` -> `attn.{q,k,v}`, `attn.proj` -> `attn.o`,
`cross_attn.q_linear` -> `cross_attn.q`, `cross_attn.kv_linear` -> `cross_attn.{k,v}`,
`cross_attn.proj` -> `cross_attn.o`, `y_embedder.y_proj.*` -> `y_embedder.*`,
`text_position_embeddings.pos` -> `indicator_embeddings`.
Compatibility switches the released weights need:
  - widen a 4-channel `x_embedder.proj.weight` with a zero mask channel (the 5th input);
  - PRED_SIGMA: the final layer predicts 2C channels of which only the first C are used —
    keep the first half of its rows (ordering (p, q, c));
  - the release normalised keys with the query's RMSNorm: build the model with
    `key_norm: query` (checked by `load_released`).
"""

from __future__ import annotations

import os

import torch

from acemodel.errors import UserError

SKIP_PREFIXES = ("model_ema.", "first_stage_model.", "cond_stage_model.", "ema.")


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        from acemodel.errors import ModelNotFound

        raise ModelNotFound("ACE checkpoint", [path], "download it on a machine with internet and copy it here")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def _final_first_half(t: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    rows = t.shape[0]
    if rows == patch * patch * channels:
        return t
    if rows != patch * patch * 2 * channels:
        raise ValueError(f"final layer has {rows} outputs; expected {patch * patch * channels} or twice that")
    return t.reshape(patch, patch, 2 * channels, *t.shape[1:])[:, :, :channels].reshape(-1, *t.shape[1:])


def convert_state_dict(sd: dict[str, torch.Tensor], patch: int = 2, latent_channels: int = 4) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        if key.startswith(SKIP_PREFIXES):
            continue
        k = key.removeprefix("model.")
        if k == "text_position_embeddings.pos":
            out["indicator_embeddings"] = v
        elif ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                out[k.replace(".attn.qkv.", f".attn.{name}.")] = part
        elif ".cross_attn.kv_linear." in k:
            for name, part in zip("kv", v.chunk(2, dim=0)):
                out[k.replace(".cross_attn.kv_linear.", f".cross_attn.{name}.")] = part
        elif ".cross_attn.q_linear." in k:
            out[k.replace(".cross_attn.q_linear.", ".cross_attn.q.")] = v
        elif ".cross_attn.proj." in k:
            out[k.replace(".cross_attn.proj.", ".cross_attn.o.")] = v
        elif ".attn.proj." in k:
            out[k.replace(".attn.proj.", ".attn.o.")] = v
        elif k.startswith("y_embedder.y_proj."):
            out[k.replace("y_embedder.y_proj.", "y_embedder.")] = v
        elif k == "x_embedder.proj.weight" and v.shape[1] == latent_channels:
            out[k] = torch.cat([v, v.new_zeros(v.shape[0], 1, *v.shape[2:])], dim=1)  # zero mask channel
        elif k.startswith("final_layer.linear."):
            out[k] = _final_first_half(v, patch, latent_channels)
        else:
            out[k] = v
    return out


def load_released(model, path: str, require_compat: bool = True) -> dict[str, list[str]]:
    """Load a released checkpoint into `model` (an ACEDiT) in place; returns missing/unexpected keys."""
    if require_compat and model.cfg.key_norm != "query":
        raise UserError("released ACE weights normalise keys with the query's norm; set "
                        "`model_overrides: {key_norm: query}` in the training config")
    sd = convert_state_dict(read_checkpoint(path), model.cfg.patch_size, model.cfg.latent_channels)
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise UserError(f"{path}: shapes differ from the model for {bad[:3]}...; is the model size right?")
    result = model.load_state_dict(sd, strict=False)
    # indicator embeddings may come from the text encoder instead; norm_k is unused by the release
    missing = [k for k in result.missing_keys if k != "indicator_embeddings" and not k.endswith("norm_k.weight")]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} model weights, e.g. {missing[:3]}")
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
