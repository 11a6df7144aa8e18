"""The whole demo pipeline with its output on S3 (moto's S3-compatible server on loopback),
then `validate`, `stats` and `train --data s3://...` on that output — all through the CLI,
as a user would run them, in a working directory that must stay empty.

The demo runs once per module (it is the slow part); the other tests read its output.
The corpus stays on local disk (sources are read where they are); every run path is in
the bucket. Endpoint and credentials reach the CLI and its Ray workers only through the
standard AWS environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from acedata import shards

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the first test waits for the whole demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["ingest", "embed", "cluster", "pair", "synthesize", "instruct", "assemble"]


@dataclass
class DemoRun:
    out: str
    cwd: str
    seconds: float
    result: subprocess.CompletedProcess


def acedata(*args: str, cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    return subprocess.run([sys.executable, "-m", "acedata", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def demo_spec(tmp: str, corpus: str) -> str:
    """pipelines/demo.yaml with its sources pointed at a local corpus (the output goes to S3)."""
    with open(os.path.join(ROOT, "pipelines", "demo.yaml"), encoding="utf-8") as f:
        text = f.read()
    assert '"${out}/corpus"' in text
    path = os.path.join(tmp, "demo.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace('"${out}/corpus"', json.dumps(corpus)))
    return path


@pytest.fixture(scope="module")
def s3_demo(s3_server, tmp_path_factory) -> DemoRun:
    tmp = str(tmp_path_factory.mktemp("s3demo"))
    cwd = os.path.join(tmp, "cwd")
    os.makedirs(cwd)
    corpus = os.path.join(tmp, "corpus")
    r = acedata("demo-data", "--out", corpus, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    out = f"s3://{s3_server.bucket}/demo"
    t0 = time.perf_counter()
    r = acedata("run", demo_spec(tmp, corpus), "--out", out, cwd=cwd, timeout=2400)
    seconds = time.perf_counter() - t0
    print(f"\ndemo on S3: {seconds:.1f} s")
    return DemoRun(out, cwd, seconds, r)


def test_demo_pipeline_writes_every_stage_to_the_bucket(s3_demo, s3_server):
    r = s3_demo.result
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    keys = set(s3_server.keys("demo/"))
    assert "demo/_run.json" in keys and "demo/_status.json" in keys
    for stage in STAGES:
        assert f"demo/{stage}/_SUCCESS.json" in keys, stage
    assert "demo/cluster/centroids.npy" in keys  # driver scratch in the bucket too
    assert not any("/_partitions/" in k for k in keys)  # pair's scratch deleted at finish
    assert not any(k.rsplit("/", 1)[-1].startswith(".tmp") for k in keys)  # no temp names on S3
    assert os.listdir(s3_demo.cwd) == []  # nothing written where the command ran
    run = json.loads(s3_server.client().get_object(Bucket=s3_server.bucket, Key="demo/_run.json")["Body"].read())
    assert all(p.startswith("s3://") for paths in run["tables"].values() for p in paths)
    assert shards.count_rows(f"{s3_demo.out}/assemble/lcu") > 0


def test_validate_on_s3(s3_demo):
    r = acedata("validate", s3_demo.out, cwd=s3_demo.cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    ok = [line for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert len(ok) >= len(STAGES) and "FAIL" not in r.stdout
    assert any("/assemble/lcu " in line for line in ok)


def test_stats_on_s3(s3_demo):
    r = acedata("stats", s3_demo.out, "--json", cwd=s3_demo.cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    lcu = shards.count_rows(f"{s3_demo.out}/assemble/lcu") + shards.count_rows(f"{s3_demo.out}/assemble/lcu_validation")
    assert res["rows"] == lcu > 0
    assert res.get("funnel"), "the run's funnel is read from the bucket too"


def test_train_from_s3(s3_demo, tmp_path):
    out = str(tmp_path / "train")
    r = acedata("train", os.path.join(ROOT, "model", "configs", "tiny.yaml"), "--data",
                f"{s3_demo.out}/assemble/lcu", "--out", out, "--steps", "3", cwd=s3_demo.cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "trained to step 3" in r.stdout
    assert os.path.isdir(os.path.join(out, "checkpoints"))


# --- a submitted job on the two-node cluster, writing to the bucket, a worker killed -------


@pytest.fixture(scope="module")
def s3_cluster(s3_server):
    """A two-node loopback cluster started after the S3 env is set: every node inherits it."""
    sys.path.insert(0, os.path.dirname(__file__))
    from cluster_helper import started_cluster

    with started_cluster("acedata-s3c-") as c:
        yield c


@pytest.fixture(scope="module")
def s3_images(s3_server, tmp_path_factory) -> str:
    """A small images table in the bucket (ingested in-process), the cluster job's input."""
    sys.path.insert(0, os.path.dirname(__file__))
    from unit_kill import ingested_images

    d = tmp_path_factory.mktemp("s3-cluster-input")
    return ingested_images(str(d / "corpus"), f"s3://{s3_server.bucket}/cluster-input", seed=0)


def test_submitted_job_writes_to_the_bucket_with_a_worker_killed(s3_cluster, s3_images, s3_server, tmp_path,
                                                                  monkeypatch):
    import signal

    import cluster_stages  # noqa: F401 - registers the test stages for the local reference run
    import yaml

    from acedata import jobs
    from acedata.pipeline import load_spec, run_stages

    monkeypatch.setenv("RAY_ADDRESS", s3_cluster.address)
    monkeypatch.setenv("RAY_AUTH_TOKEN", s3_cluster.token)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    images = s3_images
    trace = str(tmp_path / "trace")
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump({"name": "kill", "executor": "ray", "stages": [
        {"stage": "color_stats", "name": "stats", "rows_per_unit": 8, "pause_s": 1.5, "trace_dir": trace,
         "inputs": {"images": images}, "resources": {"concurrency": 2, "max_retries": 2}}]}))
    _, configs = load_spec(str(spec), {})
    configs[0].pause_s, configs[0].trace_dir = 0.0, None
    run_stages(configs, str(tmp_path / "reference"), executor="local")
    expected = _rows(str(tmp_path / "reference" / "stats" / "embeddings"))

    out = f"s3://{s3_server.bucket}/killed"
    job_id = jobs.submit_pipeline(str(spec), out, plugins=[os.path.join(ROOT, "tests", "cluster_stages.py")])
    deadline = time.time() + 300
    first = None
    while first is None and time.time() < deadline:
        started = [_load(os.path.join(trace, f)) for f in sorted(os.listdir(trace))
                   if ".start." in f] if os.path.isdir(trace) else []
        first = started[0] if started else None
        if first is None:
            assert jobs.wait_for(job_id, timeout=0) not in jobs.TERMINAL, jobs.job_logs(job_id)[-3000:]
            time.sleep(0.2)
    assert first is not None, "no unit started"
    os.kill(first["pid"], signal.SIGKILL)  # the worker process dies mid-unit
    state = jobs.wait_for(job_id, timeout=300, poll=1.0)
    assert state == "SUCCEEDED", jobs.job_logs(job_id)[-4000:]
    retried = [f for f in os.listdir(trace) if f.startswith(first["unit"] + ".start.")]
    assert len(retried) >= 2, "the killed unit was not run again"
    assert _rows(f"{out}/stats/embeddings") == expected  # every image exactly once, as in a clean run
    assert shards.validate(f"{out}/stats/embeddings") == []
    assert "killed/_run.json" in s3_server.keys("killed/")


def _rows(table: str) -> list:
    t = shards.read_table(table, columns=["image_id", "embedding"])
    return sorted(zip(t.column("image_id").to_pylist(), t.column("embedding").to_pylist()))


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
