"""3D rotary position embedding over (frame, patch row, patch column).

The head dimension d is split as frame = d - 4*(d//6), row = 2*(d//6), column = 2*(d//6)
(24/24/24 for d = 72). Each axis has its own frequency ladder theta^(-2i/d_axis). Rotation acts
on adjacent pairs (x[2i], x[2i+1]) as one complex number. Every frame starts from (0, 0).
"""

from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    s = head_dim // 6
    return head_dim - 4 * s, 2 * s, 2 * s


def _ladder(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def token_positions(frame_shapes: list[list[tuple[int, int]]], device=None) -> torch.Tensor:
    """(T, 3) int positions (frame, row, col) of every patch token, packed sample by sample."""
    out = []
    for shapes in frame_shapes:
        for f, (h, w) in enumerate(shapes):
            rows = torch.arange(h).repeat_interleave(w)
            cols = torch.arange(w).repeat(h)
            out.append(torch.stack([torch.full_like(rows, f), rows, cols], dim=1))
    return torch.cat(out).to(device)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(T, head_dim/2) rotation angles in float64 (cast once, where they are applied)."""
    pos = positions.to(torch.float64)
    parts = [pos[:, a, None] * _ladder(d, theta).to(pos.device)[None] for a, d in enumerate(axis_dims(head_dim))]
    return torch.cat(parts, dim=1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype=torch.float32):
    ang = rope_angles(positions, head_dim, theta)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (..., T, H, D); cos/sin: (..., T, D/2). Rotates pairs (x[2i], x[2i+1])."""
    dtype = x.dtype
    work = torch.promote_types(dtype, torch.float32)  # rotate in at least fp32 (bf16 autocast)
    x = x.to(work)
    re, im = x[..., 0::2], x[..., 1::2]
    c, s = cos.to(work).unsqueeze(-2), sin.to(work).unsqueeze(-2)
    out = torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(-2)
    return out.to(dtype)
