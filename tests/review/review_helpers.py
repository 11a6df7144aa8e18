"""Review test helpers: a sample run, the review server as a real uvicorn process on
loopback (stopped by PID), a headless system Chromium driven by Playwright, and a real
PostgreSQL server in a temporary data directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script> make {image} red'
PASSWORD = "correct-horse-battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "model"), e.get("PYTHONPATH", "")])
    return e


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "acedata", *args], check=False, capture_output=True, text=True, env=env(),
                       timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"acedata {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


class Server:
    """`acedata review RUN` in its own process group, on a free loopback port."""

    def __init__(self, run_dir: str, db: str, port: int | None = None, lease: int = 900) -> None:
        self.run_dir, self.db, self.lease = run_dir, db, lease
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.log = open(os.path.join(self.run_dir, f"server-{self.port}.log"), "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acedata", "review", self.run_dir, "--db", self.db, "--port", str(self.port),
             "--lease", str(self.lease)], stdout=self.log, stderr=subprocess.STDOUT, env=env(),
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"review server exited {self.proc.returncode}: "
                                     + Path(self.log.name).read_text()[-2000:])
            try:
                if httpx.get(self.url + "/login", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("review server did not come up in 60 s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Api:
    """A signed-in HTTP client (bearer token + CSRF header)."""

    def __init__(self, url: str, user: str, password: str = PASSWORD) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        r = self.http.post("/api/login", json={"user": user, "password": password})
        assert r.status_code == 200, r.text
        self.token, self.csrf = r.json()["token"], r.json()["csrf"]
        self.headers = {"Authorization": f"Bearer {self.token}", "X-CSRF-Token": self.csrf}

    def claim(self, queue: str, holding: list[str] = ()) -> dict | None:
        r = self.http.post(f"/api/queues/{queue}/claim", json={"holding": list(holding)}, headers=self.headers)
        assert r.status_code == 200, r.text
        return None if r.json()["done"] else r.json()["item"]

    def decide(self, queue: str, pair_id: str, **body) -> httpx.Response:
        return self.http.post("/api/decisions", json={"queue": queue, "pair_id": pair_id, **body},
                              headers=self.headers)


def add_users(db: str, *names: str, role: str = "annotator") -> None:
    from acedata.review import store

    engine = store.connect(db)
    for n in names:
        store.add_user(engine, n, role, PASSWORD)
    engine.dispose()


def make_queue(db: str, run_dir: str, name: str, pair_ids: list[str] | None = None, **spec) -> dict:
    from acedata.review import queues, store
    from acedata.review.catalog import Catalog

    facets = Catalog(run_dir).facets()
    if pair_ids is not None:
        facets = facets.filter(pc.is_in(facets["pair_id"], pa.array(pair_ids)))
    engine = store.connect(db)
    got = queues.build(engine, name, facets, queues.QueueSpec(**spec))
    engine.dispose()
    return got


def sign_in(browser, url: str, user: str, password: str = PASSWORD):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.goto(url + "/login")
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("#signin")
    page.wait_for_url(url + "/")
    return page
