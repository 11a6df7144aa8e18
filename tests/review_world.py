"""The reviewed demo run shared by test_review_dataflow.py and test_review_labelstudio.py."""

from __future__ import annotations

import datetime as dt
import os

from assemble_world import assemble, build_world

from acedata import shards
from acedata.cli import main
from acedata.review.table import append_reviews, review_id

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


def review(pid: str, decision: str, who: str = "ann1", minutes: int = 0, **kw) -> dict:
    at = T0 + dt.timedelta(minutes=minutes)
    return {"review_id": review_id(pid, who, at, "review_app"), "pair_id": pid, "annotator": who,
            "decision": decision, "decided_at": at, "origin": "review_app", **kw}


def reviewed_world(run: str, demo_corpus: str) -> dict:
    """assemble_world's world in `run`, with a set of reviews appended and assembled."""
    w = build_world(run, demo_corpus)
    w["run"] = run
    mined = sorted(p["pair_id"] for p in w["pairs"] if p["pair_id"].startswith("mined-"))
    t2i = next(i["pair_id"] for i in w["instr"] if i["pair_id"].startswith("t2i:") and "test subject" in i["instruction"])
    w["bad_edit"], w["accept_v1"] = mined[0], mined[1]
    w["t2i"] = t2i
    w["stale"] = min(p["pair_id"] for p in w["pairs"] if p["pair_id"].startswith("simple-"))
    w["reviews"] = [
        review("chain1", "accept", "ann2", 0, chosen_variant=0, instruction="turn {image} into black and white"),
        review("chain1", "edit", "ann1", 5, instruction="make {image} monochrome", chosen_method="human"),
        review("chain2", "reject", "ann1", 1, reject_reason="not_an_edit"),
        review("ref", "accept", "ann1", 2, chosen_variant=0,
               instruction="draw the subject of {image1} in the style of {image2}"),
        review("repaint", "edit", "ann1", 3, instruction="repaint the masked area of {image} in red"),
        review(mined[0], "edit", "ann1", 4, instruction="swap {image} and {image2}"),  # one input only
        review(mined[1], "accept", "ann1", 4, chosen_variant=1),  # no text stored: take variant 1's
        review(mined[2], "skip", "ann1", 4),
        review("ghost", "reject", "ann1", 4, reject_reason="other"),
        review(t2i, "edit", "ann1", 6, instruction="a corrected caption of a test subject"),
        review(w["stale"], "accept", "ann1", 6, chosen_variant=7),  # a variant the instructions no longer have
    ]
    assert append_reviews(run, w["reviews"]) == len(w["reviews"])
    w["summary"] = assemble(run, max_history=2, rows_per_unit=7, seed=0)
    w["rows"] = shards.read_table(os.path.join(run, "assemble", "lcu")).to_pylist()
    w["q"] = shards.read_table(os.path.join(run, "assemble", "quarantine")).to_pylist()
    return w


def single(rows, pid):
    """The one-turn rows of pair `pid`."""
    return [r for r in rows if r["pair_id"] == pid and r["num_turns"] == 1]


def cli(*args: str) -> int:
    return main(list(args))
