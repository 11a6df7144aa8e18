"""Review tool fixtures (helpers in review_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from review_helpers import CHROMIUM, CHROMIUM_ARGS, XSS, Server, add_users


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> str:
    """60 pairs over real photographs; p000001 carries an HTML/JS candidate."""
    from acedata.review.sample import build_run

    d = str(tmp_path_factory.mktemp("review_run"))
    build_run(d, n_pairs=60, extra={"p000001": [XSS]})
    return d


@pytest.fixture(scope="module")
def server(review_run, tmp_path_factory) -> Iterator[Server]:
    db = "sqlite:///" + str(tmp_path_factory.mktemp("db") / "review.db")
    add_users(db, "ann1", "ann2", "ann3")
    add_users(db, "boss", role="admin")
    s = Server(review_run, db).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("system Chromium not installed (apt-get install chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _pg_bin() -> str | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    path = found[-1] if found else shutil.which("initdb")
    return os.path.dirname(path) if path else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 in a temporary data directory (scram password auth)."""
    import pwd
    import shutil
    import subprocess
    import tempfile

    from review_helpers import free_port

    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]'")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="acedata-pg-", dir="/tmp")
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's postgres user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = "review-test-pw"
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(password)
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    data, port = os.path.join(root, "data"), free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-U", "acedata", f"--pwfile={pwfile}", "--auth=scram-sha-256",
        "-E", "UTF8", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}", "start")
    try:
        yield f"postgresql+psycopg://acedata:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False,
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh review database: SQLite in tmp, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "review.db")
        return
    import uuid

    import sqlalchemy as sa

    base = request.getfixturevalue("postgres_url")
    name = "review_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()
