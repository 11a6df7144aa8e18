"""`acedata stats` as partial aggregates: exact where the domain is small, the same answer for
any split into partials (in-process or on Ray), documented sketches above the bounds, and a
driver that never reads rows."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from driver_reads import DriverReads
from test_stats import make_rows

from acedata import shards, sketches, stats, stats_partial, storage
from acedata.cli import main
from acedata.schemas import schema_for


@pytest.fixture(scope="module")
def lcu(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ds") / "lcu")
    rows = make_rows(2000, seed=3)
    schema = schema_for("lcu")
    shards.write_table(d, pa.Table.from_pylist(rows, schema), schema, max_rows=300)
    assert len(shards.list_shards(d)) == 7
    return d, rows


def test_nearest_quantile_matches_polars():
    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(1, 60))
        x = rng.integers(0, 12, n) if trial % 2 else np.round(rng.normal(size=n), 1)
        uniq, counts = np.unique(x, return_counts=True)
        items = list(zip(uniq.tolist(), counts.tolist()))
        s = pl.Series(x)
        for q in (0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 0.95, 1.0):
            assert sketches.nearest_quantile(items, q, n) == s.quantile(q, interpolation="nearest"), (n, q)


def _polars_exact(d: str) -> dict:
    """The old single-process answers: exact polars quantiles over whole columns."""
    lf = pl.scan_parquet(shards.list_shards(d))
    cols = {"width": pl.col("width"), "height": pl.col("height"),
            "aspect": pl.col("width").cast(pl.Float64) / pl.col("height").cast(pl.Float64),
            "megapixels": pl.col("width").cast(pl.Float64) * pl.col("height").cast(pl.Float64) / 1e6,
            "chars": pl.col("instruction").str.len_chars()}
    out = {}
    for name, e in cols.items():
        row = lf.select(e.min().cast(pl.Float64).alias("min"), e.max().cast(pl.Float64).alias("max"),
                        e.mean().alias("mean"),
                        *[e.quantile(q, interpolation="nearest").cast(pl.Float64).alias(f"p{round(q * 100)}")
                          for q in stats.QUANTILES]).collect().row(0, named=True)
        out[name] = row
    sc = (lf.select("scores").explode("scores").select(pl.col("scores").struct.unnest()).drop_nulls("name")
          .group_by("name").agg(*[pl.col("value").cast(pl.Float64).quantile(q, interpolation="nearest")
                                  .alias(f"p{round(q * 100)}") for q in (0.05, 0.5, 0.95)],
                                pl.col("value").cast(pl.Float64).min().alias("min"),
                                pl.col("value").cast(pl.Float64).max().alias("max"),
                                pl.col("value").cast(pl.Float64).mean().alias("mean"))
          .collect())
    out["scores"] = {r["name"]: r for r in sc.iter_rows(named=True)}
    out["distinct"] = lf.select(pl.col("instruction").n_unique()).collect().item()
    return out


def test_exact_quantiles_match_polars(lcu):
    d, _ = lcu
    res = stats.compute(d, with_funnel=False)
    exp = _polars_exact(d)
    got = {**{k: res["resolution"][k] for k in ("width", "height", "megapixels")},
           "aspect": res["aspect"]["ratio"], "chars": res["instructions"]["chars"]}
    for name, row in got.items():
        for k, v in exp[name].items():
            if k == "mean":
                assert row[k] == pytest.approx(v, rel=1e-12), (name, k)
            else:
                assert row[k] == v, (name, k)
    for s in res["scores"]:
        e = exp["scores"][s["name"]]
        assert [s[k] for k in ("min", "p5", "p50", "p95", "max")] == [e[k] for k in ("min", "p5", "p50", "p95", "max")]
        assert s["mean"] == pytest.approx(e["mean"], rel=1e-12)
    assert res["instructions"]["distinct"] == exp["distinct"]
    assert res["approximate"] == {}


def _runs(d: str, ray: bool, **kw) -> list[str]:
    n = len(shards.list_shards(d))
    args = dict(with_funnel=False, histograms=True, **kw)
    outs = [stats.compute(d, executor="local", files_per_partial=k, **args) for k in (1, 3, n)]
    if ray:
        outs += [stats.compute(d, executor="ray", files_per_partial=k, **args) for k in (1, 2)]
    return [json.dumps(o, sort_keys=True) for o in outs]


def stats_json_of(d: str) -> str:
    return json.dumps(stats.compute(d, with_funnel=False, histograms=False), default=str)


def test_same_answer_for_any_partials(lcu, ray_local, capsys):
    d, _ = lcu
    for kw in ({}, {"where": ["task=repainting,controllable", "num_turns>=2"], "by": ["task", "num_turns"]}):
        outs = _runs(d, ray=True, **kw)
        assert all(o == outs[0] for o in outs[1:]), kw
    # the command on either executor
    for executor in ("local", "ray"):
        assert main(["stats", d, "--json", "--no-funnel", "--executor", executor]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got == json.loads(stats_json_of(d)), executor
    # partials folded in another order: the same merged answer
    files = shards.list_shards(d)
    parts = [stats_partial.partial_of([{"file": f}], ["task"], []) for f in files]
    a, b = stats_partial.empty(), stats_partial.empty()
    for p in parts:
        a = stats_partial.merge(a, p)
    parts = [stats_partial.partial_of([{"file": f}], ["task"], []) for f in reversed(files)]
    for p in parts:
        b = stats_partial.merge(b, p)
    assert json.dumps(stats.summarise(a, ["task"], True)) == json.dumps(stats.summarise(b, ["task"], True))


def test_sketches_above_the_bounds(lcu, monkeypatch):
    """Bounds shrunk so scores and instructions switch to sketches: still one answer for any
    split, flagged under `approximate`, and within the stated error."""
    d, _ = lcu
    monkeypatch.setattr(stats_partial, "EXACT_SCORE_VALUES", 40)
    monkeypatch.setattr(stats_partial, "EXACT_DISTINCT_MAX", 100)
    outs = _runs(d, ray=False)
    assert all(o == outs[0] for o in outs[1:])
    res = json.loads(outs[0])
    exp = _polars_exact(d)
    assert set(res["approximate"]) == {"instructions.distinct", "scores.ssim", "scores.clip_dir"}
    assert res["approximate"]["scores.ssim"]["relative_error"] == sketches.RELATIVE_ERROR
    assert abs(res["instructions"]["distinct"] - exp["distinct"]) <= 4 * sketches.HLL_STD_ERROR * exp["distinct"]
    for s in res["scores"]:
        e = exp["scores"][s["name"]]
        assert s["min"] == e["min"] and s["max"] == e["max"] and s["mean"] == pytest.approx(e["mean"], rel=1e-12)
        for k in ("p5", "p50", "p95"):
            assert abs(s[k] - e[k]) <= sketches.RELATIVE_ERROR * abs(e[k]) + 1e-12, (s["name"], k)
        assert sum(b["count"] for b in res["histograms"]["scores"][s["name"]]) == s["count"]
    text = stats.render({**res, "dataset": d, "where": [], "by": ["task", "subtask"]})
    assert "approximate" in text and "HyperLogLog" in text


def test_exact_sums_do_not_depend_on_grouping():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000) * 10.0 ** rng.integers(-8, 8, 5000)
    c = np.ones(len(x), np.int64)
    whole = sketches.parts_total(sketches.sum_parts(x, c))
    acc: dict = {}
    for k in range(0, len(x), 7):
        acc = sketches.merge_sum_parts(acc, sketches.sum_parts(x[k:k + 7], c[k:k + 7]))
    assert sketches.parts_total(acc) == whole
    from fractions import Fraction
    assert whole == sum(Fraction(float(v)) for v in x)


def test_driver_reads_no_rows(lcu, monkeypatch):
    """Outside the partial task the stats driver reads footers only: Parquet row reads raise."""
    d, rows = lcu
    reads = DriverReads(monkeypatch, methods=())
    monkeypatch.setattr(stats, "_partial_task", reads.as_worker(stats._partial_task))
    reads.forbid_on_driver(monkeypatch, [(pl, "scan_parquet"), (pl, "read_parquet"), (pl, "scan_pyarrow_dataset"),
                                         (storage, "read_parquet"), (pq, "read_table")])
    with reads.on_driver():
        res = stats.compute(d, with_funnel=False, where=["task!=natural_edit"])
    assert res["rows"] == sum(1 for r in rows if r["task"] != "natural_edit") and reads.rows == 0


def test_s3(lcu, s3_server):
    """The same table on S3, read through `storage` in one and in several partials: the answer is
    the local folder's. (Ray workers started before the moto server would not see its endpoint,
    so the Ray executor is checked on the local folder in `test_same_answer_for_any_partials`.)"""
    d, rows = lcu
    uri = f"s3://{s3_server.bucket}/stats-partials/lcu"
    schema = schema_for("lcu")
    shards.write_table(uri, pa.Table.from_pylist(rows, schema), schema, max_rows=300)
    want = stats.compute(d, with_funnel=False)
    for per in (1, 3):
        got = stats.compute(uri, with_funnel=False, executor="local", files_per_partial=per)
        assert {k: v for k, v in got.items() if k not in ("dataset", "tables")} == \
            {k: v for k, v in want.items() if k not in ("dataset", "tables")}, per


def test_large_shards_split_by_row_groups(lcu, tmp_path, monkeypatch):
    """Shards larger than a partial are read as ranges of row groups (a plain folder: footers give
    the sizes); the answer is the one of whole shards, `--where` on a column no query reads included."""
    d, rows = lcu
    schema = schema_for("lcu")
    folder = tmp_path / "plain"
    folder.mkdir()
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema), str(folder / f"part-{k}.parquet"), row_group_size=100)
    monkeypatch.setattr(stats, "LOCAL_PARTIAL_ROWS", 250)
    groups = stats._groups(stats.resolve_dataset(str(folder)), 250)
    assert len(groups) == 10 and all("rows" in p for g in groups for p in g)  # 2 row groups each
    for where in ([], ["sample_id!=s7,s8"]):
        got = stats.compute(str(folder), with_funnel=False, where=where)
        want = stats.compute(d, with_funnel=False, where=where, files_per_partial=100)
        assert {k: v for k, v in got.items() if k not in ("dataset", "tables")} == \
            {k: v for k, v in want.items() if k not in ("dataset", "tables")}
    assert got["rows"] == len(rows) - 2


@pytest.mark.parametrize("exact", [True, False])
def test_score_histograms_with_infinities(tmp_path, monkeypatch, exact):
    """A score with -inf/+inf and finite values: histograms over the finite range, the infinities in
    the edge bins (NaN left out); a score with no finite values: no histogram. Plots are written."""
    from acedata import plots

    if not exact:
        monkeypatch.setattr(stats_partial, "EXACT_SCORE_VALUES", 4)
    rows = make_rows(120, seed=5)
    special = [-np.inf, np.inf, np.nan]
    for i, r in enumerate(rows):
        ssim = special[i % 3] if i % 4 == 0 else (i % 37) / 10.0
        r["scores"] = [{"name": "ssim", "value": float(ssim)}, {"name": "clip_dir", "value": float(special[i % 2])}]
    d = str(tmp_path / "lcu")
    schema = schema_for("lcu")
    shards.write_table(d, pa.Table.from_pylist(rows, schema), schema, max_rows=50)
    res = stats.compute(d, executor="local", with_funnel=False, histograms=True)
    assert ("scores.ssim" in res["approximate"]) is not exact
    h = res["histograms"]["scores"]
    ssim = [r["scores"][0]["value"] for r in rows]
    assert sum(b["count"] for b in h["ssim"]) == sum(not np.isnan(v) for v in ssim)
    finite = [v for v in ssim if np.isfinite(v)]
    # the edges: the finite min/max as stored (float32), or as sketched (within its relative error)
    rel = 1e-6 if exact else sketches.RELATIVE_ERROR
    assert h["ssim"][0]["lo"] == pytest.approx(min(finite), rel=rel, abs=1e-12)
    assert h["ssim"][-1]["hi"] == pytest.approx(max(finite), rel=rel)
    assert h["ssim"][0]["count"] >= sum(v == -np.inf for v in ssim)
    assert h["ssim"][-1]["count"] >= sum(v == np.inf for v in ssim)
    assert h["clip_dir"] == []
    assert plots.write_plots({**res, "dataset": d, "where": [], "by": ["task"]}, str(tmp_path / "plots"))
