"""Review storage on SQLite and on a real PostgreSQL server: accounts, queues, claims, leases,
concurrent annotators, durability, and export into the run's reviews table."""

from __future__ import annotations

import random
import threading
import time

import pyarrow as pa
import pytest
import sqlalchemy as sa

from acedata import shards
from acedata.errors import UserError
from acedata.review import assign, queues, stats, store
from acedata.review.catalog import Catalog
from acedata.review.table import final_decisions, read_reviews, reviews_dir


@pytest.fixture(scope="module")
def catalog(review_run) -> Catalog:
    return Catalog(review_run)


def test_accounts_and_sessions(db_url):
    e = store.connect(db_url)
    store.add_user(e, "alice", "admin", "s3cret-pass")
    assert store.sign_in(e, "alice", "wrong-pass") is None and store.sign_in(e, "bob", "s3cret-pass") is None
    token, csrf = store.sign_in(e, "alice", "s3cret-pass")
    assert store.session_user(e, token) == {"name": "alice", "role": "admin", "csrf": csrf}
    assert store.session_user(e, token + "x") is None and store.session_user(e, None) is None
    with e.connect() as c:  # only a hash of the token is stored
        assert token not in str(c.execute(sa.select(store.sessions)).all())
    store.sign_out(e, token)
    assert store.session_user(e, token) is None
    with pytest.raises(UserError):
        store.add_user(e, "x y", "annotator", "long-enough")
    with pytest.raises(UserError):
        store.add_user(e, "carol", "superuser", "long-enough")


def test_queue_selection_is_deterministic_and_filtered(catalog):
    facets = catalog.facets()
    shuffled = facets.take(pa.array(random.Random(0).sample(range(facets.num_rows), facets.num_rows)))
    spec = queues.QueueSpec(by="random", seed=5, size=20)
    assert queues.select(facets, spec) == queues.select(shuffled, spec)  # input order does not matter
    assert queues.select(facets, spec) != queues.select(facets, spec.model_copy(update={"seed": 6}))
    by_task = queues.select(facets, queues.QueueSpec(by="task", task="repainting"))
    assert by_task and {r["task"] for r in by_task} == {"repainting"}
    natural = queues.select(facets, queues.QueueSpec(by="method", method="mllm_llm"))
    assert natural and {r["task"] for r in natural} == {"natural"}
    strat = queues.select(facets, queues.QueueSpec(by="stratified", size=10))
    assert sorted({r["task"] for r in strat[:5]}) == sorted({r["task"] for r in by_task + natural} |
                                                           {"low_level", "element", "reference"})
    with pytest.raises(UserError, match="needs --task"):
        queues.select(facets, queues.QueueSpec(by="task"))


def test_build_overlap_and_no_repeat(db_url, catalog):
    e = store.connect(db_url)
    got = queues.build(e, "a", catalog.facets(), queues.QueueSpec(size=40, overlap=0.25, seed=1))
    assert got["items"] == 40 and 40 < got["copies"] < 80  # about a quarter get a second copy
    again = queues.build(e, "b", catalog.facets(), queues.QueueSpec(seed=1))
    assert again["items"] == len(catalog) - 40  # pairs already queued are left out
    with pytest.raises(UserError, match="empty"):
        queues.build(e, "c", catalog.facets(), queues.QueueSpec())
    with pytest.raises(UserError, match="exists"):
        queues.build(e, "a", catalog.facets(), queues.QueueSpec(allow_repeat=True))
    names = {q["name"]: q for q in queues.list_queues(e)}
    assert names["a"]["copies"] == got["copies"] and names["a"]["done"] == 0


def _work(engine, catalog, queue: str, user: str, out: list, errors: list, decision: str = "accept",
          start: threading.Barrier | None = None) -> None:
    try:
        if start is not None:  # all annotators begin together, as on a busy team
            start.wait(60)
        while True:
            pid = assign.claim(engine, queue, user, lease_s=600)
            if pid is None:
                return
            body = {"decision": decision, "candidate": 1} if decision == "accept" else {"decision": decision}
            assign.decide(engine, queue, user, catalog.item(pid), body)
            out.append((user, pid))
            time.sleep(0.01)  # a person reads the next item: the others get their turn at the queue
    except Exception as e:  # noqa: BLE001 - surfaced by the test
        errors.append(repr(e))


def test_concurrent_annotators_never_get_the_same_item(db_url, catalog):
    e = store.connect(db_url)
    queues.build(e, "q", catalog.facets(), queues.QueueSpec(size=40, seed=2))
    out, errors = [], []
    start = threading.Barrier(4)
    threads = [threading.Thread(target=_work, args=(e, catalog, "q", f"u{i}", out, errors, "accept", start))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    pids = [p for _, p in out]
    assert len(pids) == 40 and len(set(pids)) == 40  # every item once, none twice
    assert len({u for u, _ in out}) >= 2


def test_overlap_items_reach_two_different_annotators(db_url, catalog):
    e = store.connect(db_url)
    queues.build(e, "ov", catalog.facets(), queues.QueueSpec(size=10, overlap=1.0, seed=3))
    out, errors = [], []
    threads = [threading.Thread(target=_work, args=(e, catalog, "ov", f"u{i}", out, errors)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(out) == 20
    by_pair: dict[str, list[str]] = {}
    for u, p in out:
        by_pair.setdefault(p, []).append(u)
    assert len(by_pair) == 10 and all(len(set(us)) == 2 for us in by_pair.values())
    agree = stats.agreement(stats.all_decisions(e))
    assert agree["items"] == 10 and agree["exact_agreement"] == 1.0 and agree["same_candidate"] == 1.0


def test_lease_expiry_returns_item_and_skip_goes_to_others(db_url, catalog):
    e = store.connect(db_url)
    queues.build(e, "l", catalog.facets(), queues.QueueSpec(size=2, seed=4))
    first = assign.claim(e, "l", "gone", lease_s=1)
    assert assign.claim(e, "l", "gone", lease_s=1, holding=[first]) != first
    assert assign.claim(e, "l", "other", lease_s=60) is None  # both held
    time.sleep(1.2)
    taken = assign.claim(e, "l", "other", lease_s=60)
    assert taken == first  # the vanished annotator's item came back, in queue order
    with pytest.raises(assign.Conflict):
        assign.decide(e, "l", "gone", catalog.item(first), {"decision": "accept", "candidate": 1})
    assign.decide(e, "l", "other", catalog.item(taken), {"decision": "skip"})
    nxt = assign.claim(e, "l", "other", lease_s=60, holding=[])
    assert nxt not in (None, taken)  # a skipped item never comes back to the one who skipped it
    assert assign.claim(e, "l", "third", lease_s=60) == taken
    # An open page renews its leases: the item stays with its annotator past the first lease.
    queues.build(e, "r", catalog.facets(), queues.QueueSpec(size=1, seed=4, allow_repeat=True))
    kept = assign.claim(e, "r", "slow", lease_s=1)
    assert assign.renew(e, "r", "slow", [kept], lease_s=60) == 1
    assert assign.renew(e, "r", "other", [kept], lease_s=60) == 0  # only the holder can
    time.sleep(1.2)
    assert assign.claim(e, "r", "other", lease_s=60) is None


def test_decision_validation(db_url, catalog):
    e = store.connect(db_url)
    queues.build(e, "v", catalog.facets(), queues.QueueSpec(by="task", task="reference", size=1))
    pid = assign.claim(e, "v", "u", 60)
    item = catalog.item(pid)
    assert item["indicators"] == ["{image1}", "{image2}"]
    for body, msg in [({"decision": "edit", "instruction": "put {image} on {image2}"}, "unknown image indicator"),
                      ({"decision": "edit", "instruction": "just do it"}, "name the input"),
                      ({"decision": "edit", "instruction": "   "}, "empty"),
                      ({"decision": "accept", "candidate": 9}, "not on this item"),
                      ({"decision": "reject", "reason": "meh"}, "reject reason"),
                      ({"decision": "approve"}, "unknown")]:
        with pytest.raises(assign.Invalid, match=msg):
            assign.decide(e, "v", "u", item, body)
    row = assign.decide(e, "v", "u", item, {"decision": "edit", "instruction": "put  {image1} on {image2}"})
    assert row["instruction"] == "put {image1} on {image2}"
    with pytest.raises(assign.Conflict, match="already"):
        assign.decide(e, "v", "u", item, {"decision": "accept", "candidate": 1})


def test_decisions_survive_reconnect_and_export_into_the_run(db_url, catalog, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    # The export appends to the run: work on a copy of the shared run without its reviews.
    shutil.copytree(catalog.run_dir, run, ignore=shutil.ignore_patterns("review", "*.log"))
    e = store.connect(db_url)
    queues.build(e, "x", catalog.facets(), queues.QueueSpec(size=6, overlap=1.0, seed=7))
    kinds = [{"decision": "accept", "candidate": 2}, {"decision": "reject", "reason": "no_change"},
             {"decision": "edit", "instruction": "make {image} snowy"}]
    for user in ("a", "b"):
        for k in range(6):
            pid = assign.claim(e, "x", user, 60)
            body = kinds[k % 3] if user == "a" else {"decision": "edit", "instruction": "make {image} snowier"} \
                if k % 3 == 2 else kinds[k % 3]
            if catalog.item(pid)["n_inputs"] == 2 and body["decision"] == "edit":
                body = {**body, "instruction": body["instruction"].replace("{image}", "{image1} and {image2}")}
            assign.decide(e, "x", user, catalog.item(pid), body)
    e.dispose()
    e = store.connect(db_url)  # a new process would see the same
    rows = stats.all_decisions(e)
    assert len(rows) == 12
    assert stats.export_to_run(e, run) == {"decisions": 12, "new": 12}
    assert stats.export_to_run(e, run) == {"decisions": 12, "new": 0}
    table = read_reviews(run)
    assert table.num_rows == 12 and shards.validate(reviews_dir(run)) == []
    final = final_decisions(table)
    assert len(final) == 6
    agree = stats.summary(e)["agreement"]
    assert agree["items"] == 6 and agree["corrections_compared"] >= 1 and agree["mean_edit_distance"] >= 1
    csv = stats.to_csv(rows)
    assert csv.count("\n") == 13 and "snowy" in csv


def test_levenshtein_and_indicator_rule():
    assert stats.edit_distance("kitten", "sitting") == 3 and stats.edit_distance("", "abc") == 3
    assert assign.check_indicators("make {image} red", ["{image}"]) is None
    assert "unknown" in assign.check_indicators("make {image1} red", ["{image}"])
    assert "unknown" in assign.check_indicators("a {img} b {image}", ["{image}"])
    assert assign.check_indicators("a cat", []) is None


def test_server_killed_mid_session_keeps_every_acknowledged_decision(db_url, review_run):
    """The real server process on either database: SIGKILL while decisions stream in, restart, compare."""
    from review_helpers import Api, Server, add_users, make_queue

    add_users(db_url, "k1")
    make_queue(db_url, review_run, "kill", size=30, seed=11, allow_repeat=True)
    srv = Server(review_run, db_url).start()
    acked: list[str] = []
    try:
        api = Api(srv.url, "k1")
        stop = threading.Event()

        def stream() -> None:
            try:
                while not stop.is_set():
                    item = api.claim("kill")
                    if item is None or api.decide("kill", item["pair_id"], decision="accept",
                                                  candidate=1).status_code != 200:
                        return
                    acked.append(item["pair_id"])
            except Exception:  # noqa: BLE001 - the server died under us: expected
                return

        t = threading.Thread(target=stream)
        t.start()
        while len(acked) < 5:
            time.sleep(0.05)
        srv.kill()  # SIGKILL mid-stream
        stop.set()
        t.join(30)
        srv = Server(review_run, db_url, port=srv.port).start()
        e = store.connect(db_url)
        stored = [r["pair_id"] for r in stats.all_decisions(e, "kill")]
        # Every acknowledged decision is there; at most the one in flight was stored without its answer.
        assert stored[: len(acked)] == acked and len(stored) - len(acked) <= 1
        api = Api(srv.url, "k1")
        item = api.claim("kill")
        assert item["pair_id"] not in stored
        assert api.decide("kill", item["pair_id"], decision="skip").status_code == 200
        e.dispose()
    finally:
        srv.stop()
