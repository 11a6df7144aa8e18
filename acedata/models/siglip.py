"""SigLIP (any open_clip model) for image embeddings, loaded without any download.

Where the weights come from, in order:
* `spec.path`: a checkpoint file (the architecture is the built-in config `spec.name`)
  or a directory (with `open_clip_config.json`, as HF hub repos ship, or a bare
  checkpoint for the built-in config);
* the HF cache: `spec.options["hf_repo"]`, else `timm/<name>` (open_clip's SigLIP repos),
  or the repo in a `hf-hub:org/repo` name;
* `random_init: true` only: the architecture with seeded random weights. `acedata-tiny-siglip`
  is a tiny SigLIP-style config registered here for demos and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from acedata.errors import ModelNotFound, UserError
from acedata.models import ModelSpec, find_in_hf_cache, hf_cache_dirs, pick_device

TINY = "acedata-tiny-siglip"

# SigLIP-style: 0.5 mean/std preprocessing, bias-initialised logits, non-causal text tower.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "no_causal_mask": True, "pool_type": "last"},
}


@dataclass
class LoadedEmbedder:
    model: Any  # open_clip model in eval mode
    preprocess: Any  # PIL image -> CHW float tensor
    dim: int
    device: str
    dtype: Any  # torch dtype of the forward pass
    model_id: str  # goes into the `model` column


def register_tiny() -> None:
    """Make the tiny architecture known to open_clip by name (idempotent)."""
    from open_clip import factory

    factory._MODEL_CONFIGS.setdefault(TINY, dict(TINY_CONFIG))  # open_clip registers configs only from files


def _weights_file(d: str) -> str | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "model.safetensors", "open_clip_pytorch_model.pth", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def _locate(spec: ModelSpec) -> tuple[str, str | None, list[str]]:
    """(how, where, looked): how is 'dir' (open_clip_config.json), 'file' or 'missing'."""
    looked: list[str] = []
    candidates: list[str] = []
    if spec.path:
        candidates.append(spec.path)
    name = spec.name
    repo = spec.options.get("hf_repo") or (name[len("hf-hub:"):] if name.startswith("hf-hub:") else f"timm/{name}")
    cached = find_in_hf_cache(repo)
    if cached:
        candidates.append(cached)
    else:
        looked.extend(os.path.join(c, "models--" + repo.replace("/", "--")) for c in hf_cache_dirs())
    for c in candidates:
        if os.path.isfile(c):
            return "file", c, looked
        if os.path.isdir(c):
            if os.path.isfile(os.path.join(c, "open_clip_config.json")) and _weights_file(c):
                return "dir", c, looked
            w = _weights_file(c)
            if w:
                return "file", w, looked
        looked.insert(0, c)
    return "missing", None, looked


def check_available(spec: ModelSpec) -> None:
    """Raise ModelNotFound on the driver before any worker starts (loads nothing)."""
    if spec.random_init:
        return
    how, _, looked = _locate(spec)
    if how == "missing":
        raise ModelNotFound(spec.name, looked, "set `path:` to a checkpoint or open_clip dir, or use "
                            "random_init: true for a demo (nothing is downloaded)")


def load_image_embedder(spec: ModelSpec) -> LoadedEmbedder:
    import open_clip
    import torch

    register_tiny()
    device = pick_device(spec)
    dtype = {"auto": torch.float16 if device.startswith("cuda") else torch.float32, "float32": torch.float32,
             "float16": torch.float16, "bfloat16": torch.bfloat16}.get(spec.dtype)
    if dtype is None:
        raise UserError(f"model {spec.name!r}: dtype {spec.dtype!r} is not one of auto, float32, float16, bfloat16")
    arch = spec.name[len("hf-hub:"):].split("/")[-1] if spec.name.startswith("hf-hub:") else spec.name
    if spec.random_init:
        if open_clip.get_model_config(arch) is None:
            raise UserError(f"model {arch!r}: not an open_clip architecture (try {TINY} or one of "
                            f"open_clip.list_models())")
        torch.manual_seed(int(spec.options.get("seed", 0)))
        # random-init SigLIP-family archs get SigLIP's 0.5 mean/std preprocessing
        norm = {"image_mean": (0.5,) * 3, "image_std": (0.5,) * 3} if "siglip" in arch.lower() else {}
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, pretrained_text=False,
                                                                     **norm)
        model_id = spec.weights_id
    else:
        check_available(spec)
        how, where, _ = _locate(spec)
        if how == "dir":
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{where}")
        else:
            if open_clip.get_model_config(arch) is None:
                raise UserError(f"model {arch!r}: no open_clip config for checkpoint {where}; "
                                f"point `path:` at a dir with open_clip_config.json")
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=where)
        model_id = f"{spec.name}@{os.path.basename(os.path.normpath(where))}"
    model = model.to(device=device, dtype=dtype).eval()
    dim = int(model.visual.output_dim) if hasattr(model.visual, "output_dim") else None
    if dim is None:
        with torch.no_grad():
            size = preprocess.transforms[0].size
            size = size if isinstance(size, int) else size[0]
            dim = int(model.encode_image(torch.zeros(1, 3, size, size, device=device, dtype=dtype)).shape[-1])
    return LoadedEmbedder(model, preprocess, dim, device, dtype, model_id)
