"""The cost model's arithmetic on a small hand-made measurements file, and the command's errors."""

from __future__ import annotations

import json
import os

import pytest

from acedata import costmodel
from acedata.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "pipelines", "demo.yaml")


def _st(cpu: float, **kw) -> dict:
    return {"cpu_s": cpu, "wall_s": cpu, "driver_peak_mib": 100, "worker_peak_mib": 100, **kw}


MEASURED = {"host": "testhost", "runs": [
    {"kind": "images", "n": 1000, "stages": {
        "ingest": _st(10, table_bytes={"images": 200_000_000, "quarantine": 0}),
        "embed": _st(20), "cluster": _st(1), "pair": _st(1, counts={"pairs": 5}),
        "synthesize": _st(100, counts={"pairs": 2000}), "instruct": _st(3),
        "assemble": _st(5, counts={"lcu": 1800, "lcu_validation": 200}), "stats": _st(1)}},
    {"kind": "meta", "n": 10_000, "stages": {
        "cluster": _st(5), "pair": _st(11, counts={"pairs": 7000}), "stats": _st(2)}},
    {"kind": "meta", "n": 100_000, "stages": {
        "cluster": _st(50), "pair": _st(100, counts={"pairs": 70_000}), "stats": _st(20)}},
]}


def test_price_by_hand():
    stages = ["ingest", "embed", "cluster", "pair", "synthesize", "instruct", "assemble"]
    model = costmodel.GpuModel("embed", "test", 1e12, "image", 0.5, "")
    cluster = costmodel.Cluster(nodes=2, cores_per_node=4, gpus_per_node=1, gpu="H100", utilisation=1.0)
    rows, per = costmodel.price(stages, 1_000_000, MEASURED, cluster, [model])
    by = {r.stage: r for r in rows}
    assert [r.stage for r in rows] == [*stages, "stats"]
    assert per == {"natural_pair": 0.7, "synthetic_pair": 2.0, "lcu_rows": 2.0, "image": 1.0}
    # ingest: 10 CPU s per 1000 images -> 10,000 s per 1M = 2.7778 core-h; 8 cores -> 0.3472 h
    assert by["ingest"].cpu_core_h == pytest.approx(10_000 / 3600)
    assert by["ingest"].bytes == 200_000_000_000
    assert by["ingest"].wall_h == pytest.approx(10_000 / 3600 / 8)
    # mining and stats: the marginal cost between the metadata runs, (100 - 11) s / 90,000 images
    assert by["pair"].cpu_core_h == pytest.approx(89 / 90_000 * 1e6 / 3600)
    assert by["pair"].source == "meta slope n=10,000..100,000"
    assert by["stats"].cpu_core_h == pytest.approx(18 / 90_000 * 1e6 / 3600)
    assert by["ingest"].source == "images n=1,000"  # one size only: CPU per item there
    # embed GPU: 1e12 FLOP x 1e6 images / (989e12 x 0.5) = 2022.2 s = 0.5617 GPU-h -> 0.2809 h on 2 GPUs;
    # its CPU side (20 s per 1000 -> 20,000 s / 8 cores = 0.694 h) is the longer, so it sets the wall time
    assert by["embed"].gpu_h == pytest.approx(0.561735, rel=1e-4)
    assert by["embed"].wall_h == pytest.approx(max(20_000 / 3600 / 8, 0.561735 / 2), rel=1e-4)
    assert by["synthesize"].gpu_h == 0


def test_check_predicts_larger_from_smaller():
    (c,) = costmodel.check(MEASURED)  # two metadata sizes: the linear check only
    assert (c["kind"], c["model"], c["from_n"], c["to_n"]) == ("meta", "linear", [10_000], 100_000)
    assert c["stages"]["pair"]["predicted_cpu_s"] == pytest.approx(110)
    assert c["stages"]["pair"]["error"] == pytest.approx(0.10)
    assert c["error"] == pytest.approx(180 / 170 - 1)
    # a third size: the affine check fits fixed + per-item cost on the two smaller runs
    three = {"runs": [*MEASURED["runs"], {"kind": "meta", "n": 1_000_000, "stages": {"pair": _st(980)}}]}
    lin, aff = costmodel.check(three)
    assert aff["model"] == "affine" and aff["from_n"] == [10_000, 100_000]
    assert aff["stages"]["pair"]["predicted_cpu_s"] == pytest.approx(100 + 89 / 90_000 * 900_000)
    assert lin["stages"]["pair"]["predicted_cpu_s"] == pytest.approx(1000)


def test_command_prints_table(tmp_path, capsys):
    m = tmp_path / "m.json"
    m.write_text(json.dumps(MEASURED))
    assert main(["plan-cost", DEMO, "--images", "1e9", "--measurements", str(m), "--check"]) == 0
    out = capsys.readouterr().out
    assert "1,000,000,000 images on 64 nodes x 32 cores + 8 H100" in out
    assert "| **total** |" in out and "check (meta, linear)" in out


def test_help_and_bad_input_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan-cost", "--help"])
    assert e.value.code == 0
    assert "--images" in capsys.readouterr().out
    m = tmp_path / "m.json"
    m.write_text(json.dumps(MEASURED))
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("name: x\nstages:\n  - stage: nosuchstage\n")
    cases = [
        [str(tmp_path / "missing.yaml"), "--images", "10"],
        [str(bad_spec), "--images", "10"],
        [DEMO, "--images", "lots"],
        [DEMO, "--images", "10", "--cluster", "64by32"],
        [DEMO, "--images", "10", "--measurements", str(tmp_path / "none.json")],
    ]
    for argv in cases:
        assert main(["plan-cost", *argv, "--measurements", str(m)] if "--measurements" not in argv
                    else ["plan-cost", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("acedata plan-cost: error:") and "\n" not in err, err


def test_shipped_measurements_price_the_demo(capsys):
    # the measurements committed with the package make the command work out of the box
    assert main(["plan-cost", DEMO, "--images", "1e9", "--check"]) == 0
    out = capsys.readouterr().out
    assert "| synthesize |" in out and "check (meta" in out
