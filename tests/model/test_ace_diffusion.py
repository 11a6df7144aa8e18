"""Objectives and samplers: the released DDPM numbers (without its add_noise defect), DDIM trailing
spacing, rectified flow, and CFG with guidance rescale."""

from __future__ import annotations

import torch
from acemodel.diffusion import DDPM, RectifiedFlow, guided


def test_ddpm_schedule_and_forward_process():
    d = DDPM()
    betas = torch.cat([1 - d.alphas_cumprod[:1], 1 - d.alphas_cumprod[1:] / d.alphas_cumprod[:-1]])
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))  # linear, 1000 steps
    x0, eps = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    a = d.alphas_cumprod[500].item()
    torch.testing.assert_close(d.add_noise(x0, eps, 500), a**0.5 * x0 + (1 - a) ** 0.5 * eps)
    # the release's defect used sqrt(1 - beta_t) as the signal scale; at t = 500 that is ~0.995, not ~0.28
    assert a**0.5 < 0.3
    t = d.sample_t(10000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999 and abs(t.mean().item() - 499.5) < 15


def test_ddim_trailing_spacing_and_exact_inversion():
    d = DDPM()
    ts = d.timesteps(20)
    assert ts[0] == 999 and ts[1] == 949 and ts[-1] == 49 and len(ts) == 20
    x0, eps = torch.randn(4, 6, 6), torch.randn(4, 6, 6)
    x = d.add_noise(x0, eps, ts[0])
    for i, t in enumerate(ts):  # an oracle epsilon walks the chain exactly back to x0
        x = d.step(x, eps, t, ts[i + 1] if i + 1 < len(ts) else -1.0)
    torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)


def test_rectified_flow_oracle_velocity_reaches_data():
    f = RectifiedFlow()
    x0, eps = torch.randn(4, 6, 6), torch.randn(4, 6, 6)
    ts = f.timesteps(8)
    assert ts[0] == 1.0 and f.model_time(0.5) == 500.0
    x = eps.clone()
    for i, t in enumerate(ts):
        x = f.step(x, f.target(x0, eps, t), t, ts[i + 1] if i + 1 < len(ts) else -1.0)
    torch.testing.assert_close(x, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.add_noise(x0, eps, 0.25), 0.75 * x0 + 0.25 * eps)


def test_guidance_rescale():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    plain = uncond + 4.5 * (cond - uncond)
    torch.testing.assert_close(guided(cond, uncond, 4.5, 0.0), plain)
    full = guided(cond, uncond, 4.5, 1.0)
    torch.testing.assert_close(full.std(), cond.std())
    torch.testing.assert_close(guided(cond, uncond, 4.5, 0.5), 0.5 * full + 0.5 * plain)
