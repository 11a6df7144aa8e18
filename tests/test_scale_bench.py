"""bench/scale.py's parts: the per-stage sampler on real child processes, the generated inputs,
and its result JSON as `acedata plan-cost` reads it (the check's predicted/measured arithmetic).
No timing asserts: CPU seconds are only required to be positive."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from acedata import costmodel
from acedata.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

from _scale import data as scale_data
from _scale.measure import measure

SPEC = os.path.join(BENCH, "scale.yaml")

# a child that reports its own stage the way `acedata run` does (RUN/_status.json)
STAGED = """
import json, os, sys, time
status = sys.argv[1]
def stage(name):
    with open(status + ".tmp", "w") as f:
        json.dump({"stage": name}, f)
    os.replace(status + ".tmp", status)
stage("burn")
t = time.process_time()
x = 0
while time.process_time() - t < 0.6:
    x += 1
stage("hold")
block = bytearray(200 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(0.8)
"""


def test_measure_splits_cpu_and_memory_by_stage(tmp_path):
    status, progress = str(tmp_path / "_status.json"), str(tmp_path / "progress.json")
    m = measure([sys.executable, "-c", STAGED, status], dict(os.environ), str(tmp_path / "log"), status,
                interval=0.05, progress=progress, progress_every=0.2)
    assert m["rc"] == 0 and "over_rss_limit" not in m
    burn, hold = m["stages"]["burn"], m["stages"]["hold"]
    assert burn["cpu_s"] > 0 and burn["sampled_wall_s"] > 0
    assert hold["driver_peak_mib"] >= 190 > burn["driver_peak_mib"]  # the child is the "driver" here
    with open(progress) as f:
        assert json.load(f)["stages"]["burn"]["cpu_s"] > 0


def test_rss_limit_stops_the_tree(tmp_path):
    hog = "b = bytearray(400 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(60)"
    m = measure([sys.executable, "-c", hog], dict(os.environ), str(tmp_path / "log"), interval=0.05,
                rss_limit_mib=150)
    assert m["rc"] != 0 and m["over_rss_limit"]["tree_mib"] > 150
    assert m["wall_s"] < 60


def test_photo_variants_distinct_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(scale_data, "N_BASES", 2)
    monkeypatch.setattr(scale_data, "_VARIANT_BASES", None)
    photos = scale_data.photo_cache(str(tmp_path / "cache"), 5, procs=1)
    assert photos.endswith(scale_data.CACHE_VERSION)
    pixels = []
    for i in range(5):
        with open(os.path.join(photos, scale_data.photo_name(i)), "rb") as f:
            raw = f.read()
        assert raw == scale_data.variant(i)  # deterministic
        im = Image.open(io.BytesIO(raw))
        assert im.format == "JPEG" and 400 <= max(im.size) <= 1000
        pixels.append(np.asarray(im).tobytes())
    assert len(set(pixels)) == 5  # photos 0, 2, 4 share a base; their pixels still differ
    dest = scale_data.corpus(photos, 5, str(tmp_path / "corpus"))
    linked = os.path.join(dest, scale_data.photo_name(3))
    assert os.path.samefile(linked, os.path.join(photos, scale_data.photo_name(3)))
    assert scale_data.corpus_bytes(photos, 5) == sum(len(scale_data.variant(i)) for i in range(5))


def test_embeddings_written_shard_by_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(scale_data, "EMB_BLOCK", 256)
    path = scale_data.embeddings(str(tmp_path / "emb"), 1000, d=16, per_cluster=100)
    shards = sorted(os.listdir(path))
    assert len(shards) == 4
    t = pq.read_table(path)
    assert t.num_rows == 1000 and t.column("image_id")[999].as_py() == "img000000999"
    v = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(1000, 16)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-2)


def _run(n: int, per_item: dict[str, float], fixed: float = 5.0) -> dict:
    """A run as bench/scale.py records it: cpu_s = fixed + per_item * n per stage."""
    return {"kind": "images", "n": n, "wall_s": 1.0, "cpu_total_s": 1.0, "startup": {"cpu_s": 9.0}, "stages": {
        s: {"cpu_s": fixed + c * n, "wall_s": 1.0, "driver_peak_mib": 300, "worker_peak_mib": 900,
            "counts": {"pairs": n} if s == "synthesize" else {}, "table_bytes": {"images": 1000 * n}}
        for s, c in per_item.items()}}


def test_harness_json_prices_and_checks(tmp_path, capsys):
    from _scale import results

    per = {"ingest": 0.02, "synthesize": 0.5}
    out = str(tmp_path / "scale.json")
    machine = {"host": "t", "started": 1.0}
    body = results.merge(out, [_run(100, per), _run(1000, per)], machine)
    big = _run(10_000, per)
    big["stages"]["synthesize"]["cpu_s"] *= 1.25  # measured 25% above the affine prediction
    stopped = {**_run(100_000, per), "incomplete": "rc -9"}
    with open(out, "w") as f:
        json.dump(body, f)
    body = results.merge(out, [big, stopped], {**machine, "started": 2.0})
    assert [r["n"] for r in body["runs"]] == [100, 1000, 10_000] and body["incomplete"][0]["n"] == 100_000
    with open(out, "w") as f:
        json.dump(body, f)

    assert main(["plan-cost", SPEC, "--images", "1e9", "--measurements", out, "--check", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ingest = next(r for r in res["rows"] if r["stage"] == "ingest")
    assert ingest["cpu_core_h"] == pytest.approx(0.02 * 1e9 / 3600)  # the slope: fixed cost dropped
    lin, aff = res["check"]
    assert (aff["model"], aff["from_n"], aff["to_n"]) == ("affine", [100, 1000], 10_000)
    syn = aff["stages"]["synthesize"]
    assert syn["predicted_cpu_s"] == pytest.approx(5 + 0.5 * 10_000)
    assert syn["ratio"] == pytest.approx(1 / 1.25) and syn["ratio"] == pytest.approx(
        syn["predicted_cpu_s"] / syn["measured_cpu_s"])
    assert aff["stages"]["ingest"]["ratio"] == pytest.approx(1.0)
    tp = (5 + 0.5 * 10_000) + (5 + 0.02 * 10_000)
    assert aff["ratio"] == pytest.approx(tp / ((5 + 0.5 * 10_000) * 1.25 + 5 + 0.02 * 10_000))
    # linear: the 1000-image run's cost per item times 10,000
    assert lin["stages"]["ingest"]["predicted_cpu_s"] == pytest.approx((5 + 20) / 1000 * 10_000)
    # the check at a chosen size, and the harness's own report of a result file
    (only,) = [c for c in costmodel.check(body, to_n={"images": 1000}) if c["model"] == "linear"]
    assert only["to_n"] == 1000 and only["from_n"] == [100]
    assert main(["plan-cost", SPEC, "--images", "1e9", "--measurements", out, "--check-at", "images=1000",
                 "--json"]) == 0
    assert [c["to_n"] for c in json.loads(capsys.readouterr().out)["check"]] == [1000]
    assert main(["plan-cost", SPEC, "--images", "1e9", "--measurements", out, "--check-at", "photos=5"]) == 2
    assert "--check-at" in capsys.readouterr().err
    rep = subprocess.run([sys.executable, os.path.join(BENCH, "scale.py"), "--report", out], check=False,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "predicted/measured 0.80" in rep.stdout and "1.24!" in rep.stdout  # flagged: outside 0.8-1.2
    assert "MISSES" not in rep.stdout.split("check (images, affine)")[1].split("\n")[0]


@pytest.mark.slow
def test_harness_run_feeds_plan_cost(tmp_path, capsys):
    """The real harness at two small metadata sizes (assemble + stats on Ray), then plan-cost on its JSON."""
    out = str(tmp_path / "scale.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "model")])}
    r = subprocess.run([sys.executable, os.path.join(BENCH, "scale.py"), "--only", "meta", "--meta-sizes",
                        "1000,2000", "--pair-max", "0", "--out", out, "--work", str(tmp_path / "w")],
                       check=False, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with open(out) as f:
        body = json.load(f)
    assert [x["n"] for x in body["runs"]] == [1000, 2000]
    assert {"assemble", "stats"} <= set(body["runs"][1]["stages"])
    assert main(["plan-cost", SPEC, "--images", "1e6", "--measurements", out, "--check", "--json"]) == 0
    (c,) = json.loads(capsys.readouterr().out)["check"]
    meas = body["runs"][1]["stages"]["assemble"]["cpu_s"]
    pred = body["runs"][0]["stages"]["assemble"]["cpu_s"] * 2
    assert c["stages"]["assemble"]["ratio"] == pytest.approx(pred / meas)


def test_salvage_prices_the_finished_share(tmp_path, capsys):
    from _scale import results

    work = tmp_path / "w"
    (work / "images-500").mkdir(parents=True)
    sampled = {"_startup": {"cpu_s": 9.0}, "ingest": {"cpu_s": 5.0, "sampled_wall_s": 3.0},
               "synthesize": {"cpu_s": 40.0, "sampled_wall_s": 30.0}}
    (work / "images-500.progress.json").write_text(json.dumps({"elapsed_s": 60, "stage": "synthesize",
                                                              "stages": sampled}))
    (work / "images-500" / "_status.json").write_text(json.dumps({"stages": [
        {"name": "ingest", "state": "succeeded", "units": 8, "units_done": 8, "seconds": 3.5, "counts": {"images": 500}},
        {"name": "synthesize", "state": "running", "units": 32, "units_done": 8}]}))
    out = str(tmp_path / "r.json")
    results.salvage(str(work), out)
    with open(out) as f:
        (r,) = json.load(f)["incomplete"]
    assert r["n"] == 500 and "synthesize" in r["incomplete"]
    assert r["stages"]["ingest"]["wall_s"] == 3.5 and "done_fraction" not in r["stages"]["ingest"]
    assert r["stages"]["synthesize"]["done_fraction"] == 0.25
    assert r["stages"]["synthesize"]["cpu_s_per_item_done"] == pytest.approx(40 / (500 * 0.25))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("synthesize"))
    assert "320.000" in line and "over 25% of units (upper bound" in line
    # the check of an unfinished run: its finished stages, and the running one over its finished share
    per = {"ingest": 0.01, "synthesize": 0.3}
    body = results.merge(out, [_run(100, per), _run(200, per)], {"host": "t", "started": 3.0})
    (c,) = costmodel.check_incomplete(body)
    assert (c["model"], c["from_n"], c["to_n"], c["incomplete"]) == ("affine", [100, 200], 500, True)
    assert c["stages"]["ingest"]["predicted_cpu_s"] == pytest.approx(5 + 0.01 * 500)
    assert c["stages"]["ingest"]["ratio"] == pytest.approx(10 / 5.0)
    syn = c["stages"]["synthesize"]
    assert syn["measured_cpu_s"] == pytest.approx(40 / 0.25) and syn["measured_share"] == 0.25
    assert syn["ratio"] == pytest.approx((5 + 0.3 * 500) / 160)
    assert c["ratio"] == pytest.approx(10 / 5.0)  # the total: finished stages only
