"""3D RoPE and Image Indicator Embeddings are placed as DESIGN.md §6 specifies."""

from __future__ import annotations

import torch
from acemodel.config import DiTConfig
from acemodel.dit import INDICATORS, ACEDiT, DiTInput, indicator_index
from acemodel.rope import apply_rope, axis_dims, rope_cos_sin, token_positions


def test_head_dim_split():
    assert axis_dims(72) == (24, 24, 24)  # ACE-0.6B: 1152 / 16
    assert axis_dims(64) == (24, 20, 20)
    assert axis_dims(24) == (8, 8, 8)


def test_every_frame_starts_at_spatial_origin():
    pos = token_positions([[(2, 3), (1, 2)], [(2, 2)]])
    assert pos.tolist() == [
        [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2],  # sample 0, frame 0 (target)
        [1, 0, 0], [1, 0, 1],  # sample 0, frame 1
        [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1],  # sample 1 restarts at frame 0
    ]


def test_each_axis_rotates_only_its_own_slice_of_the_head():
    d = 72
    x = torch.randn(1, 1, d)
    for axis, (lo, hi) in enumerate([(0, 24), (24, 48), (48, 72)]):
        pos = torch.zeros(1, 3, dtype=torch.long)
        pos[0, axis] = 5
        cos, sin = rope_cos_sin(pos, d)
        y = apply_rope(x, cos, sin)
        changed = (y - x).abs()[0, 0] > 1e-6
        assert changed[lo:hi].all() and not changed[:lo].any() and not changed[hi:].any()
        # the axis' own ladder: first pair turns by 5 * theta^0 = 5 rad
        re, im = x[0, 0, lo], x[0, 0, lo + 1]
        c, s = torch.cos(torch.tensor(5.0)), torch.sin(torch.tensor(5.0))
        torch.testing.assert_close(y[0, 0, lo], re * c - im * s, rtol=1e-5, atol=1e-5)
        # last pair of the slice uses theta^(-(n-2)/n) with n the slice width
        n = hi - lo
        ang = 5.0 * 10000 ** (-(n - 2) / n)
        torch.testing.assert_close(y[0, 0, hi - 1], x[0, 0, hi - 2] * torch.sin(torch.tensor(ang)) +
                                   x[0, 0, hi - 1] * torch.cos(torch.tensor(ang)), rtol=1e-5, atol=1e-5)


def test_attention_scores_depend_only_on_relative_position():
    d = 24
    q, k = torch.randn(1, 1, d), torch.randn(1, 1, d)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), d)
        ck, sk = rope_cos_sin(torch.tensor([pk]), d)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score([1, 2, 3], [0, 5, 1]), score([3, 4, 9], [2, 7, 7]), rtol=1e-4, atol=1e-5)
    assert (score([1, 2, 3], [0, 5, 1]) - score([1, 2, 3], [1, 5, 1])).abs() > 1e-4


def test_indicator_index_rule():
    # N = 3 condition frames: target uses index 3 ("{image3}"), condition frame k uses k - 1
    assert [indicator_index(f, 4) for f in range(4)] == [3, 0, 1, 2]
    assert indicator_index(0, 1) == 0  # text-to-image: no condition frames, N = 0
    assert INDICATORS[:3] == ["{image}", "{image1}", "{image2}"] and len(INDICATORS) == 10


def test_indicator_embeddings_added_to_frame_and_text_tokens():
    torch.manual_seed(0)
    m = ACEDiT(DiTConfig(hidden_size=48, depth=1, num_heads=2, text_dim=16)).double()
    m.indicator_embeddings.copy_(torch.randn(10, 16) * 3)
    g = torch.Generator().manual_seed(1)
    frames = [torch.randn(5, 4, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    texts = [torch.randn(n, 16, generator=g, dtype=torch.float64) for n in (3, 2, 5, 1)]
    img, txt, shapes = m._embed(DiTInput([frames], [texts], torch.tensor([1.0])))
    proj = m.y_embedder(m.indicator_embeddings)
    for f, expect in enumerate([3, 0, 1, 2]):
        torch.testing.assert_close(img[0][f], m.x_embedder(frames[f][None])[0] + proj[expect])
        torch.testing.assert_close(txt[0][f], m.y_embedder(texts[f]) + proj[expect])
    assert shapes == [[(2, 3)] * 4]
    # and the output depends on them: swapping two indicator rows changes the prediction
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        inp = DiTInput([frames], [texts], torch.tensor([1.0]))
        a = m(inp)[0]
        m.indicator_embeddings[[0, 1]] = m.indicator_embeddings[[1, 0]].clone()
        assert (m(inp)[0] - a).abs().max() > 1e-6
