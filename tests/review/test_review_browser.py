"""The review app in a real headless Chromium against a real server process."""

from __future__ import annotations

import os
import shutil
import time

import pyarrow.parquet as pq
import sqlalchemy as sa
from review_helpers import Api, Server, add_users, cli, make_queue, sign_in

from acedata.review import store
from acedata.review.catalog import Catalog
from acedata.review.table import final_decisions, read_reviews, reviews_dir

SCREENSHOT = os.environ.get("ACEDATA_REVIEW_SCREENSHOT")  # set to refresh the README's screenshot


def current(page) -> str:
    page.wait_for_selector("#item:not([hidden])")
    return page.get_attribute("#item", "data-pair")


def act(page, *keys: str) -> str:
    """Press keys on the current item and wait for the next one; returns the pair decided."""
    before = current(page)
    for k in keys:
        page.keyboard.press(k)
    page.wait_for_function(
        "b => document.querySelector('#item').hidden || document.querySelector('#item').dataset.pair !== b", arg=before)
    return before


def decisions(db: str, queue: str) -> list[dict]:
    engine = store.connect(db)
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(
            sa.select(store.decisions).where(store.decisions.c.queue == queue).order_by(store.decisions.c.id))]
    engine.dispose()
    return rows


def held_next(db: str, queue: str, user: str, current_pid: str) -> str:
    """The item claimed for `user` besides the one on screen (waits for the background claim)."""
    engine = store.connect(db)
    try:
        for _ in range(100):
            with engine.connect() as c:
                held = [r.pair_id for r in c.execute(sa.select(store.slots.c.pair_id).where(
                    store.slots.c.queue == queue, store.slots.c.annotator == user, sa.not_(store.slots.c.done)))]
            rest = [p for p in held if p != current_pid]
            if rest:
                assert len(held) == 2 and current_pid in held
                return rest[0]
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError("no next item was claimed in the background")


def test_review_twenty_items_by_keyboard(server, browser, review_run, tmp_path):
    make_queue(server.db, review_run, "main", size=24, seed=1)
    page = sign_in(browser, server.url, "ann1")
    page.click("text=main")
    page.wait_for_url(server.url + "/review/main")
    done: dict[str, str] = {}
    shot = None
    for k in range(20):
        pid = current(page)
        n_candidates = page.locator("#candidates li").count()
        assert n_candidates >= 2 and page.locator("#images img").count() >= 2
        if k == 0:  # the next item is claimed and its images fetched while this one is on screen
            nxt = held_next(server.db, "main", "ann1", pid)
            urls = [f"/img/{i}" for i in Catalog(review_run).image_ids_of(Catalog(review_run).item(nxt))]
            page.wait_for_function("""us => us.every(u => performance.getEntriesByType('resource')
                .some(e => e.name.includes(u)))""", arg=urls)
        if k == 4:  # edit: a wrong indicator is refused live, then fixed
            page.keyboard.press("e")
            allowed = page.inner_text("#allowed").split(", ")
            page.fill("#edit-text", "make {image7} look like winter")
            page.keyboard.press("Control+Enter")
            assert "unknown image indicator {image7}" in page.inner_text("#edit-error")
            assert page.get_attribute("#edit-text", "aria-invalid") == "true"
            time.sleep(0.3)
            assert current(page) == pid and len(decisions(server.db, "main")) == k  # nothing was sent
            # The server checks again whatever the browser says.
            status = page.evaluate("""async ([pid]) => (await fetch('/api/decisions', {method: 'POST',
                headers: {'Content-Type': 'application/json',
                          'X-CSRF-Token': document.querySelector('meta[name=csrf]').content},
                body: JSON.stringify({queue: 'main', pair_id: pid, decision: 'edit',
                                      instruction: 'make {image7} red'})})).status""", [pid])
            assert status == 422 and len(decisions(server.db, "main")) == k
            page.fill("#edit-text", f"make {' and '.join(allowed)} look like winter")
            assert page.inner_text("#edit-error") == ""
            done[act(page, "Control+Enter")] = "edit"
        elif k == 7:
            page.keyboard.press("r")
            done[act(page, "2")] = "reject"
        else:
            if shot is None and (page.locator("#analysis:not([hidden])").count() or k == 19):
                # the item page as the README shows it: an item with the MLLM's analysis
                page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
                shot = page.screenshot(full_page=True)
            done[act(page, "1" if k % 2 else "2")] = "accept"
    assert len(done) == 20
    assert list(done)[1] == nxt  # the preloaded item was the next one shown
    rows = decisions(server.db, "main")
    assert [r["pair_id"] for r in rows] == list(done)
    assert [r["decision"] for r in rows] == list(done.values())
    edit = next(r for r in rows if r["decision"] == "edit")
    assert "look like winter" in edit["instruction"] and edit["chosen_method"] == "human"
    assert next(r for r in rows if r["decision"] == "reject")["reject_reason"] == "bad_target"
    for r in rows:
        assert r["annotator"] == "ann1" and '"candidates"' in r["shown"]
        if r["decision"] == "accept":  # what was chosen is one of what was shown
            assert r["instruction"] in r["shown"] and r["chosen_method"] in ("template", "llm_rewrite", "mllm_llm")
    assert shot and shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
    (tmp_path / "item.png").write_bytes(shot)
    if SCREENSHOT:
        shutil.copy(tmp_path / "item.png", SCREENSHOT)

    # Into the run: the append-only reviews table, validated like any table.
    out = cli("review", review_run, "--db", server.db, "export")
    assert "20 new of 20" in out.stdout
    assert "0 new of 20" in cli("review", review_run, "--db", server.db, "export").stdout  # idempotent
    table = read_reviews(review_run)
    assert table.num_rows == 20
    final = final_decisions(table)
    assert {p: final[p]["decision"] for p in done} == done
    assert cli("validate", reviews_dir(review_run)).returncode == 0
    assert pq.read_table(reviews_dir(review_run)).num_rows == 20
    page.context.close()


def test_two_annotators_never_share_and_overlap_reaches_both(server, browser, review_run):
    make_queue(server.db, review_run, "solo", size=12, seed=2)
    a, b = sign_in(browser, server.url, "ann2"), sign_in(browser, server.url, "ann3")
    for p in (a, b):
        p.goto(server.url + "/review/solo")
    seen = {"a": [], "b": []}
    for _ in range(5):  # interleaved, both holding a current and a preloaded item at all times
        seen["a"].append(act(a, "1"))
        seen["b"].append(act(b, "2"))
    held = {current(a), current(b)}
    assert not set(seen["a"]) & set(seen["b"]) and not held & set(seen["a"] + seen["b"]) and len(held) == 2

    make_queue(server.db, review_run, "both", size=4, overlap=1.0, seed=3)
    for p in (a, b):
        p.goto(server.url + "/review/both")
    got = {"a": [], "b": []}
    for name, p in (("a", a), ("b", b)):
        for _ in range(4):
            got[name].append(act(p, "1"))
        p.wait_for_selector("#empty:not([hidden])")
    assert sorted(got["a"]) == sorted(got["b"]) and len(set(got["a"])) == 4  # every overlap item reached both

    admin = sign_in(browser, server.url, "boss")
    admin.goto(server.url + "/admin")
    text = admin.inner_text("main")
    assert "both" in text and "exact_agreement" in text and "1.0" in text  # both accepted candidate 1
    csv = admin.evaluate("async () => (await fetch('/admin/decisions.csv')).text()")
    assert csv.splitlines()[0].startswith("review_id,queue,pair_id") and csv.count("\n") >= 18
    admin.click("#export-run")  # into the run, from the admin page
    admin.wait_for_selector("text=new")
    assert read_reviews(review_run).num_rows == len(csv.strip().splitlines()) - 1
    for p in (a, b, admin):
        p.context.close()


def test_killed_server_loses_no_acknowledged_decision(browser, review_run, tmp_path):
    db = "sqlite:///" + str(tmp_path / "review.db")
    add_users(db, "ann1", "ann2")
    make_queue(db, review_run, "crash", size=20, seed=4, allow_repeat=True)
    srv = Server(review_run, db, lease=6).start()
    try:
        page = sign_in(browser, srv.url, "ann1")
        page.goto(srv.url + "/review/crash")
        acked = [act(page, "1") for _ in range(6)]  # act() returns only after the server's 200
        # An open page keeps renewing its 6 s leases: after 9 s nobody else gets its two items.
        on_screen = current(page)
        time.sleep(9)
        other = Api(srv.url, "ann2")
        first = other.claim("crash")["pair_id"]
        theirs = {first, other.claim("crash", holding=[first])["pair_id"]}
        assert on_screen not in theirs and held_next(db, "crash", "ann1", on_screen) not in theirs
        srv.kill()  # SIGKILL: no shutdown hooks, no flush
        assert [r["pair_id"] for r in decisions(db, "crash")] == acked
        srv = Server(review_run, db, port=srv.port).start()
        page.reload()  # the session survives the restart too
        acked.append(act(page, "2"))
        rows = decisions(db, "crash")
        assert [r["pair_id"] for r in rows] == acked and len({r["review_id"] for r in rows}) == 7
    finally:
        srv.stop()
