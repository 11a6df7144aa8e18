"""`acedata train-captioner --submit`: the run as a Ray job on a real local cluster (token auth),
training through Ray Train inside the job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from captioner_fixtures import export, make_run, write_config
from test_cluster_jobs import cluster, cluster_env, submit_and_wait  # noqa: F401 - its cluster fixtures


@pytest.mark.slow
def test_train_captioner_submit_runs_on_the_cluster(cluster, cluster_env, tmp_path):  # noqa: F811
    data = export(make_run(tmp_path, n=4), tmp_path / "export")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "tiny", steps=2, every=2)
    out = tmp_path / "train"
    submit_and_wait(cluster, "acedata-train-captioner-", "train-captioner", str(cfg), "--data", str(data),
                    "--out", str(out))
    assert (out / "checkpoints" / "step-00000002" / "trainable.safetensors").is_file()


def test_submit_needs_absolute_paths():
    r = subprocess.run(
        [sys.executable, "-m", "acedata", "train-captioner", "model/configs/captioner-tiny.yaml",
         "--data", "rel/export", "--out", "/tmp/x", "--submit"], check=False, capture_output=True, text=True,
        cwd=str(Path(__file__).parent.parent))
    assert r.returncode == 2 and "absolute path" in r.stderr and "Traceback" not in r.stderr
