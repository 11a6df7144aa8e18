"""Frozen encoders: T5 text encoder (120 tokens, padding dropped) and an SD-style AutoencoderKL,
and `Encoders`, which turns loader Samples into the DiT's inputs with them.

Both load from a local path or the Hugging Face cache (nothing is
downloaded). `random_init: true` builds tiny, deterministic random models with a byte-level
tokenizer that needs no files — for tests and the offline demo only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
import torch.nn.functional as F

from acemodel.config import EncoderSpec, TrainConfig
from acemodel.data import LCUStream, Sample
from acemodel.dit import INDICATORS
from acemodel.errors import ModelNotFound

VAE_SCALE = 0.18215
VAE_FACTOR = 8


def _seeded(seed: int):
    torch.manual_seed(seed)


def local_weights(spec: EncoderSpec) -> str:
    """The local folder holding `spec`'s weights: its `path`, else the model id's snapshot in the
    Hugging Face cache (never downloaded); ModelNotFound names both places otherwise."""
    import os

    if spec.path and os.path.exists(spec.path):
        return spec.path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(spec.name, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):
        looked = [p for p in (spec.path, os.path.join(constants.HF_HUB_CACHE, "models--" + spec.name.replace("/", "--")))
                  if p]
        raise ModelNotFound(spec.name, looked, "put the weights there or set `path:` in the config "
                                                 "(nothing is downloaded)") from None


class TextEncoder:
    """Instruction strings -> list of (L_i, dim) encoder states (padding tokens dropped)."""

    def __init__(self, spec: EncoderSpec, max_tokens: int = 120, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, cache_size: int = 4096) -> None:
        from transformers import AutoTokenizer, ByT5Tokenizer, T5Config, T5EncoderModel

        if spec.random_init:
            with torch.random.fork_rng(devices=[]):
                _seeded(1234)
                cfg = T5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                               feed_forward_proj="gated-gelu", dropout_rate=0.0)
                self.model = T5EncoderModel(cfg)
            self.tokenizer = ByT5Tokenizer()
        else:
            path = local_weights(spec)
            self.model = T5EncoderModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.max_tokens, self.device = max_tokens, device
        self.dim = self.model.config.d_model
        self.weights_id = spec.weights_id
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # frozen encoder: memoise per string
        self._cache_size = cache_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            tok = self.tokenizer(todo, padding="max_length", truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            states = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
            for text, s, m in zip(todo, states, tok.attention_mask):
                self._cache[text] = s[: int(m.sum())].float()
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return [self._cache[t] for t in texts]

    @torch.no_grad()
    def indicator_embeddings(self, indicators: list[str]) -> torch.Tensor:
        """The encoder state of the first token of each indicator string, as the release does."""
        return torch.stack([e[0] for e in self.encode(indicators)])


class VAE:
    """Images in [-1, 1] (3, H, W) <-> scaled latents (4, H/8, W/8)."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 cache_size: int = 2048) -> None:
        from diffusers import AutoencoderKL

        if spec.random_init:
            with torch.random.fork_rng(devices=[]):
                _seeded(4321)
                self.model = AutoencoderKL(
                    block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    mid_block_add_attention=False,
                )
        else:
            path = local_weights(spec)
            self.model = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        if not spec.random_init or dtype != torch.float32:
            self.model.to(dtype=dtype)
        self.model.to(device=device).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        self.scale = VAE_SCALE
        # posterior means are deterministic: memoise them per image content (later epochs skip the VAE)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self.weights_id = spec.weights_id

    @torch.no_grad()
    def encode(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Deterministic (posterior mean) latents, so re-encoding a sample is reproducible."""
        out = []
        for im in images:
            key = hashlib.sha1(im.detach().cpu().contiguous().numpy().tobytes()).digest() + str(tuple(im.shape)).encode()
            z = self._cache.get(key)
            if z is None:
                post = self.model.encode(im.unsqueeze(0).to(self.device, self.dtype)).latent_dist
                z = (post.mean[0] * self.scale).float()
                if self._cache_size:
                    self._cache[key] = z
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
            out.append(z)
        return out

    @torch.no_grad()
    def encode_batch(self, images: list[torch.Tensor], batch_size: int = 8) -> list[torch.Tensor]:
        """Like `encode`, with same-size images run together (the cache stage's bulk path); no memo."""
        out: list[torch.Tensor | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        for idx in by_shape.values():
            for k in range(0, len(idx), batch_size):
                chunk = idx[k: k + batch_size]
                x = torch.stack([images[i] for i in chunk]).to(self.device, self.dtype)
                z = (self.model.encode(x).latent_dist.mean * self.scale).float()
                for i, zi in zip(chunk, z):
                    out[i] = zi
        return out

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.model.decode((latent / self.scale).unsqueeze(0).to(self.device, self.dtype)).sample[0]
        return x.float().clamp(-1, 1)


def downsample_mask(mask: torch.Tensor | None, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) mask in {0,1} -> (1, H/8, W/8) with nearest-exact; a missing mask is all ones."""
    if mask is None:
        return torch.ones(1, *latent_hw)
    return F.interpolate(mask.unsqueeze(0).float(), size=latent_hw, mode="nearest-exact")[0]


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
