"""Training throughput of the packed ACE DiT vs a padded-batch implementation of the same model.

Both paths run the same weights on the same batches (variable frame counts, sizes and instruction
lengths, as LCU samples have): the packed path concatenates all frames of all samples with no
padding; the padded path pads every sample to the longest one and every instruction to 120 tokens
(the usual fixed-length T5 batch) with attention masks. A step = forward + backward + AdamW.
Reports real (non-padding) image tokens per second and the ratio. On a GPU it also reports model
FLOPs utilisation against the card's dense bf16 peak.

    .venv/bin/python bench/train.py            # CPU-sized (about a minute)
    .venv/bin/python bench/train.py --full     # ACE-0.6B-shaped blocks (GPU)
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from acemodel.config import DiTConfig
from acemodel.dit import ACEDiT, DiTInput

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def make_batches(n: int, batch: int, max_side: int, text_dim: int, device, dtype, seed=0) -> list[DiTInput]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        frames, texts = [], []
        for _ in range(batch):
            nf = rng.choice([1, 1, 2, 2, 2, 3, 4])  # t2i, single edit, multi-input / multi-turn
            fr, tx = [], []
            for _ in range(nf):
                h = rng.randrange(max_side // 4, max_side + 1, 2)
                w = rng.randrange(max_side // 4, max_side + 1, 2)
                fr.append(torch.randn(5, h, w, device=device, dtype=dtype))
                tx.append(torch.randn(rng.randint(6, 60), text_dim, device=device, dtype=dtype))
            frames.append(fr)
            texts.append(tx)
        out.append(DiTInput(frames, texts, torch.randint(0, 1000, (batch,), device=device).float()))
    return out


def real_tokens(inp: DiTInput, patch: int) -> int:
    return sum(f.shape[-2] * f.shape[-1] // (patch * patch) for s in inp.frames for f in s)


def run(model: ACEDiT, batches: list[DiTInput], padded: bool, amp: torch.dtype | None) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    dev = next(model.parameters()).device
    tokens = 0
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i, inp in enumerate(batches):
        if i == 1:  # the first step warms up allocators / kernels
            sync()
            t0, tokens = time.perf_counter(), 0
        ctx = torch.autocast(dev.type, dtype=amp) if amp else torch.autocast(dev.type, enabled=False)
        with ctx:
            outs = model.forward_padded(inp) if padded else model(inp)
        loss = sum(o.float().pow(2).mean() for o in outs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += real_tokens(inp, model.cfg.patch_size)
    sync()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="ACE-0.6B-shaped model (needs a GPU)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 on CPU: fastest on busy machines)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    threads = args.threads or (None if cuda else 1)  # CPU default 1: tiny tensors, shared 2-core machines
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if cuda else "cpu")
    if args.full:
        cfg = DiTConfig(hidden_size=1152, depth=28, num_heads=16, text_dim=4096, grad_checkpointing=True)
        batch, side = 8, 64  # latent side 64 = 512 px
    else:
        cfg = DiTConfig(hidden_size=192, depth=4, num_heads=4, mlp_ratio=4.0, text_dim=64)
        batch, side = 8, 24 if not cuda else 64
    torch.manual_seed(0)
    model = ACEDiT(cfg).to(dev)
    amp = torch.bfloat16 if cuda else None
    batches = make_batches(args.steps + 1, batch, side, cfg.text_dim, dev, torch.float32)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, model {nparams / 1e6:.1f}M params, "
          f"batch {batch}, frames up to {side * 8}px")
    rates = {}
    for name, padded in (("padded", True), ("packed", False), ("padded", True), ("packed", False)):
        r = run(model, batches, padded, amp)
        rates[name] = max(rates.get(name, 0.0), r)  # best of two, interleaved against drift
    real = sum(real_tokens(b, cfg.patch_size) for b in batches)
    padded_slots = sum(len(b.frames) * max(sum(f.shape[-2] * f.shape[-1] for f in s) for s in b.frames)
                       for b in batches) // cfg.patch_size**2
    print(f"padding: {padded_slots} token slots for {real} real tokens ({1 - real / padded_slots:.0%} padding); "
          f"instructions padded to 120 tokens")
    print(f"padded-batch : {rates['padded']:10.1f} tokens/s")
    print(f"packed       : {rates['packed']:10.1f} tokens/s  (backend {model.attention_backend} -> "
          f"{'flash/flex' if cuda else 'sdpa per segment'})")
    print(f"ratio packed/padded: {rates['packed'] / rates['padded']:.2f}x  ({real} real image tokens)")
    if cuda:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        flops_per_token = 6 * nparams  # dense matmuls, fwd + bwd (attention scores excluded: a lower bound)
        if peak:
            print(f"MFU packed ({name}): {flops_per_token * rates['packed'] / (peak * 1e12) * 100:.1f}% "
                  f"of {peak} TFLOPS bf16 dense")


if __name__ == "__main__":
    main()
