"""Start and stop a real two-node Ray cluster on loopback, for cluster tests.

Each node is a `ray start --block` subprocess in its own session, on ports picked
free for this cluster, with its own temp dir, so it never meets another Ray on the
machine (and `ray stop`, which would end every Ray here, is never used). Token
authentication is on with a token made for this cluster. Nothing here calls
`ray.init`: the test process talks to the cluster only over the Job Submission HTTP API.

Run it by hand too: `.venv/bin/python tests/cluster_helper.py` starts a cluster and
prints its address and token until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports(head: bool) -> list[str]:
    base = free_port()
    args = [
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
    ]
    # Worker processes take ports from a range; keep each node's range apart.
    lo = 20000 + (base % 200) * 200 + (0 if head else 100)
    args += ["--min-worker-port", str(lo), "--max-worker-port", str(lo + 99)]
    return args


@dataclass
class LocalCluster:
    """A head and one worker node on 127.0.0.1."""

    root: str  # temp dir for Ray sessions and node logs
    head_cpus: int = 2
    worker_cpus: int = 2
    worker_gpus: int = 1  # declared (not real): lets tests check GPU placement on a CPU machine
    head_resources: dict[str, float] = field(default_factory=lambda: {"cpu_pool": 8})
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    gcs_port: int = 0
    dashboard_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(k, None)
        # `python` in job entrypoints is this interpreter, as on a cluster image.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep node addresses on 127.0.0.1
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        return env

    def _spawn(self, args: list[str], log_name: str, head: bool) -> None:
        env = self.env()
        if head:
            cmd = [RAY, "start"]
        else:
            # `ray start --address` refuses a second node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
            # and with it on, rewrites the head's 127.0.0.1 to this machine's interface address
            # (ray-project/ray#59110), where the loopback-bound head is not listening. So the
            # worker node is `ray start` run through `_ray_start_on_loopback` (below).
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
            cmd = [sys.executable, os.path.abspath(__file__), "ray-start-on-loopback"]
        log = open(os.path.join(self.root, log_name), "wb")  # noqa: SIM115 - lives as long as the node
        proc = subprocess.Popen(
            [*cmd, "--block", "--disable-usage-stats", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)

    def start(self, timeout: float = 120.0, attempts: int = 3) -> LocalCluster:
        """Start both nodes; on a shared machine a port picked free can be taken before Ray
        binds it, so a node that fails to start is retried on fresh ports."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError as e:
                self.stop(grace=2.0)
                if attempt == attempts - 1:
                    raise
                print(f"cluster start failed, retrying on new ports: {str(e)[:2000]}", file=sys.stderr)
        return self

    def _start_once(self, timeout: float) -> LocalCluster:
        os.makedirs(self.root, exist_ok=True)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self._spawn(
            [
                "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
                "--num-cpus", str(self.head_cpus), "--num-gpus", "0",
                "--resources", json.dumps(self.head_resources),
                "--object-store-memory", str(120 << 20), "--temp-dir", os.path.join(self.root, "ray"),
                *_node_ports(head=True),
            ],
            "head.log",
            head=True,
        )
        self._wait(lambda: self._nodes_alive() >= 1, timeout, "head node")
        self._spawn(
            [
                "--address", self.gcs_address, "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(self.worker_cpus), "--num-gpus", str(self.worker_gpus),
                "--object-store-memory", str(120 << 20), *_node_ports(head=False),
            ],
            "worker.log",
            head=False,
        )
        self._wait(lambda: self._nodes_alive() >= 2, timeout, "worker node")
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p, name in zip(self.procs, ("head.log", "worker.log")):
                if p.poll() is not None:
                    with open(os.path.join(self.root, name), errors="replace") as f:
                        tail = "".join(f.readlines()[-15:])
                    raise RuntimeError(f"{what}: `ray start` exited {p.returncode}; {name} ends:\n{tail}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not up after {timeout:.0f} s; see {self.root}/*.log")

    def _get(self, path: str) -> dict:
        req = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        """Alive nodes from the state API: node_id, resources_total, ..."""
        try:
            body = self._get("/api/v0/nodes?limit=100&detail=1")
        except OSError:
            return []
        return [n for n in body.get("data", {}).get("result", {}).get("result", []) if n.get("state") == "ALIVE"]

    def _nodes_alive(self) -> int:
        return len(self.nodes())

    def node_ids(self) -> dict[str, str]:
        """'head' / 'worker' -> node id."""
        out = {}
        for n in self.nodes():
            out["head" if n.get("is_head_node") else "worker"] = n["node_id"]
        return out

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's every process (raylet, its workers): a machine lost mid-run."""
        worker = self.procs[1]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        # SIGTERM lets `ray start --block` stop its own processes; then clear each node's session.
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + grace
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:  # anything the node left behind in its session (raylet, workers, dashboard)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()


@contextmanager
def started_cluster(prefix: str) -> Iterator[LocalCluster]:
    """A two-node loopback cluster for the length of a `with` block (a module fixture's body)."""
    root = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths are length-bound
    c = LocalCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _ray_start_on_loopback(argv: list[str]) -> None:
    """`ray start ARGV` with loopback addresses left as they are (see `_spawn`)."""
    from ray._private import services
    from ray.scripts import scripts

    keep = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host if host == "127.0.0.1" else keep(host)
    sys.argv = ["ray", "start", *argv]
    scripts.main()


if __name__ == "__main__" and sys.argv[1:2] == ["ray-start-on-loopback"]:
    _ray_start_on_loopback(sys.argv[2:])
elif __name__ == "__main__":
    import tempfile

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the cluster cleanly too
    c = LocalCluster(tempfile.mkdtemp(prefix="acedata-cluster-")).start()
    print(f"RAY_ADDRESS={c.address}\nRAY_AUTH_TOKEN={c.token}\nlogs: {c.root}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        c.stop()
