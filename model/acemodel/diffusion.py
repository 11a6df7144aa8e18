"""Objectives and samplers.

`DDPM`: epsilon prediction as released — linear betas 1e-4..0.02 over 1000 steps, uniform
integer timesteps, x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε (ᾱ, the cumulative product: the
release's add_noise used sqrt(1-β) here, a defect we do not copy). Sampling: DDIM with
trailing timestep spacing.
`RectifiedFlow`: x_σ = (1-σ) x_0 + σ ε, the model predicts v = ε - x_0; Euler sampling.
Both: classifier-free guidance with guidance rescale (Lin et al. 2023) on the model output.
The loss covers the target frame only — the caller passes only frame-0 predictions.
"""

from __future__ import annotations

import torch


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    out = uncond + scale * (cond - uncond)
    if rescale > 0:
        ratio = cond.std() / out.std().clamp_min(1e-12)
        out = rescale * (out * ratio) + (1 - rescale) * out
    return out


class DDPM:
    kind = "ddpm_eps"

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.num_steps = num_steps
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_steps, (n,), generator=gen).float()

    def _abar(self, t: float) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[int(t)])

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
        a = self._abar(t)
        return a**0.5 * x0 + (1 - a) ** 0.5 * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
        return eps

    def timesteps(self, steps: int) -> list[float]:
        """Trailing spacing: 999, 999-T/n, ..., ending at T/n - 1 (the last step reaches ᾱ = 1)."""
        ratio = self.num_steps / steps
        return [float(round(self.num_steps - i * ratio) - 1) for i in range(steps)]

    def step(self, x: torch.Tensor, pred: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        a, a_next = self._abar(t), self._abar(t_next)
        x0 = (x - (1 - a) ** 0.5 * pred) / a**0.5
        return a_next**0.5 * x0 + (1 - a_next) ** 0.5 * pred

    def model_time(self, t: float) -> float:
        return t


class RectifiedFlow:
    kind = "rectified_flow"

    def __init__(self, shift: float = 1.0) -> None:
        self.shift = shift

    def _shifted(self, s: torch.Tensor) -> torch.Tensor:
        return self.shift * s / (1 + (self.shift - 1) * s)

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return self._shifted(torch.rand(n, generator=gen, dtype=torch.float64)).float()

    def add_noise(self, x0, eps, t: float):
        return (1 - t) * x0 + t * eps

    def target(self, x0, eps, t: float):
        return eps - x0

    def timesteps(self, steps: int) -> list[float]:
        return [float(s) for s in self._shifted(torch.linspace(1, 0, steps + 1, dtype=torch.float64))[:-1]]

    def step(self, x, pred, t: float, t_next: float):
        return x + (max(t_next, 0.0) - t) * pred

    def model_time(self, t: float) -> float:
        return t * 1000.0


def make_objective(kind: str):
    return DDPM() if kind == "ddpm_eps" else RectifiedFlow()
