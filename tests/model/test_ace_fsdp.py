"""FSDP2 training on CPU: two processes over gloo (torch.multiprocessing), and through Ray Train.

One spawn runs every scenario so the two interpreters start once: DDP as the reference, FSDP for
the same steps, FSDP checkpoint -> resume, and bf16 mixed precision with gradient checkpointing.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ace_helpers import tiny_config
from acemodel.config import TrainConfig
from acemodel.dit import ACEDiT
from safetensors.torch import load_file

from acedata.demo_lcu import build

WORLD = 2


def _cfg(**kw) -> TrainConfig:
    overrides = kw.pop("model_overrides", {})
    return tiny_config({"batch_size": 2, "token_budget": 12, "cfg_dropout": 0.3},
                       {"lr": 2e-3, "grad_accum": 2, "ema_decay": 0.9},
                       **{"steps": 3, "checkpoint_every": 2, "strategy": "fsdp", **kw, "model_overrides": overrides})


def _ranks(rank: int, store: str, lcu: str, out: str) -> None:
    """Runs in each of the WORLD processes; writes what it saw to out/rank{r}.pt."""
    from acemodel import parallel
    from acemodel.train import Trainer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    res: dict = {}
    cfg = _cfg()

    ddp = Trainer(cfg, lcu, os.path.join(out, "ddp"), rank, WORLD, strategy="ddp")
    res["ddp"] = [ddp.train_step() for _ in range(3)]
    res["ddp_params"] = parallel.full_model_state(ddp.model)

    fsdp = Trainer(cfg, lcu, os.path.join(out, "fsdp"), rank, WORLD, strategy="fsdp")
    res["sharded"] = parallel.is_sharded(fsdp.model)
    res["local_numel"] = sum(p.to_local().numel() for p in fsdp.model.parameters())
    res["fsdp"] = [fsdp.train_step() for _ in range(3)]
    res["fsdp_params"] = parallel.full_model_state(fsdp.model)
    res["fsdp_ema"] = parallel.full_tensors(fsdp.ema, rank == 0)

    first = Trainer(cfg, lcu, os.path.join(out, "resume"), rank, WORLD, strategy="fsdp")
    first.fit(steps=2, progress=False)  # checkpoint at step 2
    resumed = Trainer(cfg, lcu, os.path.join(out, "resume"), rank, WORLD, strategy="fsdp")
    resumed.load(os.path.join(out, "resume", "checkpoints", "step-00000002"))
    res["resumed"] = resumed.train_step()
    res["resumed_params"] = parallel.full_model_state(resumed.model)
    res["resumed_ema"] = parallel.full_tensors(resumed.ema, rank == 0)
    as_ddp = Trainer(cfg, lcu, os.path.join(out, "as-ddp"), rank, WORLD, strategy="ddp")
    as_ddp.load(os.path.join(out, "resume", "checkpoints", "step-00000002"))  # same files, other strategy
    res["resumed_as_ddp"] = as_ddp.train_step()

    bf16 = Trainer(_cfg(precision="bf16", model_overrides={"grad_checkpointing": True}), lcu,
                   os.path.join(out, "bf16"), rank, WORLD, strategy="fsdp")
    seen = []
    bf16.model.blocks[0].register_forward_pre_hook(lambda m, i: seen.append(next(m.parameters()).dtype))
    res["bf16"] = [bf16.train_step() for _ in range(3)]
    res["bf16_compute"] = seen[0]  # the all-gathered copy the block computes with
    res["bf16_master"] = next(bf16.model.blocks[0].parameters()).dtype  # the sharded master weights
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    lcu = build(str(root / "lcu"), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
    out = str(root / "out")
    os.makedirs(out)
    mp.spawn(_ranks, args=(str(root / "store"), lcu, out), nprocs=WORLD, join=True)
    return out, [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def test_fsdp_shards_parameters_and_matches_ddp(runs):
    _, res = runs
    full = sum(v.numel() for k, v in res[0]["fsdp_params"].items() if k != "indicator_embeddings")
    for r in res:
        assert r["sharded"] and r["local_numel"] < 0.6 * full  # each rank holds about half
        # fp32 on CPU: only the reduction order differs (reduce-scatter vs all-reduce)
        torch.testing.assert_close(torch.tensor(r["fsdp"]), torch.tensor(r["ddp"]), rtol=1e-5, atol=0)
    assert res[1]["fsdp_params"] == {}  # the gathered state lives on rank 0 only
    worst = max((res[0]["fsdp_params"][k] - v).abs().max().item() for k, v in res[0]["ddp_params"].items())
    print(f"losses ddp {[r['ddp'] for r in res]} fsdp {[r['fsdp'] for r in res]}; max |param diff| {worst:.2e}")
    for k, v in res[0]["ddp_params"].items():
        torch.testing.assert_close(res[0]["fsdp_params"][k], v, rtol=1e-4, atol=1e-6)


def test_fsdp_checkpoint_resume_gives_the_same_next_step(runs):
    out, res = runs
    for r in res:
        assert r["resumed"] == r["fsdp"][2]  # bit-exact: the gathered state is re-scattered unchanged
        assert abs(r["resumed_as_ddp"] - r["fsdp"][2]) <= 1e-5 * r["fsdp"][2]  # the checkpoint is strategy-free
    for k, v in res[0]["fsdp_params"].items():
        torch.testing.assert_close(res[0]["resumed_params"][k], v, rtol=0, atol=0)
    for k, v in res[0]["fsdp_ema"].items():
        torch.testing.assert_close(res[0]["resumed_ema"][k], v, rtol=0, atol=0)
    # the checkpoint is an ordinary full one: it loads into an unsharded model
    ckpt = os.path.join(out, "resume", "checkpoints", "step-00000002")
    model = ACEDiT(_cfg().dit())
    model.load_state_dict(load_file(os.path.join(ckpt, "ema.safetensors")))
    model.load_state_dict(load_file(os.path.join(ckpt, "model.safetensors")))
    opt = torch.load(os.path.join(ckpt, "optimizer.pt"), weights_only=True)
    assert opt["format"] == "by-name" and set(opt["optimizer"]["state"]) == {n for n, _ in model.named_parameters()}


def test_fsdp_bf16_mixed_precision_with_gradient_checkpointing(runs):
    _, res = runs
    print(f"bf16 {[r['bf16'] for r in res]} fp32 {[r['fsdp'] for r in res]}")
    for r in res:
        # bf16 compute, fp32 master weights: close to the fp32 run, not equal to it
        torch.testing.assert_close(torch.tensor(r["bf16"]), torch.tensor(r["fsdp"]), rtol=5e-2, atol=0)
        assert r["bf16"] != r["fsdp"]
        assert r["bf16_compute"] == torch.bfloat16 and r["bf16_master"] == torch.float32


@pytest.mark.slow
def test_ray_train_fsdp_run_resumes(ray_local, tmp_path):
    from acemodel.launch import train_ray

    lcu = build(str(tmp_path / "lcu"), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
    out = str(tmp_path / "run")
    cfg = _cfg(steps=2, num_workers=2)
    assert train_ray(cfg, lcu, out)["step"] == 2
    result = train_ray(cfg.model_copy(update={"steps": 3}), lcu, out)  # resumes at 2 on both ranks
    assert result["step"] == 3 and result["strategy"] == "fsdp"
    weights = load_file(os.path.join(result["checkpoint"], "model.safetensors"))
    assert weights["final_layer.linear.weight"].abs().sum() > 0


def test_fsdp_with_fp16_is_refused_before_any_worker_starts(tmp_path):
    from acemodel.launch import train_ray

    from acedata.errors import UserError

    with pytest.raises(UserError, match="bf16"):
        train_ray(_cfg(precision="fp16", num_workers=2), str(tmp_path), str(tmp_path / "run"))
