"""A worker killed at each point of a unit's commit leaves output that a rerun makes exact.

The cluster tests kill real Ray workers at whatever moment they are caught; these pin the
worst moments down deterministically: a worker process (forked, like a Ray worker) dies
with `os._exit` part-way through writing a shard, after its shards are renamed but before
the unit's fragment, and after the fragment but before the done-marker. Each time the
stage is then run again (as a retry or a resumed job would) and must hold exactly the
rows of a clean run, pass `validate`, and keep the other units' files untouched.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from unit_kill import KILL_POINTS, color_stage, die_in_unit, ingested_images, stage_rows

from acedata import runtime, shards


@pytest.fixture(scope="module")
def images_table(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("recovery")
    return ingested_images(str(d / "corpus"), str(d / "run"), seed=1)


@pytest.mark.parametrize("where", KILL_POINTS)
def test_unit_killed_while_committing_is_redone_exactly(images_table, tmp_path, where):
    clean = color_stage(images_table, str(tmp_path / "clean"))
    runtime.run_stage(clean, executor="local")
    expected = stage_rows(clean)

    out = str(tmp_path / "run")
    stage = color_stage(images_table, out)
    units = stage.plan()
    assert len(units) >= 3
    for u in units[:1]:  # one unit committed before the crash: it must be kept as it is
        runtime.execute_unit(stage, u)
    kept = shards.unit_fragment(stage.ctx.out("embeddings"), units[0].id)

    child = multiprocessing.get_context("fork").Process(target=die_in_unit, args=(images_table, out, 1, where))
    child.start()
    child.join(60)
    assert child.exitcode == 137, "the worker did not die where it was meant to"
    assert units[1].id not in runtime.done_units(out + "/stats")
    left = os.listdir(stage.ctx.out("embeddings"))
    if where == "mid_shard":
        assert any(n.startswith(".tmp-") for n in left)  # debris a reader never lists
    else:
        assert any(n.startswith(units[1].id) for n in left)  # a half-committed unit's shard

    summary = runtime.run_stage(color_stage(images_table, out), executor="local")
    assert stage_rows(stage) == expected
    assert summary["counts"]["embeddings"] == len(expected)
    assert shards.validate(stage.ctx.out("embeddings")) == []
    assert shards.unit_fragment(stage.ctx.out("embeddings"), units[0].id) == kept
