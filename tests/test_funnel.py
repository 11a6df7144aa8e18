"""A run's funnel (`acedata stats RUN`): the numbers of the former whole-table driver queries,
from per-shard partials and the instruct stage's summary, with a driver that reads no rows."""

from __future__ import annotations

import json
import os

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from driver_reads import DriverReads

from acedata import funnel_counts, run_tables, shards, stats, stats_partial, storage
from acedata.pipeline import _write_marker
from acedata.schemas import INSTRUCTIONS, PAIRS, QUARANTINE
from acedata.stats_render import render


def _pair(pid: str, task: str) -> dict:
    return {"pair_id": pid, "source_id": "s" + pid, "target_id": "t" + pid, "task": task, "subtask": "x",
            "provenance": "{}"}


def _instr(pid: str, variant: int) -> dict:
    return {"pair_id": pid, "variant": variant, "instruction": f"do {pid} {variant}", "method": "template"}


def _write(run: str, stage: str, table: str, rows: list[dict], schema: pa.Schema, summary: dict | None = None) -> None:
    shards.write_table(os.path.join(run, stage, table), pa.Table.from_pylist(rows, schema), schema, max_rows=7)
    _write_marker(os.path.join(run, stage), "test", summary or {"stage": stage, "counts": {}})


def _instr_rows(prefix: str, pairs: int, images: int) -> list[dict]:
    rows = [_instr(f"{prefix}{i}", v) for i in range(pairs) for v in range(1 + i % 3)]
    rows += [_instr(f"t2i:{prefix}{i}", v) for i in range(images) for v in range(1 + i % 2)]
    return rows


@pytest.fixture()
def run(tmp_path):
    """A run of hand-made tables, each in shards of 7 rows: ingest summary, quarantine rows of
    several stages and reasons (ties included), mined and synthesized pairs, and instructions of
    pairs (1-3 variants, a pair's rows across shards) and t2i captions."""
    d = str(tmp_path / "run")
    _write_marker(os.path.join(d, "ingest"), "test", {"stage": "ingest", "counts": {"inputs": 50, "images": 40}})
    q = [{"source_uri": f"u{i}", "stage": ["ingest", "synth", "assemble"][i % 3], "reason": ["a", "b", "c", "d"][i % 4]}
         for i in range(40)]
    q += [{"source_uri": "v", "stage": "synth", "reason": "e"}] * 3
    _write(d, "ingest", "quarantine", q, QUARANTINE, {"stage": "ingest", "counts": {"inputs": 50, "images": 40}})
    _write(d, "pair", "pairs", [_pair(f"m{i}", "natural_edit") for i in range(23)], PAIRS)
    _write(d, "synth", "pairs", [_pair(f"s{i}", ["repainting", "controllable"][i % 2]) for i in range(31)], PAIRS)
    _write(d, "label", "instructions", _instr_rows("m", 20, 9), INSTRUCTIONS, {"stage": "instruct", "counts": {}})
    return d


def _reference(run: str) -> tuple[dict, dict]:
    """The former funnel queries: whole tables scanned on the driver."""
    t = run_tables.run_tables(run)
    files = {k: [f for p in t.get(k, []) for f in shards.list_shards(p)] for k in ("quarantine", "pairs", "instructions")}
    q = storage.scan_parquet(files["quarantine"]).group_by("stage", "reason").len("count").collect()
    p = storage.scan_parquet(files["pairs"]).select((pl.col("task") == "natural_edit").sum().alias("paired"),
                                                   (pl.col("task") != "natural_edit").sum().alias("synthesized"))
    i = storage.scan_parquet(files["instructions"]).select(pl.col("pair_id")).unique().select(
        (~pl.col("pair_id").str.starts_with("t2i:")).sum().alias("labelled"),
        pl.col("pair_id").str.starts_with("t2i:").sum().alias("captioned"))
    steps = {**p.collect().row(0, named=True), **i.collect().row(0, named=True), "quarantined": q["count"].sum()}
    return steps, {(s, r): c for s, r, c in q.iter_rows()}


def _steps(f: dict) -> dict:
    return {s["step"]: s["count"] for s in f["steps"]}


def _check(run: str, f: dict) -> None:
    want, q = _reference(run)
    got = _steps(f)
    assert {k: got[k] for k in want} == want
    assert {(x["stage"], x["reason"]): x["count"] for x in f["quarantined"]} == q
    order = [(x["stage"], -x["count"]) for x in f["quarantined"]]
    assert order == sorted(order)  # by stage, most rows first


def test_same_numbers_as_whole_table_queries(run):
    f = run_tables.funnel(run)
    _check(run, f)
    assert _steps(f)["labelled"] == 20 and _steps(f)["captioned"] == 9 and f["approximate"] == {}
    assert _steps(f)["inputs"] == 50 and _steps(f)["quarantined"] == 43


def test_instruct_summary_counts_read_no_instruction_row(run, monkeypatch):
    """The instruct stage's summed unit counts give labelled pairs and captioned images."""
    counts = {"pairs_in": 21, "pairs_with_instruction": 20, "t2i_images": 11, "t2i_no_caption": 2}
    _write_marker(os.path.join(run, "label"), "test", {"stage": "instruct", "counts": counts})
    kinds = []
    real = funnel_counts._shard_task
    monkeypatch.setattr(funnel_counts, "_shard_task", lambda p: kinds.append(p["kind"]) or real(p))
    f = run_tables.funnel(run)
    _check(run, f)
    assert "instructions" not in kinds and {"quarantine", "pairs"} <= set(kinds)


def test_several_instructions_tables_count_distinct_pairs(run, monkeypatch):
    """A second instruct stage relabelling some of the same pairs: the union's distinct ids, exact
    up to EXACT_DISTINCT_MAX hashes and then a HyperLogLog, named under `approximate`."""
    _write(run, "relabel", "instructions", _instr_rows("m", 25, 4) + _instr_rows("x", 5, 3), INSTRUCTIONS,
           {"stage": "instruct", "counts": {"pairs_with_instruction": 30, "t2i_images": 7}})
    f = run_tables.funnel(run)
    _check(run, f)
    assert _steps(f)["labelled"] == 30 and _steps(f)["captioned"] == 12 and f["approximate"] == {}
    monkeypatch.setattr(stats_partial, "EXACT_DISTINCT_MAX", 4)
    f = run_tables.funnel(run)
    assert set(f["approximate"]) == {"labelled", "captioned"}
    assert f["approximate"]["labelled"]["method"] == "hyperloglog"
    assert _steps(f)["labelled"] == pytest.approx(30, abs=1) and _steps(f)["captioned"] == pytest.approx(12, abs=1)
    assert "approximate: labelled, captioned (HyperLogLog" in render({"dataset": run, "where": [], "rows": 0, "funnel": f})


def test_driver_reads_no_rows_for_the_funnel(run, monkeypatch):
    reads = DriverReads(monkeypatch, methods=())
    want = run_tables.funnel(run)
    monkeypatch.setattr(funnel_counts, "_shard_task", reads.as_worker(funnel_counts._shard_task))
    reads.forbid_on_driver(monkeypatch, [(pl, "scan_parquet"), (pl, "read_parquet"), (pl, "scan_pyarrow_dataset"),
                                         (storage, "read_parquet"), (storage, "scan_parquet"), (pq, "read_table")])
    with reads.on_driver():
        got = run_tables.funnel(run)
    assert got == want and reads.rows == 0


def test_funnel_on_ray_is_the_same(run, ray_local):
    want = run_tables.funnel(run)
    assert run_tables.funnel(run, executor="ray") == want
    lcu = stats.compute(run, executor="ray")  # a run without LCU tables: the funnel alone
    assert json.dumps(lcu["funnel"], sort_keys=True) == json.dumps(want, sort_keys=True)
