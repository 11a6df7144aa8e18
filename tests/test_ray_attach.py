"""Which Ray a run uses: Ray's own rules, never the "num_cpus must not be provided" crash.

The attach test starts a real `ray start --head` on loopback with its own RAY_TMPDIR (so the
`ray_current_cluster` file it writes is the one this test's CLI reads, and no other Ray on the
machine is involved), runs `acedata ingest` with no address, and stops the head by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from cluster_helper import RAY, _node_ports, free_port
from PIL import Image

from acedata import ray_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tmpdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env.update(RAY_TMPDIR=tmpdir, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    return env


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_choose_follows_rays_order(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_session.choose(None).address is None  # nothing recorded: private
    os.makedirs(tmp_path / "ray")
    dead = f"127.0.0.1:{free_port()}"
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    stale = ray_session.choose(None)
    assert stale.address is None and "does not answer" in stale.why  # stale file: private, not a crash
    assert ray_session.choose("10.0.0.1:6379").address == "10.0.0.1:6379"
    assert ray_session.choose("local").address is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert ray_session.choose(None) == ray_session.RayTarget("10.0.0.2:6379", "$RAY_ADDRESS")
    assert ray_session.choose("local").address is None  # an explicit --address wins over the env


@pytest.mark.slow
def test_cli_attaches_to_a_running_local_cluster(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 90, 200 - 30 * i)).save(corpus / f"{i}.png")
    # A short temp root: Ray's socket paths must fit in 107 bytes.
    tmpdir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    env = _env(tmpdir)
    port = free_port()
    log = open(tmp_path / "head.log", "wb")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--include-dashboard", "false", "--num-cpus", "2", "--num-gpus", "0",
         "--object-store-memory", str(100 << 20), "--ray-client-server-port", str(free_port()),
         *_node_ports(head=True)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        recorded = os.path.join(tmpdir, "ray", "ray_current_cluster")
        deadline = time.time() + 120
        while not (os.path.exists(recorded) and ray_session._reachable(_read(recorded))):
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            assert time.time() < deadline, "head did not start"
            time.sleep(0.5)
        # The case: a spec that asks for num_cpus, no address, a `ray start` cluster running.
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"name: t\nexecutor: ray\nray: {{num_cpus: 2}}\nstages:\n  - stage: ingest\n"
                        f"    sources: [{corpus}]\n")
        r = subprocess.run(
            [sys.executable, "-m", "acedata", "run", str(spec), "--out", str(tmp_path / "run")],
            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ray: ")]
        expect = f"ray: attached to the cluster at 127.0.0.1:{port} (the cluster `ray start` recorded in {recorded})"
        assert lines == [expect], r.stderr[-3000:]
        assert "images=3" in r.stdout, r.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
