"""The encode_cache stage and training from the cache (`data.cache`): same samples, same order, same
CFG-dropout draws and the same loss as encoding on the fly, to float16 storage tolerance."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from ace_helpers import CONFIG, tiny_config
from acemodel.cache import CachedEncoders, CachedLCUStream, cell_tensor, tensor_cell
from acemodel.config import TrainConfig
from acemodel.data import LCUStream
from acemodel.train import Trainer, step_generator

from acedata.demo_lcu import build
from acedata.errors import UserError
from acedata.pipeline import run_stages
from acedata.shards import read_table
from acedata.stages.encode_cache import EncodeCacheConfig

BUDGET = 12



def _cfg(**kw) -> TrainConfig:
    data = {"batch_size": 2, "token_budget": BUDGET, "cfg_dropout": 0.5, **kw.pop("data", {})}
    return tiny_config(data, {"grad_accum": 2, "ema_decay": 0.9}, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """8 demo LCU rows in 4 row groups, and their cache built by the stage (local executor)."""
    root = tmp_path_factory.mktemp("cache")
    lcu = build(str(root / "lcu"), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
    tc = _cfg()
    stage = EncodeCacheConfig(name="encode_cache", text_encoder=tc.text_encoder, vae=tc.vae, token_budget=BUDGET,
                              max_side=tc.data.max_side, batch_size=3, inputs={"lcu": lcu})
    run = run_stages([stage], str(root / "run"), executor="local")
    return lcu, str(root / "run" / "encode_cache"), run


def test_stage_writes_every_row_with_shapes_and_lengths(built):
    lcu, cache, run = built
    counts = run["stages"][0]["counts"]
    assert counts["encoded"] == 8 and counts["quarantine"] == 0
    with open(os.path.join(cache, "cache.json")) as f:
        meta = json.load(f)
    assert len(meta["units"]) == len(LCUStream(lcu, _cfg().data).units) and sum(u["rows"] for u in meta["units"]) == 8
    rows = {r["sample_id"]: r for r in read_table(os.path.join(cache, "encoded")).to_pylist()}
    chain = rows["astronaut-chain"]
    assert chain["instructions"] == ["mirror {image} left to right", "now make {image1} black and white"]
    assert [f["turn"] for f in chain["frames"]] == [0, 1]
    assert chain["target"]["dtype"] == "float16" and chain["target"]["shape"][0] == 4
    assert chain["text_lengths"] == [cell_tensor(t).shape[0] for t in chain["texts"]]
    mask = cell_tensor(rows["astronaut-inpaint"]["frames"][0]["mask"])
    assert mask.dtype == torch.uint8 and 0 < mask.float().mean() < 1  # latent-size binary mask
    assert rows["astronaut-gray"]["frames"][0]["mask"] is None  # no mask: all ones at train time
    assert rows["chelsea-t2i"]["frames"] == []


def test_tensor_cells_round_trip():
    t = torch.randn(3, 4, 5)
    assert torch.equal(cell_tensor(tensor_cell(t, "float32")), t)
    assert torch.equal(cell_tensor(tensor_cell(t, "bfloat16")), t.to(torch.bfloat16))
    assert torch.equal(cell_tensor(tensor_cell(t, "float16")), t.half())


def test_cached_stream_replays_the_lcu_stream(built):
    lcu, cache, _ = built
    data = _cfg().data
    for rank in (0, 1):
        live = [s for s, _ in zip(LCUStream(lcu, data, seed=3, rank=rank, world_size=2), range(10))]
        cached = [s for s, _ in zip(CachedLCUStream(cache, data, seed=3, rank=rank, world_size=2), range(10))]
        assert [s.sample_id for s in live] == [s.sample_id for s in cached]
        for a, b in zip(live, cached):
            assert len(a.conditions) == len(b.frames) and len(b.texts) == len(a.conditions) + 1
            assert a.target.shape[-2:] == tuple(8 * n for n in b.target.shape[-2:])
            assert (a.instruction == "") == (b.texts[0].shape[0] == 1)  # CFG-dropped: only the EOS state


def test_training_from_the_cache_gives_the_same_loss(built, tmp_path):
    lcu, cache, _ = built
    live = Trainer(_cfg(), lcu, str(tmp_path / "live"))
    cached = Trainer(_cfg(data={"cache": cache}), None, str(tmp_path / "cached"))
    assert isinstance(cached.enc, CachedEncoders) and not hasattr(cached.enc, "vae")  # no encoder loaded
    torch.testing.assert_close(cached.model.indicator_embeddings, live.model.indicator_embeddings, rtol=0, atol=0)
    a = [s for s, _ in zip(live.loader, range(4))]
    b = [s for s, _ in zip(CachedLCUStream(cache, _cfg().data), range(4))]
    with torch.no_grad():
        la, lb = live.loss_on(a, step_generator("x")).item(), cached.loss_on(b, step_generator("x")).item()
    assert abs(la - lb) <= 1e-3 * la, (la, lb)
    want = [live.train_step() for _ in range(3)]
    got = [cached.train_step() for _ in range(3)]
    print("live", want, "cached", got)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-3, atol=0)  # measured: <= 1.1e-4 relative (fp16 storage)
    # the cached run checkpoints and resumes like any other
    cached.save()
    again = Trainer(_cfg(data={"cache": cache}), None, str(tmp_path / "cached"))
    again.load(os.path.join(tmp_path, "cached", "checkpoints", "step-00000003"))
    assert again.train_step() == cached.train_step()


def test_a_cache_built_for_other_settings_is_refused(built, tmp_path):
    _, cache, _ = built
    with pytest.raises(UserError, match="token_budget"):
        Trainer(_cfg(data={"cache": cache, "token_budget": 16}), None, str(tmp_path))
    with pytest.raises(UserError, match="no encode cache"):
        Trainer(_cfg(data={"cache": str(tmp_path)}), None, str(tmp_path))


def test_encode_cache_cli(built, tmp_path):
    from acedata.cli import main

    lcu, *_ = built
    out = str(tmp_path / "run")
    assert main(["encode-cache", CONFIG, "--data", lcu, "--out", out, "--executor", "local"]) == 0
    assert os.path.exists(os.path.join(out, "encode_cache", "cache.json"))
    assert main(["encode-cache", CONFIG, "--data", str(tmp_path / "missing"), "--out", out]) == 2


def test_pipeline_spec_stanza(built, tmp_path):
    """The stanza pipelines/demo.yaml uses, here reading a given LCU table (the demo takes assemble's)."""
    from acedata.pipeline import run_pipeline

    lcu, *_ = built
    spec = tmp_path / "p.yaml"
    spec.write_text(f"""name: cache
executor: local
stages:
  - stage: encode_cache
    text_encoder: {{name: t5-tiny, random_init: true}}
    vae: {{name: vae-tiny, random_init: true}}
    token_budget: 64
    max_side: 256
    inputs: {{lcu: {lcu}}}
""")
    run = run_pipeline(str(spec), str(tmp_path / "run"))
    assert run["stages"][0]["counts"]["encoded"] == 8
    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw["data"]["cache"] = str(tmp_path / "run" / "encode_cache")
    tr = Trainer(TrainConfig(**raw), None, str(tmp_path / "train"))  # tiny.yaml's settings: accepted
    assert tr.train_step() > 0
