"""Released (PixArt-style) checkpoints -> our model reproduce the official layout's outputs."""

from __future__ import annotations

import pytest
import torch
from ace_official_reference import official_forward, random_official_state_dict
from acemodel.config import DiTConfig
from acemodel.convert import convert_state_dict, load_released
from acemodel.dit import ACEDiT, DiTInput

D, HEADS, DEPTH, TEXT = 48, 2, 2, 32  # head dim 24 -> RoPE split 8/8/8


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(4, 8, 12, generator=g), torch.randn(4, 6, 6, generator=g)]
    conds = [[torch.randn(4, 8, 12, generator=g), torch.randn(4, 4, 10, generator=g)], []]
    cmasks = [[None, (torch.rand(1, 4, 10, generator=g) > 0.5).float()], []]
    ctx = [[torch.randn(n, TEXT, generator=g) for n in ns] for ns in ([7, 3, 5], [4])]
    t = torch.tensor([17.0, 803.0])
    return x, conds, cmasks, ctx, t


def _ours_input(x, conds, cmasks, ctx, t):
    frames = []
    for b in range(len(x)):
        fr = [torch.cat([x[b], torch.ones_like(x[b][:1])])]
        fr += [torch.cat([u, torch.ones_like(u[:1]) if m is None else m]) for u, m in zip(conds[b], cmasks[b])]
        frames.append(fr)
    return DiTInput(frames, ctx, t)


def _model(key_norm="query"):
    cfg = DiTConfig(hidden_size=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, text_dim=TEXT, key_norm=key_norm)
    return ACEDiT(cfg).double()


def test_converted_state_dict_reproduces_official_outputs():
    W = {k: v.double() for k, v in random_official_state_dict(D, DEPTH, TEXT).items()}
    x, conds, cmasks, ctx, t = (_inputs())
    x, conds = [u.double() for u in x], [[u.double() for u in c] for c in conds]
    cmasks = [[None if m is None else m.double() for m in c] for c in cmasks]
    ctx = [[u.double() for u in c] for c in ctx]
    ref = official_forward(W, x, t, conds, cmasks, [None, None], ctx, HEADS, DEPTH)

    model = _model()
    sd = convert_state_dict(W)
    assert sd["x_embedder.proj.weight"].shape[1] == 5 and torch.all(sd["x_embedder.proj.weight"][:, 4] == 0)
    assert sd["final_layer.linear.weight"].shape[0] == 2 * 2 * 4  # PRED_SIGMA halved
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for backend in ("sdpa", "naive"):
        model.attention_backend = backend
        with torch.no_grad():
            ours = model(_ours_input(x, conds, cmasks, ctx, t))
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)

    # the compatibility switch matters: normalising keys with their own (differently trained) norm differs
    own = _model("own")
    own.load_state_dict(sd)
    with torch.no_grad():
        other = own(_ours_input(x, conds, cmasks, ctx, t))
    assert (other[0] - ref[0]).abs().max() > 1e-3


def test_load_released_pth_with_wrapper_prefixes(tmp_path):
    W = random_official_state_dict(D, DEPTH, TEXT, seed=3)
    ckpt = {"state_dict": {**{"model." + k: v for k, v in W.items()},
                           "model_ema.x_embedder.proj.bias": torch.zeros(D),
                           "first_stage_model.decoder.conv_in.weight": torch.zeros(1)}}
    path = tmp_path / "ace_0.6b_512px.pth"
    torch.save(ckpt, path)
    model = _model().float()
    load_released(model, str(path))
    torch.testing.assert_close(model.indicator_embeddings, W["text_position_embeddings.pos"])
    torch.testing.assert_close(model.blocks[1].attn.k.weight, W["blocks.1.attn.qkv.weight"][D:2 * D])
    torch.testing.assert_close(model.blocks[0].cross_attn.v.bias, W["blocks.0.cross_attn.kv_linear.bias"][D:])

    from acedata.errors import UserError

    with pytest.raises(UserError, match="key_norm"):
        load_released(_model("own").float(), str(path))
    with pytest.raises(UserError, match="not found"):
        load_released(model, str(tmp_path / "missing.pth"))
