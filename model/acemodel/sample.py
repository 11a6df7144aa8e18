"""Sampling: DDIM (trailing spacing) or Euler for rectified flow, with classifier-free guidance
and guidance rescale. The unconditional branch keeps every image and the history and blanks only
the current instruction (for the target frame and the current CU's input frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from acemodel import files
from acemodel.checkpoint import MARKER, latest_checkpoint, read_tensors
from acemodel.config import TrainConfig
from acemodel.data import Frame, Sample, fit_size, mask_tensor, to_tensor
from acemodel.diffusion import guided, make_objective
from acemodel.dit import ACEDiT, DiTInput
from acemodel.encoders import Encoders
from acemodel.train import pick_device


@dataclass
class Generator:
    model: ACEDiT
    enc: Encoders
    cfg: TrainConfig
    checkpoint: str

    @classmethod
    def load(cls, path: str, device: str = "auto", use_ema: bool = True) -> Generator:
        from acemodel.errors import UserError

        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise UserError(f"no checkpoint at {path} (expected a checkpoint dir or a run dir with checkpoints/)")
        cfg = TrainConfig(**files.read_json(files.join(ckpt, MARKER))["config"])
        dev = pick_device(device)
        if cfg.cpu_threads and dev.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        model = ACEDiT(cfg.dit())
        weights = files.join(ckpt, "ema.safetensors" if use_ema else "model.safetensors")
        if not files.exists(weights):
            weights = files.join(ckpt, "model.safetensors")
        model.load_state_dict(read_tensors(weights))
        model.to(dev).eval()
        model.attention_backend = cfg.attention
        return cls(model, Encoders(cfg, dev), cfg, ckpt)

    def _frames(self, images: list[Image.Image], masks: list[Image.Image | None], instruction: str) -> list[Frame]:
        out = []
        for im, m in zip(images, masks):
            s = fit_size(*im.size, self.cfg.data.token_budget, self.cfg.data.max_side)
            out.append(Frame(to_tensor(im, s), mask_tensor(m, s) if m is not None else None, instruction))
        return out

    @torch.no_grad()
    def __call__(self, instruction: str, images: list[Image.Image] = (), masks: list | None = None,
                 history: list[tuple[str, list[Image.Image]]] = (), size: tuple[int, int] | None = None,
                 steps: int = 20, guidance: float = 4.5, rescale: float = 0.5, seed: int = 0) -> Image.Image:
        images = list(images)
        masks = list(masks) if masks else [None] * len(images)
        if size is None:
            size = images[0].size if images else (512, 512)
        w, h = fit_size(*size, self.cfg.data.token_budget, self.cfg.data.max_side)
        hist = [f for instr, ims in history for f in self._frames(ims, [None] * len(ims), instr)]
        cond = Sample(torch.zeros(3, h, w), instruction, hist + self._frames(images, masks, instruction))
        uncond = Sample(cond.target, "", hist + self._frames(images, masks, ""))
        cond_frames = self.enc.condition_frames(cond)
        texts = [self.enc.text.encode(s.frame_instructions()) for s in (cond, uncond)]
        obj = make_objective(self.cfg.objective)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.cfg.dit().latent_channels, h // 8, w // 8, generator=gen).to(self.enc.device)
        ts = obj.timesteps(steps)
        use_cfg = guidance > 1
        for i, t in enumerate(ts):
            t_next = ts[i + 1] if i + 1 < len(ts) else -1.0
            target = torch.cat([x, torch.ones_like(x[:1])])
            n = 2 if use_cfg else 1
            inp = DiTInput([[target] + cond_frames] * n, texts[:n], torch.full((n,), obj.model_time(t)))
            preds = self.model(inp)
            pred = guided(preds[0], preds[1], guidance, rescale) if use_cfg else preds[0]
            x = obj.step(x, pred, t, t_next)
        img = self.enc.vae.decode(x)
        arr = ((img.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        out = Image.fromarray(arr)
        return out if out.size == tuple(size) else out.resize(tuple(size), Image.BICUBIC)  # back to the asked size
