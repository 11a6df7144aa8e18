"""Pipelines as Ray jobs on a real two-node cluster (head + worker, `ray start`, loopback).

The cluster runs with token authentication on; the test process never calls `ray.init`
and talks to it only over the Job Submission HTTP API (in-process and through the CLI).
Covered: the demo pipeline submitted and polled to success, `jobs list/status/logs`,
worker processes (a task and an actor) killed mid-stage with exact output, model stages
placed on the GPU node and CPU stages on the CPU node, a job stopped mid-stage and
resubmitted finishing with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import cluster_stages
from cluster_helper import LocalCluster, started_cluster
from unit_kill import ingested_images

from acedata import jobs, runtime, shards
from acedata.pipeline import load_spec, run_stages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "tests", "cluster_stages.py")
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster():
    running = os.environ.get("ACEDATA_TEST_CLUSTER")  # "ADDRESS TOKEN" of a cluster_helper.py cluster (dev)
    if running:
        address, token = running.split()
        yield LocalCluster("/nonexistent", token=token, dashboard_port=int(address.rsplit(":", 1)[1]))
        return
    with started_cluster("acedata-rc-") as c:
        yield c


@pytest.fixture
def cluster_env(cluster, monkeypatch):
    """RAY_ADDRESS and the cluster's token for in-process `acedata.jobs` calls."""
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    return cluster


def cli(cluster: LocalCluster, *args: str, token: str | None = "cluster", timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_ADDRESS"] = cluster.address
    if token is not None:
        env["RAY_AUTH_TOKEN"] = cluster.token if token == "cluster" else token
    return subprocess.run([sys.executable, "-m", "acedata", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def submit_and_wait(cluster: LocalCluster, prefix: str, *args: str) -> str:
    """`acedata ARGS --submit`, then wait for the job; asserts it succeeded (its log tail if not)."""
    r = cli(cluster, *args, "--submit")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().split()[-1]
    assert job_id.startswith(prefix)
    state = jobs.wait_for(job_id, cluster.address, timeout=JOB_TIMEOUT, poll=1.0)
    logs = cli(cluster, "jobs", "logs", job_id).stdout
    assert state == "SUCCEEDED", logs[-4000:]
    return job_id


@pytest.fixture(scope="module")
def images_table(tmp_path_factory) -> str:
    """The demo corpus ingested locally (no Ray): the input of the cluster test specs."""
    d = tmp_path_factory.mktemp("cluster-input")
    return ingested_images(str(d / "corpus"), str(d / "run"), seed=0)


def write_spec(path, name: str, stages: list[dict]) -> str:
    import yaml

    path.write_text(yaml.safe_dump({"name": name, "executor": "ray", "stages": stages}, sort_keys=False))
    return str(path)


def reference_rows(spec: str, tmp) -> dict[str, list]:
    """Each stage's embeddings of an uninterrupted local run: stage name -> sorted (id, embedding)."""
    _, configs = load_spec(spec, {"out": str(tmp)})
    for c in configs:
        c.pause_s, c.trace_dir = 0.0, None
    run_stages(configs, str(tmp), executor="local")
    return {c.name: table_rows(os.path.join(str(tmp), c.name, "embeddings")) for c in configs}


def cluster_stages_units(spec: str, out: str) -> list:
    from acedata.stage import RunContext

    _, (cfg,) = load_spec(spec, {"out": out})
    stage = cluster_stages.ColorStats(cfg, RunContext(out, f"{out}/{cfg.name}", {"images": [cfg.inputs["images"]]}))
    return stage.plan()


def table_rows(table: str) -> list:
    t = shards.read_table(table, columns=["image_id", "embedding"])
    return sorted(zip(t.column("image_id").to_pylist(), t.column("embedding").to_pylist()))


def traces(trace_dir: str, event: str = "start") -> list[dict]:
    out = []
    for f in glob.glob(os.path.join(trace_dir, f"*.{event}.*.json")):
        with open(f) as fh:
            out.append(json.load(fh))
    return out


def wait_until(cond, timeout: float, what: str, job_id: str | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        if job_id is not None and jobs.wait_for(job_id, timeout=0) in jobs.TERMINAL:
            raise AssertionError(f"job {job_id} ended before {what}:\n{jobs.job_logs(job_id)[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_succeeded(job_id: str) -> None:
    state = jobs.wait_for(job_id, timeout=JOB_TIMEOUT, poll=1.0)
    assert state == "SUCCEEDED", f"job {job_id}: {state}\n{jobs.job_logs(job_id)[-4000:]}"


# --- tests ---------------------------------------------------------------------------


def test_token_auth_is_enforced_and_errors_are_one_line(cluster, tmp_path):
    home = tmp_path / "home"  # no ~/.ray/auth_token to fall back on
    home.mkdir()
    env_home = {"HOME": str(home)}
    for token, expected in ((None, "wants an auth token"), ("not-the-token", "refused the auth token")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update(env_home, RAY_ADDRESS=cluster.address)
        if token:
            env["RAY_AUTH_TOKEN"] = token
        r = subprocess.run([sys.executable, "-m", "acedata", "jobs", "list"], check=False, env=env,
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 2
        assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli(cluster, "jobs", "list")
    assert r.returncode == 0, r.stderr


def test_submit_demo_pipeline_and_watch_it(cluster, cluster_env, tmp_path):
    from acedata.demo_data import build

    out = tmp_path / "demo"
    build(str(out / "corpus"), variants=2, seed=0)  # pipelines/demo.yaml reads ${out}/corpus
    # --code installed: the cluster's own acedata (here the venv's editable install) runs it;
    # the other tests ship this checkout's packages with the job (the default)
    r = cli(cluster, "submit", os.path.join(REPO, "pipelines", "demo.yaml"), "--out", str(out), "--code", "installed")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    assert job_id.startswith("acedata-pipeline-demo-")

    listed = cli(cluster, "jobs", "list")
    assert job_id in listed.stdout

    assert_succeeded(job_id)
    status = cli(cluster, "jobs", "status", job_id)
    assert status.returncode == 0, status.stderr
    assert f"job {job_id}: SUCCEEDED" in status.stdout
    _, configs = load_spec(os.path.join(REPO, "pipelines", "demo.yaml"), {"out": str(out)})
    for c in configs:  # every stage of the (growing) demo spec reported, each succeeded
        assert any(line.split()[:2] == [c.name, "succeeded"] for line in status.stdout.splitlines()), status.stdout
    as_json = json.loads(cli(cluster, "jobs", "status", job_id, "--json").stdout)
    assert as_json["run"]["state"] == "succeeded"
    ingest = next(s for s in as_json["run"]["stages"] if s["name"] == "ingest")["counts"]
    assert ingest["inputs"] == ingest["images"] + ingest["duplicates"] + ingest["quarantine"] > 0

    logs = cli(cluster, "jobs", "logs", job_id)
    assert "acedata job: finished" in logs.stdout
    assert jobs.last_status(logs.stdout)["state"] == "succeeded"
    follow = cli(cluster, "jobs", "logs", "--follow", job_id)  # returns once the (ended) job's log is out
    assert follow.returncode == 0 and "acedata job: finished" in follow.stdout
    check = subprocess.run([sys.executable, "-m", "acedata", "validate", str(out)], check=False,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_killed_workers_still_give_exact_rows_on_the_right_nodes(cluster, cluster_env, images_table, tmp_path):
    trace = str(tmp_path / "trace")
    common = {"rows_per_unit": 6, "pause_s": 1.5, "trace_dir": trace, "inputs": {"images": images_table}}
    spec = write_spec(tmp_path / "kill.yaml", "kill", [
        # decoding-type work pinned to the CPU node group by a custom resource only the head has
        {"stage": "color_stats", "name": "cpu_stage", **common,
         "resources": {"custom": {"cpu_pool": 1}, "concurrency": 2, "max_retries": 2}},
        # a model stage: actor pool on GPUs (the worker node declares one GPU)
        {"stage": "color_stats_actor", "name": "gpu_stage", **common,
         "resources": {"num_gpus": 0.5, "concurrency": 2, "max_retries": 2}},
    ])
    expected = reference_rows(spec, tmp_path / "reference")
    out = "file://" + str(tmp_path / "run")  # an fsspec/pyarrow URI every node can reach
    job_id = jobs.submit_pipeline(spec, out, plugins=[PLUGIN])

    killed = {}
    for stage, on_gpu in (("cpu_stage", False), ("gpu_stage", True)):
        first = wait_until(lambda on_gpu=on_gpu: [t for t in traces(trace) if bool(t["gpu_ids"]) == on_gpu],
                           JOB_TIMEOUT, f"a {stage} unit to start", job_id)[0]
        os.kill(first["pid"], signal.SIGKILL)  # the worker process (task / actor) dies mid-unit
        killed[stage] = first
    assert_succeeded(job_id)

    nodes = cluster.node_ids()
    starts = traces(trace)
    for stage, on_gpu in (("cpu_stage", False), ("gpu_stage", True)):
        mine = [t for t in starts if bool(t["gpu_ids"]) == on_gpu]
        k = killed[stage]
        retried = [t for t in mine if t["unit"] == k["unit"] and t["pid"] != k["pid"]]
        assert retried, f"{stage}: the killed unit {k['unit']} was not run again"
        assert {t["node_id"] for t in mine} == {nodes["worker" if on_gpu else "head"]}
        rows = table_rows(f"{out}/{stage}/embeddings")
        assert rows == expected[stage]  # every image exactly once, values as in a clean run
        assert shards.validate(f"{out}/{stage}/embeddings") == []
    actor_setups = traces(trace, "actor")
    assert len({t["pid"] for t in actor_setups}) >= 3  # two actors plus the restarted one
    status = jobs.job_status(job_id)["run"]
    assert [s["counts"]["embeddings"] for s in status["stages"]] == [len(expected["cpu_stage"])] * 2


def test_stopped_job_resubmitted_gives_exactly_the_uninterrupted_rows(cluster, cluster_env, images_table, tmp_path):
    trace = str(tmp_path / "trace")
    spec = write_spec(tmp_path / "resume.yaml", "resume", [
        # one image per unit, one unit at a time: the stage lasts long enough to be stopped part-way
        {"stage": "color_stats", "name": "stats", "rows_per_unit": 2, "pause_s": 1.0, "trace_dir": trace,
         "inputs": {"images": images_table}, "resources": {"concurrency": 1}},
    ])
    expected = reference_rows(spec, tmp_path / "reference")["stats"]
    out = str(tmp_path / "run")
    first = jobs.submit_pipeline(spec, out, plugins=[PLUGIN])

    def progressed():
        run = jobs.job_status(first)["run"]
        stage = run and run["stages"][0]
        return stage if stage and stage["state"] == "running" and stage["units_done"] >= 2 else None

    seen = wait_until(progressed, JOB_TIMEOUT, "2 committed units", first)
    assert seen["units_done"] < seen["units"]
    r = cli(cluster, "jobs", "stop", first)
    assert r.returncode == 0 and r.stdout.strip().endswith("STOPPED"), r.stdout + r.stderr
    assert "acedata job: stopped" in jobs.job_logs(first)  # the entrypoint saw SIGTERM
    assert jobs.job_status(first)["run"]["state"] == "interrupted"
    committed = set(runtime.done_units(f"{out}/stats"))
    assert 2 <= len(committed) < seen["units"]
    assert not os.path.exists(f"{out}/stats/_SUCCESS.json")

    second = jobs.submit_pipeline(spec, out, plugins=[PLUGIN])
    assert_succeeded(second)
    assert table_rows(f"{out}/stats/embeddings") == expected
    assert shards.validate(f"{out}/stats/embeddings") == []
    by_job: dict[str, set[str]] = {}
    started: dict[str, float] = {}
    for t in traces(trace):
        by_job.setdefault(t["job_id"], set()).add(t["unit"])
        started[t["job_id"]] = min(started.get(t["job_id"], t["t"]), t["t"])
    assert len(by_job) == 2
    earlier, later = sorted(by_job, key=started.get)
    assert not (by_job[later] & committed), "units committed before the stop were redone"
    assert by_job[earlier] | by_job[later] == {u.id for u in cluster_stages_units(spec, out)}
    run = jobs.job_status(second)["run"]
    assert run["state"] == "succeeded" and run["stages"][0]["counts"]["embeddings"] == len(expected)


def test_train_submit_runs_ray_train_on_the_cluster(cluster, cluster_env, tmp_path):
    pytest.importorskip("acemodel")
    from acedata.demo_lcu import build

    build(str(tmp_path / "lcu"))
    out = tmp_path / "train"
    submit_and_wait(cluster, "acedata-train-", "train", os.path.join(REPO, "model", "configs", "tiny.yaml"),
                    "--data", str(tmp_path / "lcu"), "--out", str(out), "--steps", "2", "--workers", "2")
    assert (out / "checkpoints" / "step-00000002" / "model.safetensors").is_file()


def test_worker_node_lost_mid_stage_gives_exact_rows(cluster, cluster_env, images_table, tmp_path):
    """Runs last: the cluster is one node short afterwards."""
    if not cluster.procs:
        pytest.skip("needs a cluster this module started (it kills a node)")
    trace = str(tmp_path / "trace")
    spec = write_spec(tmp_path / "node.yaml", "node-loss", [
        {"stage": "color_stats", "name": "stats", "rows_per_unit": 2, "pause_s": 2.0, "trace_dir": trace,
         "inputs": {"images": images_table}, "resources": {"concurrency": 4, "max_retries": 3}},
    ])
    expected = reference_rows(spec, tmp_path / "reference")["stats"]
    out = str(tmp_path / "run")
    job_id = jobs.submit_pipeline(spec, out, plugins=[PLUGIN])
    worker = cluster.node_ids()["worker"]
    lost = wait_until(lambda: [t for t in traces(trace) if t["node_id"] == worker], JOB_TIMEOUT,
                      "a unit on the worker node", job_id)
    cluster.kill_worker_node()
    assert_succeeded(job_id)
    assert table_rows(f"{out}/stats/embeddings") == expected
    assert shards.validate(f"{out}/stats/embeddings") == []
    rerun = {t["unit"] for t in traces(trace) if t["node_id"] != worker}
    assert {t["unit"] for t in lost} <= rerun  # what the lost node held was done again elsewhere
