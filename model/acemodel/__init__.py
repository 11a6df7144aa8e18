"""The ACE DiT trainer: model, LCU loader, diffusion, training loop, sampling."""
