"""Test-only reference of the *official* ACE DiT forward, written from the facts in DESIGN.md §6.

scepter (the official package) cannot be installed next to our pins (it pulls modelscope, ms-swift,
gradio, bitsandbytes and opencv-python) and its attention needs flash-attn, so this reproduces the
official layout's computation directly on its PixArt-style state dict: fused `attn.qkv`,
`cross_attn.q_linear` / `kv_linear`, `attn.proj`, `y_embedder.y_proj`, a 4-channel `x_embedder`
widened with a zero mask channel at load time, PRED_SIGMA (2C outputs, first half used), keys
normalised with the *query's* RMSNorm, RoPE as complex rotations on a frame-padded (F, H, W) grid
in float64, and per-sample loops with plain softmax attention instead of flash-attn varlen.
It deliberately shares no code with `acemodel`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _lin(W, name, x):
    return F.linear(x, W[name + ".weight"], W.get(name + ".bias"))


def _mlp(W, name, x):
    return _lin(W, name + ".fc2", F.gelu(_lin(W, name + ".fc1", x), approximate="tanh"))


def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def D_TYPE(W):
    return W["t_block.1.weight"].dtype


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _freqs(n, dim, theta=10000.0):
    ang = torch.outer(torch.arange(n, dtype=torch.float64),
                      1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return torch.polar(torch.ones_like(ang), ang)


def _rope(x, shapes, d):
    """x: (L, H, d) tokens of one sample, frames `shapes` [(h, w)], on a padded (F, Hmax, Wmax) grid."""
    s = d // 6
    fq = [_freqs(64, d - 4 * s), _freqs(64, 2 * s), _freqs(64, 2 * s)]
    Hm, Wm, Fn = max(h for h, _ in shapes), max(w for _, w in shapes), len(shapes)
    grid = torch.cat([
        fq[0][:Fn].view(Fn, 1, 1, -1).expand(Fn, Hm, Wm, -1),
        fq[1][:Hm].view(1, Hm, 1, -1).expand(Fn, Hm, Wm, -1),
        fq[2][:Wm].view(1, 1, Wm, -1).expand(Fn, Hm, Wm, -1)], dim=-1)
    out, start = [], 0
    for f, (h, w) in enumerate(shapes):
        tok = x[start:start + h * w].to(torch.float64).reshape(h * w, x.shape[1], -1, 2)
        rot = torch.view_as_complex(tok.contiguous()) * grid[f, :h, :w].reshape(h * w, 1, -1)
        out.append(torch.view_as_real(rot).flatten(2).to(x.dtype))
        start += h * w
    return torch.cat(out)


def _attend(q, k, v):  # (Lq, H, d), (Lk, H, d)
    a = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("hqk,khd->qhd", a.softmax(-1), v)


def official_forward(W: dict, x: list[torch.Tensor], t: torch.Tensor, cond_frames: list[list[torch.Tensor]],
                     cond_masks: list[list[torch.Tensor | None]], target_masks: list[torch.Tensor | None],
                     contexts: list[list[torch.Tensor]], heads: int, depth: int, patch: int = 2) -> list[torch.Tensor]:
    """contexts[b][0] = current instruction (target frame); contexts[b][k] = text of condition frame k."""
    D = W["t_block.1.weight"].shape[1]
    d = D // heads
    w4 = W["x_embedder.proj.weight"]
    w5 = torch.zeros(w4.shape[0], w4.shape[1] + 1, *w4.shape[2:], dtype=w4.dtype)
    w5[:, : w4.shape[1]] = w4  # the official loader zero-fills the mask channel
    pe = _mlp(W, "y_embedder.y_proj", W["text_position_embeddings.pos"])
    outs = []
    for b in range(len(x)):
        frames = [torch.cat([x[b], torch.ones_like(x[b][:1]) if target_masks[b] is None else target_masks[b]])]
        for u, m in zip(cond_frames[b], cond_masks[b]):
            frames.append(torch.cat([u, torch.ones_like(u[:1]) if m is None else m]))
        n = len(frames)
        toks, txts, shapes = [], [], []
        for f, u in enumerate(frames):
            idx = n - 1 if f == 0 else f - 1
            e = F.conv2d(u[None], w5, W["x_embedder.proj.bias"], stride=patch)[0]
            shapes.append(tuple(e.shape[1:]))
            toks.append(e.flatten(1).T + pe[idx])
            txts.append(_mlp(W, "y_embedder.y_proj", contexts[b][f]) + pe[idx])
        h = torch.cat(toks)
        half = 128
        fr = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        arg = t[b].float() * fr
        temb = _lin(W, "t_embedder.mlp.2", F.silu(_lin(W, "t_embedder.mlp.0", torch.cat([arg.cos(), arg.sin()]).to(D_TYPE(W)))))
        t0 = _lin(W, "t_block.1", F.silu(temb)).view(6, D)
        for i in range(depth):
            p = f"blocks.{i}."
            sh1, sc1, g1, sh2, sc2, g2 = W[p + "scale_shift_table"] + t0
            y = _ln(h) * (1 + sc1) + sh1
            q, k, v = _lin(W, p + "attn.qkv", y).chunk(3, dim=-1)
            nq = W[p + "attn.norm_q.weight"]
            q, k = _rms(q, nq).view(-1, heads, d), _rms(k, nq).view(-1, heads, d)  # key uses the query's norm
            q, k = _rope(q, shapes, d), _rope(k, shapes, d)
            h = h + g1 * _lin(W, p + "attn.proj", _attend(q, k, v.reshape(-1, heads, d)).reshape(-1, D))
            cross, start = [], 0
            cq = W[p + "cross_attn.norm_q.weight"]
            for f, (hh, ww) in enumerate(shapes):
                seg = h[start:start + hh * ww]
                q = _rms(_lin(W, p + "cross_attn.q_linear", seg), cq).view(-1, heads, d)
                k, v = _lin(W, p + "cross_attn.kv_linear", txts[f]).chunk(2, dim=-1)
                k = _rms(k, cq).view(-1, heads, d)
                cross.append(_attend(q, k, v.reshape(-1, heads, d)).reshape(-1, D))
                start += hh * ww
            h = h + _lin(W, p + "cross_attn.proj", torch.cat(cross))
            y = _ln(h) * (1 + sc2) + sh2
            h = h + g2 * _mlp(W, p + "mlp", y)
        sh, sc = W["final_layer.scale_shift_table"] + temb
        o = _lin(W, "final_layer.linear", _ln(h) * (1 + sc) + sh)
        hh, ww = shapes[0]
        o = o[: hh * ww].view(hh, ww, patch, patch, -1)
        o = o.permute(4, 0, 2, 1, 3).reshape(-1, hh * patch, ww * patch)  # '(h p w q) c' -> c, H, W
        outs.append(o[: o.shape[0] // 2])  # PRED_SIGMA: first half
    return outs


def random_official_state_dict(D: int, depth: int, text_dim: int, patch: int = 2, C: int = 4,
                               mlp_ratio: float = 4.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the released checkpoint's key names and shapes (PRED_SIGMA on)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    W = {
        "x_embedder.proj.weight": r(D, C, patch, patch), "x_embedder.proj.bias": r(D),
        "t_embedder.mlp.0.weight": r(D, 256, s=0.05), "t_embedder.mlp.0.bias": r(D),
        "t_embedder.mlp.2.weight": r(D, D, s=0.1), "t_embedder.mlp.2.bias": r(D),
        "y_embedder.y_proj.fc1.weight": r(D, text_dim), "y_embedder.y_proj.fc1.bias": r(D),
        "y_embedder.y_proj.fc2.weight": r(D, D, s=0.1), "y_embedder.y_proj.fc2.bias": r(D),
        "t_block.1.weight": r(6 * D, D, s=0.1), "t_block.1.bias": r(6 * D),
        "final_layer.linear.weight": r(patch * patch * 2 * C, D), "final_layer.linear.bias": r(patch * patch * 2 * C),
        "final_layer.scale_shift_table": r(2, D),
        "text_position_embeddings.pos": r(10, text_dim, s=1.0),
    }
    H = int(D * mlp_ratio)
    for i in range(depth):
        p = f"blocks.{i}."
        W.update({
            p + "scale_shift_table": r(6, D),
            p + "attn.qkv.weight": r(3 * D, D), p + "attn.qkv.bias": r(3 * D),
            p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
            p + "attn.norm_q.weight": 1 + r(D), p + "attn.norm_k.weight": 1 + r(D),
            p + "cross_attn.q_linear.weight": r(D, D), p + "cross_attn.q_linear.bias": r(D),
            p + "cross_attn.kv_linear.weight": r(2 * D, D), p + "cross_attn.kv_linear.bias": r(2 * D),
            p + "cross_attn.proj.weight": r(D, D), p + "cross_attn.proj.bias": r(D),
            p + "cross_attn.norm_q.weight": 1 + r(D), p + "cross_attn.norm_k.weight": 1 + r(D),
            p + "mlp.fc1.weight": r(H, D), p + "mlp.fc1.bias": r(H),
            p + "mlp.fc2.weight": r(D, H), p + "mlp.fc2.bias": r(D),
        })
    return W
