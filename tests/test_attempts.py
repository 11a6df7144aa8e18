"""Attempt markers (`shards.clear_attempts`): a unit's commit reads and lists only its own files.

A unit is rerun after a crash; its earlier attempts' shards (which nothing lists) are found from
the markers `_attempts/<unit>/<attempt>` and the shard names, never by listing the table, so
the work per unit stays the same however many units the table already holds. Tables written
before markers existed get them once, on the driver (`adopt_attempts`).
"""

from __future__ import annotations

import os
import shutil
from typing import ClassVar

import pyarrow as pa
import pytest
from faultfs import LocalFS, install

from acedata import runtime, shards
from acedata.config import StageConfig
from acedata.digest import run_digest
from acedata.stage import RunContext, Stage, UnitResult, WorkUnit

ROWS = pa.schema([("key", pa.string()), ("value", pa.int64())])


class CountingFS(LocalFS):
    """The local disk, counting directory listings and the entries they return."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0
        self.entries = 0

    def get_type_name(self) -> str:
        return "counting"

    def get_file_info_selector(self, selector):
        infos = self.fs.get_file_info(selector)
        self.listings += 1
        self.entries += len(infos)
        return infos


class Rows(Stage):
    """Each unit writes its payload's rows: many small units into one table."""

    kind = "test_attempt_rows"
    Config = StageConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"rows": ROWS}
    n_units = 3

    def plan(self) -> list[WorkUnit]:
        return [WorkUnit(f"u{i:04d}", {"i": i}) for i in range(self.n_units)]

    def process(self, unit: WorkUnit) -> UnitResult:
        i = unit.payload["i"]
        return UnitResult({"rows": pa.table({"key": [unit.id] * 3, "value": [i, i + 1, i + 2]}, ROWS)})


def _stage(out: str, n: int) -> Rows:
    stage = Rows(StageConfig(name="rows"), RunContext(out, os.path.join(out, "rows"), {}))
    stage.n_units = n
    return stage


@pytest.mark.parametrize("committed", [5, 50])
def test_listings_per_unit_do_not_grow_with_committed_units(tmp_path, monkeypatch, committed):
    out = str(tmp_path / "run")
    stage = _stage(out, committed)
    runtime.run_stage(stage, executor="local")
    counting = CountingFS()
    install(monkeypatch, counting)
    unit = WorkUnit("zz-new", {"i": 1000})
    runtime.execute_unit(stage, unit)
    # one listing (the unit's own, empty marker folder) of no entries, whatever the table holds
    assert (counting.listings, counting.entries) == (1, 0)
    # a rerun after a crash lists that unit's one marker, not the table
    w = shards.ShardWriter(stage.ctx.out("rows"), ROWS, unit="zz-crashed", max_rows=2)
    w.write(pa.table({"key": ["a"] * 5, "value": [1, 2, 3, 4, 5]}, ROWS))  # two parts, a third open
    counting.listings = counting.entries = 0
    runtime.execute_unit(stage, WorkUnit("zz-crashed", {"i": 2000}))
    assert (counting.listings, counting.entries) == (1, 1)


def test_crashed_attempts_are_cleared_and_markers_are_hidden(tmp_path):
    out = str(tmp_path / "run")
    stage = _stage(out, 3)
    runtime.run_stage(stage, executor="local")
    table = stage.ctx.out("rows")
    before = run_digest(out)
    committed = sorted(os.listdir(table))
    # an attempt killed mid-way: two renamed parts and the third still under its temporary name
    w = shards.ShardWriter(table, ROWS, unit="u0003", max_rows=2)
    w.write(pa.table({"key": ["a"] * 5, "value": [1, 2, 3, 4, 5]}, ROWS))
    left = sorted(set(os.listdir(table)) - set(committed))
    assert len(left) == 3 and any(n.startswith(".tmp-") for n in left)
    assert os.listdir(os.path.join(table, shards.ATTEMPTS_DIR, "u0003")) == [w._attempt]
    assert run_digest(out) == before  # markers and uncommitted files are not part of the table
    assert shards.list_shards(table) == [os.path.join(table, s["file"]) for s in shards.read_manifest(table)["shards"]]
    shards.clear_attempts(table, "u0003")
    assert sorted(os.listdir(table)) == committed
    assert os.listdir(os.path.join(table, shards.ATTEMPTS_DIR, "u0003")) == []
    # committed units keep their markers (a unit run again without its done-marker clears its
    # committed attempt too); the cleared unit's folder is empty
    assert sorted(os.listdir(os.path.join(table, shards.ATTEMPTS_DIR))) == [
        shards.MARKED, "u0000", "u0001", "u0002", "u0003"]
    assert shards.validate(table) == []


def test_a_table_written_before_markers_gets_them_once(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    stage = _stage(out, 4)
    runtime.run_stage(stage, executor="local")
    table = stage.ctx.out("rows")
    # as the older layout left it: no markers, a crashed attempt at u0002 (not done), u0003 not done
    w = shards.ShardWriter(table, ROWS, unit="u0002", max_rows=2)
    w.write(pa.table({"key": ["a"] * 5, "value": [1, 2, 3, 4, 5]}, ROWS))  # the third part still open
    shutil.rmtree(os.path.join(table, shards.ATTEMPTS_DIR))
    for u in ("u0002", "u0003"):
        os.remove(os.path.join(stage.ctx.stage_dir, runtime.DONE_DIR, f"{u}.json"))
    orphans = [n for n in os.listdir(table) if w._attempt in n]
    assert len(orphans) == 3
    assert shards.adopt_attempts(table, lambda: {"u0000", "u0001"}) == 3  # u0002 twice, u0003 once
    assert shards.adopt_attempts(table, lambda: set()) == 0  # once per table
    runtime.run_stage(_stage(out, 4), executor="local")
    assert not any(w._attempt in n for n in os.listdir(table))
    assert shards.validate(table) == []
    assert shards.count_rows(table) == 12
