"""Security of the review app against a real server process: escaping, 401, CSRF, image ids, binding."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import sqlalchemy as sa
from review_helpers import PASSWORD, XSS, Api, cli, make_queue, sign_in

from acedata.review import pages, store


def n_decisions(db: str) -> int:
    engine = store.connect(db)
    with engine.connect() as c:
        n = c.execute(sa.select(sa.func.count()).select_from(store.decisions)).scalar_one()
    engine.dispose()
    return int(n)


def test_instruction_html_is_shown_escaped(server, browser, review_run):
    make_queue(server.db, review_run, "xss", pair_ids=["p000001"])
    page = sign_in(browser, server.url, "ann1")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server.url + "/review/xss")
    page.wait_for_selector("#item:not([hidden])")
    texts = page.locator("#candidates .text").all_inner_texts()
    assert XSS in texts  # shown literally, as written
    assert page.locator("#candidates script, #candidates img").count() == 0
    assert page.title() != "pwned" and not dialogs
    page.context.close()
    # Server-rendered pages escape too (the admin tables and names).
    html = pages.admin({"name": "x", "role": "admin", "csrf": "t"},
                       {"queues": [], "annotators": [], "reject_reasons": {"<script>": 1}, "agreement": {},
                        "decisions": 0, "decisions_last_hour": 0})
    assert "<script>" not in html.split("</head>")[1] and "&lt;script&gt;" in html


def test_missing_or_wrong_token_is_401_and_writes_nothing(server, review_run):
    make_queue(server.db, review_run, "auth", size=3, seed=9)
    api = Api(server.url, "ann2")
    item = api.claim("auth")
    before = n_decisions(server.db)
    body = {"queue": "auth", "pair_id": item["pair_id"], "decision": "accept", "candidate": 1}
    anon = httpx.Client(base_url=server.url, timeout=10)
    cases = [
        anon.post("/api/decisions", json=body, headers={"X-CSRF-Token": api.csrf}),
        anon.post("/api/decisions", json=body, headers={"Authorization": "Bearer wrong", "X-CSRF-Token": api.csrf}),
        anon.post("/api/decisions", json=body, headers={"Authorization": "Bearer " + api.token[:-2] + "xx",
                                                        "X-CSRF-Token": api.csrf}),
        httpx.Client(base_url=server.url, cookies={"acedata_session": "forged"}).post(
            "/api/decisions", json=body, headers={"X-CSRF-Token": api.csrf}),
        anon.post("/api/queues/auth/claim", json={}),
        anon.get(f"/api/items/{item['pair_id']}"),
        anon.get(f"/img/{item['target']}"),
        anon.get("/api/admin/stats"),
        anon.get("/admin/decisions.json"),
    ]
    assert [r.status_code for r in cases] == [401] * len(cases)
    assert anon.post("/api/login", json={"user": "ann2", "password": "nope"}).status_code == 401
    assert anon.post("/api/login", json={"user": "nobody", "password": PASSWORD}).status_code == 401
    assert anon.get("/review/auth", follow_redirects=False).status_code == 303  # pages send you to sign in
    assert n_decisions(server.db) == before
    assert api.decide("auth", item["pair_id"], decision="accept", candidate=1).status_code == 200
    assert n_decisions(server.db) == before + 1


def test_write_without_csrf_token_is_refused(server, review_run):
    make_queue(server.db, review_run, "csrf", size=3, seed=10)
    api = Api(server.url, "ann3")
    item = api.claim("csrf")
    before = n_decisions(server.db)
    body = {"queue": "csrf", "pair_id": item["pair_id"], "decision": "reject", "reason": "unsafe"}
    auth = {"Authorization": f"Bearer {api.token}"}
    for headers in (auth, {**auth, "X-CSRF-Token": "wrong"}, {**auth, "X-CSRF-Token": ""}):
        r = api.http.post("/api/decisions", json=body, headers=headers)
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
    assert api.http.post("/api/queues/csrf/claim", json={}, headers=auth).status_code == 403
    # The cookie a browser would send automatically is not enough either.
    cookie = httpx.Client(base_url=server.url, cookies={"acedata_session": api.token})
    assert cookie.post("/api/decisions", json=body).status_code == 403
    assert cookie.post("/logout", data={"csrf": "wrong"}).status_code == 403
    # Sign-in form: the double-submit token must match.
    assert httpx.post(server.url + "/login", data={"user": "ann3", "password": PASSWORD}).status_code == 403
    assert n_decisions(server.db) == before
    annotator = api.http.post("/api/admin/export-run", headers=api.headers)
    assert annotator.status_code == 403  # admin only


@pytest.mark.parametrize("image_id", [
    hashlib.sha256(b"not in this run").hexdigest(),  # well-formed, but no item of the run shows it
    "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "/etc/passwd",
    "ingest/images/_manifest.json", "C:%5Cwindows", "abc.def", "x" * 300,
])
def test_image_outside_the_run_or_a_path_is_refused(server, image_id):
    api = Api(server.url, "ann1")
    r = api.http.get("/img/" + image_id, headers=api.headers)
    assert r.status_code in (400, 404) and not r.headers.get("content-type", "").startswith("image/")


def test_images_are_resized_and_cacheable(server, review_run):
    api = Api(server.url, "ann1")
    item = api.http.get("/api/items/p000002", headers=api.headers).json()
    r = api.http.get(f"/img/{item['target']}?s=256", headers=api.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    from PIL import Image

    assert max(Image.open(BytesIO(r.content)).size) <= 256
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"]
    again = api.http.get(f"/img/{item['target']}?s=256", headers={**api.headers, "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert api.http.get(f"/img/{item['target']}?s=99999", headers=api.headers).status_code == 400
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_refuses_to_bind_beyond_loopback(review_run, tmp_path):
    db = "sqlite:///" + str(tmp_path / "r.db")
    p = cli("review", review_run, "--db", db, "--host", "0.0.0.0", check=False)
    assert p.returncode == 2 and "not loopback" in p.stderr and "Traceback" not in p.stderr
    p = cli("review", review_run, "--db", db, "--host", "0.0.0.0", "--allow-remote", check=False)
    assert p.returncode == 2 and "TLS" in p.stderr
    p = cli("review", review_run, "--db", db, check=False)  # loopback, but nobody could sign in
    assert p.returncode == 2 and "no accounts" in p.stderr
