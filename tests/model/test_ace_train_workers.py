"""`acedata train --workers 2` as the README runs it: relative --data, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from acemodel.config import TrainConfig
from acemodel.launch import root_cause, train_ray

from acedata.demo_lcu import build
from acedata.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "model", "configs", "tiny.yaml")


def _cli(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "model")])
    return subprocess.run([sys.executable, "-m", "acedata", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def _config(tmp_path) -> str:
    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw.update(steps=1, checkpoint_every=1)
    raw["data"].update(batch_size=2, token_budget=12)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _cfg(**kw) -> TrainConfig:
    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw.update(steps=1, checkpoint_every=1, num_workers=2, strategy="ddp", **kw)
    raw["data"].update(batch_size=2, token_budget=12)
    return TrainConfig(**raw)


@pytest.mark.slow
def test_relative_data_with_two_workers_trains(ray_local, tmp_path, monkeypatch):
    """The README's `--data runs/...` from the user's directory; Ray workers run elsewhere."""
    build(str(tmp_path / "runs" / "lcu"), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
    monkeypatch.chdir(tmp_path)
    result = train_ray(_cfg(), ["runs/lcu"], "runs/train")
    assert result["step"] == 1
    assert os.path.isdir(tmp_path / "runs" / "train" / "checkpoints" / "step-00000001")


@pytest.mark.slow
def test_a_user_error_on_a_worker_is_one_line(ray_local, tmp_path, monkeypatch):
    """Raised inside the Ray Train workers (the released-weights check), not on the driver."""
    build(str(tmp_path / "lcu"), (64, 48), photos=["astronaut"], rows_per_group=2)
    (tmp_path / "released.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        train_ray(_cfg(init_from="released.pth"), "lcu", "out")
    msg = str(e.value)
    assert msg.startswith("training failed on a worker: released ACE weights") and "\n" not in msg, msg


def test_missing_data_is_one_line(tmp_path):
    r = _cli(["train", _config(tmp_path), "--data", "runs/nothing-here", "--out", "runs/train", "--workers", "2",
              "--address", "local"], cwd=str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acedata train: error:") and "nothing-here" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_root_cause_unwraps_a_worker_group_error():
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    cause = UserError("no LCU shards under ['/x']")
    wrapped = WorkerGroupError("rank 1 failed", {1: RuntimeError("late"), 0: cause})
    assert root_cause(wrapped) is cause
    assert root_cause(ControllerError(wrapped)) is cause
    try:
        try:
            raise cause
        except UserError as e:
            raise RuntimeError("outer") from e
    except RuntimeError as outer:
        assert root_cause(outer) is cause


@pytest.mark.slow
def test_two_workers_checkpoint_to_s3_and_resume(tmp_path, s3_server):
    """`--workers 2 --out s3://...` as a user types it (its own embedded Ray, AWS env inherited): rank 0
    commits checkpoints to the S3 server, Ray Train's storage_path is the URI, a rerun resumes from S3."""
    from acemodel.checkpoint import latest_checkpoint

    build(str(tmp_path / "lcu"), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
    out = f"s3://{s3_server.bucket}/ray-train-{tmp_path.name}"
    cfg = _config(tmp_path)
    r = _cli(["train", cfg, "--data", "lcu", "--out", out, "--workers", "2", "--address", "local"], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert latest_checkpoint(out) == f"{out}/checkpoints/step-00000001"
    prefix = out.split("/", 3)[3]
    assert any(k.startswith(f"{prefix}/ray/") for k in s3_server.keys(prefix))  # Ray Train's own run state
    assert not os.path.exists(tmp_path / "s3:")  # nothing written to a local folder named like the URI
    r = _cli(["train", cfg, "--data", "lcu", "--out", out, "--workers", "2", "--address", "local", "--steps", "2"],
             cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'step': 2" in r.stdout and latest_checkpoint(out).endswith("step-00000002")
