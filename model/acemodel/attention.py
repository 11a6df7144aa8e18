"""Variable-length attention over packed sequences (no padding).

A batch is one long token sequence; `cu_seqlens` (cumulative lengths, int32, starting at 0)
delimit the segments that may attend to each other: whole samples for self-attention, single
frames (queries) and their own instruction (keys) for cross-attention.

Backends:
  flash  flash-attn's varlen kernel (CUDA, fp16/bf16), used by `auto` when installed
  flex   PyTorch flex attention with a block-sparse document mask (CUDA, `auto` without flash)
  sdpa   PyTorch SDPA per segment (CPU default; exact, no padding)
  naive  explicit softmax per segment, in float64 — the reference the tests compare against
A padded layout (`PaddedLayout`) exists only as the baseline the benchmark measures against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import torch
import torch.nn.functional as F

try:  # optional GPU extra
    from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure means "not available"
    flash_attn_varlen_func = None


def cu_seqlens(lengths: list[int] | torch.Tensor, device=None) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.int32)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0, dtype=torch.int32)]).to(device)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend != "auto":
        if backend == "flash" and flash_attn_varlen_func is None:
            raise RuntimeError("attention backend 'flash' asked for but flash-attn is not installed")
        return backend
    if device.type == "cuda":
        return "flash" if flash_attn_varlen_func is not None else "flex"
    return "sdpa"


def _segments(cu: torch.Tensor) -> list[tuple[int, int]]:
    c = cu.tolist()
    return list(pairwise(c))


def naive_varlen(q, k, v, cu_q, cu_k) -> torch.Tensor:
    """Reference: softmax(q k^T / sqrt(d)) v for each segment separately, in float64."""
    out = []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for (qs, qe), (ks, ke) in zip(_segments(cu_q), _segments(cu_k)):
        qi, ki, vi = (t.double().transpose(0, 1) for t in (q[qs:qe], k[ks:ke], v[ks:ke]))  # H, L, D
        att = torch.softmax(qi @ ki.transpose(-1, -2) * scale, dim=-1)
        out.append((att @ vi).transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def _lengths(cu: torch.Tensor) -> list[int]:
    c = cu.tolist()
    return [b - a for a, b in pairwise(c)]


def sdpa_varlen(q, k, v, cu_q, cu_k) -> torch.Tensor:
    # split (whose backward is one cat), not slicing: a slice's backward writes a full-size zero
    # gradient per segment, which made packed training slower than padding on CPU
    lq, lk = _lengths(cu_q), _lengths(cu_k)
    out = [
        F.scaled_dot_product_attention(*(t.transpose(0, 1).unsqueeze(0) for t in (qi, ki, vi)))[0].transpose(0, 1)
        for qi, ki, vi in zip(q.split(lq), k.split(lk), v.split(lk))
    ]
    return torch.cat(out)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _doc_ids(cu: torch.Tensor) -> torch.Tensor:
    lengths = (cu[1:] - cu[:-1]).long()
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)


def flex_varlen(q, k, v, cu_q, cu_k, compiled: bool = True) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    doc_q, doc_k = _doc_ids(cu_q), _doc_ids(cu_k)

    def same_segment(b, h, qi, ki):
        return doc_q[qi] == doc_k[ki]

    mask = create_block_mask(same_segment, None, None, q.shape[0], k.shape[0], device=q.device)
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), block_mask=mask)
    return out[0].transpose(0, 1)


def flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int) -> torch.Tensor:
    dtype = q.dtype
    half = torch.bfloat16 if dtype not in (torch.float16, torch.bfloat16) else dtype
    out = flash_attn_varlen_func(q.to(half), k.to(half), v.to(half), cu_q, cu_k, max_q, max_k)
    return out.to(dtype)


def varlen_attention(q, k, v, cu_q, cu_k, max_q: int, max_k: int, backend: str = "sdpa") -> torch.Tensor:
    """q: (Tq, H, D), k/v: (Tk, H, D) packed; segment i of q attends only to segment i of k."""
    if backend == "flash":
        return flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k)
    if backend == "flex":
        return flex_varlen(q, k, v, cu_q, cu_k, compiled=q.is_cuda)
    if backend == "sdpa":
        return sdpa_varlen(q, k, v, cu_q, cu_k)
    if backend == "naive":
        return naive_varlen(q, k, v, cu_q, cu_k)
    raise ValueError(f"unknown attention backend {backend!r}")


@dataclass
class PackedLayout:
    """Segment boundaries of one packed batch, shared by every block."""

    cu_self: torch.Tensor  # per sample (all frames)
    max_self: int
    cu_frame: torch.Tensor  # per frame (cross-attention queries)
    max_frame: int
    cu_text: torch.Tensor  # per frame's instruction tokens (cross-attention keys)
    max_text: int
    backend: str

    def self_attention(self, q, k, v):
        return varlen_attention(q, k, v, self.cu_self, self.cu_self, self.max_self, self.max_self, self.backend)

    def cross_attention(self, q, k, v):
        return varlen_attention(q, k, v, self.cu_frame, self.cu_text, self.max_frame, self.max_text, self.backend)


@dataclass
class PaddedLayout:
    """Baseline: tokens padded to (B, L), texts padded to a fixed length, boolean masks."""

    self_mask: torch.Tensor  # (B, 1, L, L) True = may attend
    cross_mask: torch.Tensor  # (B, 1, L, S)

    def self_attention(self, q, k, v):  # (B, L, H, D)
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=self.self_mask)
        return out.transpose(1, 2)

    def cross_attention(self, q, k, v):
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=self.cross_mask)
        return out.transpose(1, 2)
