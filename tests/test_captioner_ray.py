"""Captioner training through Ray Train's TorchTrainer: 2 workers over gloo on CPU, DDP and
FSDP2 (per decoder layer); both write ordinary full checkpoints that load in one process."""

from __future__ import annotations

import os

import pytest
from captioner_fixtures import export, make_run, write_config
from safetensors.torch import load_file

from acedata.captioner.config import load_config
from acedata.captioner.evaluate import load_checkpoint
from acedata.captioner.train import train_ray


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_worker_run_writes_a_loadable_checkpoint(ray_local, tmp_path, strategy):
    data = export(make_run(tmp_path, n=4), tmp_path / "export")
    cfg = load_config(str(write_config(tmp_path / "c.yaml", tmp_path / "tiny", steps=2, every=2)),
                      {"num_workers": 2, "strategy": strategy})
    cfg.data.batch_size = 2
    result = train_ray(cfg, str(data), str(tmp_path / "run"))
    assert result["checkpoint"].endswith("step-00000002") and result["loss"] > 0
    weights = load_file(os.path.join(result["checkpoint"], "trainable.safetensors"))
    assert any("language_model" in k for k in weights) and all(v.isfinite().all() for v in weights.values())
    _model, _, state = load_checkpoint(result["checkpoint"])
    assert state["world_size"] == 2 and state["strategy"] == strategy
