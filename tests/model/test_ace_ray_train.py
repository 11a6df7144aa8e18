"""Data-parallel training through Ray Train's TorchTrainer (DDP over gloo on CPU)."""

from __future__ import annotations

import os

import pytest
import yaml
from acemodel.config import TrainConfig
from acemodel.launch import train_ray
from safetensors.torch import load_file

from acedata.demo_lcu import build

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "model", "configs", "tiny.yaml")


@pytest.mark.slow
def test_two_worker_ddp_run_writes_a_loadable_checkpoint(ray_local, tmp_path):
    lcu = build(str(tmp_path / "lcu"), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw.update(steps=2, checkpoint_every=2, num_workers=2, strategy="ddp")
    raw["data"].update(batch_size=2, token_budget=12)
    out = str(tmp_path / "run")
    result = train_ray(TrainConfig(**raw), lcu, out)
    assert result["step"] == 2 and result["checkpoint"].endswith("step-00000002")
    weights = load_file(os.path.join(result["checkpoint"], "model.safetensors"))
    assert weights["final_layer.linear.weight"].abs().sum() > 0  # zero-initialised, so it trained
