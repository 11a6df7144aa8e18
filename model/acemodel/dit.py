"""The ACE DiT over packed Long-context Condition Units.

One sample = frame 0 (the noised target) followed by its condition frames (history CUs'
inputs first, then the current CU's inputs). Every frame is VAE latent ⊕ mask (5 channels),
patch-embedded; all frames of all samples are concatenated into one token sequence.
Self-attention spans a whole sample; each frame cross-attends only to its own instruction.
Image Indicator Embeddings (T5 embeddings of "{image}", "{image1}" ... through the caption
projection) are added to each frame's tokens and its instruction's tokens: condition frame k
(1-based) uses index k-1, the target frame uses N = number of condition frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from acemodel.attention import PackedLayout, PaddedLayout, cu_seqlens, resolve_backend
from acemodel.config import DiTConfig
from acemodel.layers import ACEBlock, FinalLayer, Mlp, PatchEmbed, TimestepEmbedder
from acemodel.rope import rope_cos_sin, token_positions

INDICATORS = ["{image}"] + [f"{{image{i}}}" for i in range(1, 10)]


@dataclass
class DiTInput:
    """A batch. frames[b][f]: (C+1, h, w) latent ⊕ mask, f = 0 the noised target.
    texts[b][f]: (L, text_dim) encoder states of frame f's instruction, padding dropped.
    t: (B,) diffusion time (DDPM step index, or flow time * 1000)."""

    frames: list[list[torch.Tensor]]
    texts: list[list[torch.Tensor]]
    t: torch.Tensor


def _rope_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def indicator_index(frame: int, num_frames: int) -> int:
    """Frame 0 (target) -> N (number of condition frames); condition frame k -> k - 1."""
    return num_frames - 1 if frame == 0 else frame - 1


class ACEDiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, C, p = cfg.hidden_size, cfg.latent_channels, cfg.patch_size
        self.x_embedder = PatchEmbed(p, C + 1, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = Mlp(cfg.text_dim, D, D)  # caption projection
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.blocks = nn.ModuleList(
            ACEBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.key_norm) for _ in range(cfg.depth)
        )
        self.final_layer = FinalLayer(D, p, C)
        # text-encoder embeddings of INDICATORS, frozen; filled from the text encoder (or a checkpoint)
        self.register_buffer("indicator_embeddings", torch.zeros(cfg.num_indicators, cfg.text_dim))
        self.attention_backend = "auto"
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1], self.y_embedder.fc1,
                    self.y_embedder.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        for b in self.blocks:  # cross-attention starts as identity (no gate on it)
            nn.init.zeros_(b.cross_attn.o.weight)
            nn.init.zeros_(b.cross_attn.o.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # --- embedding -------------------------------------------------------------------

    def _embed(self, inp: DiTInput):
        """Per-frame image tokens and text tokens with indicators added, plus shapes."""
        ind = self.y_embedder(self.indicator_embeddings.to(self.y_embedder.fc1.weight.dtype))
        img, txt, shapes = [], [], []
        for frames, texts in zip(inp.frames, inp.texts):
            if len(texts) != len(frames):
                raise ValueError(f"{len(frames)} frames but {len(texts)} instructions")
            s_img, s_txt, s_shapes = [], [], []
            for f, (fr, tx) in enumerate(zip(frames, texts)):
                e = ind[indicator_index(f, len(frames))]
                s_img.append(self.x_embedder(fr.unsqueeze(0).to(e.dtype))[0] + e)
                s_txt.append(self.y_embedder(tx.to(e.dtype)) + e)
                p = self.cfg.patch_size
                s_shapes.append((fr.shape[-2] // p, fr.shape[-1] // p))
            img.append(s_img)
            txt.append(s_txt)
            shapes.append(s_shapes)
        return img, txt, shapes

    def _unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p, C = self.cfg.patch_size, self.cfg.latent_channels
        return tokens.view(h, w, p, p, C).permute(4, 0, 2, 1, 3).reshape(C, h * p, w * p)

    def _run_blocks(self, x, y, t_mod, cos, sin, layout):
        for block in self.blocks:
            if self.cfg.grad_checkpointing and self.training:
                x = checkpoint(block, x, y, t_mod, cos, sin, layout, use_reentrant=False)
            else:
                x = block(x, y, t_mod, cos, sin, layout)
        return x

    # --- forward ----------------------------------------------------------------------

    def forward(self, inp: DiTInput, all_frames: bool = False) -> list:
        """Prediction for each sample's frame 0, (C, h, w); with all_frames, a list per sample."""
        img, txt, shapes = self._embed(inp)
        dev = img[0][0].device
        frame_lens = [h * w for s in shapes for (h, w) in s]
        sample_lens = [sum(h * w for h, w in s) for s in shapes]
        text_lens = [t.shape[0] for s in txt for t in s]
        x = torch.cat([u for s in img for u in s])
        y = torch.cat([u for s in txt for u in s])
        t_emb = self.t_embedder(inp.t.to(dev))
        reps = torch.tensor(sample_lens, device=dev)
        # one modulation per sample, broadcast to its tokens (the release ran t_block per token: same values)
        t_mod = torch.repeat_interleave(self.t_block(t_emb), reps, dim=0)
        t_emb = torch.repeat_interleave(t_emb, reps, dim=0)
        cos, sin = rope_cos_sin(token_positions(shapes, dev), self.cfg.head_dim, self.cfg.rope_theta, _rope_dtype(x))
        layout = PackedLayout(
            cu_seqlens(sample_lens, dev), max(sample_lens), cu_seqlens(frame_lens, dev), max(frame_lens),
            cu_seqlens(text_lens, dev), max(text_lens), resolve_backend(self.attention_backend, dev),
        )
        x = self._run_blocks(x, y, t_mod, cos, sin, layout)
        x = self.final_layer(x, t_emb)
        per_frame = iter(x.split(frame_lens))
        outs = []
        for s in shapes:
            frames = [self._unpatchify(next(per_frame), h, w) for h, w in s]
            outs.append(frames if all_frames else frames[0])
        return outs

    def forward_padded(self, inp: DiTInput, text_len: int = 120) -> list[torch.Tensor]:
        """The same model over a padded batch (tokens padded to the longest sample, every
        instruction padded to `text_len`): the baseline the packed path is benchmarked against."""
        img, txt, shapes = self._embed(inp)
        dev = img[0][0].device
        B, D = len(img), self.cfg.hidden_size
        sample_lens = [sum(h * w for h, w in s) for s in shapes]
        L, F = max(sample_lens), max(len(s) for s in shapes)
        x = torch.zeros(B, L, D, device=dev, dtype=img[0][0].dtype)
        y = torch.zeros(B, F * text_len, D, device=dev, dtype=x.dtype)
        tok_frame = torch.zeros(B, L, dtype=torch.long, device=dev)  # pad tokens read frame 0's text
        txt_frame = torch.full((B, F * text_len), -1, dtype=torch.long, device=dev)
        pos = torch.zeros(B, L, 3, dtype=torch.long, device=dev)
        for b, (s_img, s_txt) in enumerate(zip(img, txt)):
            xb = torch.cat(s_img)
            x[b, : xb.shape[0]] = xb
            pos[b, : xb.shape[0]] = token_positions([shapes[b]], dev)
            off = 0
            for f, (u, tx) in enumerate(zip(s_img, s_txt)):
                tok_frame[b, off: off + u.shape[0]] = f
                off += u.shape[0]
                n = min(tx.shape[0], text_len)
                y[b, f * text_len: f * text_len + n] = tx[:n]
                txt_frame[b, f * text_len: f * text_len + n] = f
        valid = torch.arange(L, device=dev)[None] < torch.tensor(sample_lens, device=dev)[:, None]
        layout = PaddedLayout(valid[:, None, None, :], (tok_frame[:, :, None] == txt_frame[:, None, :])[:, None])
        t_emb = self.t_embedder(inp.t.to(dev))
        t_mod = self.t_block(t_emb)[:, None].expand(B, L, 6 * D)
        t_emb = t_emb[:, None].expand(B, L, D)
        cos, sin = rope_cos_sin(pos.view(-1, 3), self.cfg.head_dim, self.cfg.rope_theta, _rope_dtype(x))
        cos, sin = cos.view(B, L, -1), sin.view(B, L, -1)
        x = self._run_blocks(x, y, t_mod, cos, sin, layout)
        x = self.final_layer(x, t_emb)
        h0 = [s[0] for s in shapes]
        return [self._unpatchify(x[b, : h * w], h, w) for b, (h, w) in enumerate(h0)]
