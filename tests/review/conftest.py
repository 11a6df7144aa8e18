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
