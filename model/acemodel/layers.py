"""Building blocks of the ACE DiT (PixArt-α style, with QK RMSNorm and 3D RoPE)."""

from __future__ import annotations

import math

import torch
from torch import nn

from acemodel.rope import apply_rope


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least, fp64 stays fp64
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Mlp(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """(1, C, h, w) latent+mask -> (h/p * w/p, D) tokens, row-major."""

    def __init__(self, patch: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head attention with QK RMSNorm. Self-attention rotates q/k with 3D RoPE;
    cross-attention (context given) does not. The layout decides who attends to whom."""

    def __init__(self, dim: int, num_heads: int, key_norm: str = "own") -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim)
        self.norm_k = RMSNorm(dim)
        self.key_norm = key_norm

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim)

    def forward(self, x, layout, context=None, cos=None, sin=None) -> torch.Tensor:
        src = x if context is None else context
        knorm = self.norm_q if self.key_norm == "query" else self.norm_k
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(knorm(self.k(src)))
        v = self._heads(self.v(src))
        if context is None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            out = layout.self_attention(q, k, v)
        else:
            out = layout.cross_attention(q, k, v)
        return self.o(out.flatten(-2))


class ACEBlock(nn.Module):
    """adaLN-single block: modulated self-attention, plain cross-attention (no norm, no gate),
    modulated MLP. The per-block table is added to the shared timestep modulation."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, key_norm: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, key_norm)
        self.cross_attn = Attention(dim, num_heads, key_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x, y, t_mod, cos, sin, layout) -> torch.Tensor:
        mod = self.scale_shift_table + t_mod.view(*t_mod.shape[:-1], 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(-2)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), layout, cos=cos, sin=sin)
        x = x + self.cross_attn(x, layout, context=y)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table + t_emb.unsqueeze(-2)).unbind(-2)
        return self.linear(modulate(self.norm_final(x), shift, scale))
