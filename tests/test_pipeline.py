"""Pipeline specs and runs: validation errors name the key; reruns resume."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from acedata import runtime, shards
from acedata.cli import main
from acedata.config import StageConfig
from acedata.errors import UserError
from acedata.pipeline import parse_spec, run_stages
from acedata.schemas import QUARANTINE
from acedata.stage import Stage, UnitResult, WorkUnit, register

CALLS: list[str] = []


class CountingConfig(StageConfig):
    units: int = 5
    fail_on: str | None = None


@register
class Counting(Stage):
    """A test stage: one quarantine-shaped row per unit; can fail on one unit."""

    kind = "test_counting"
    Config = CountingConfig
    outputs = {"quarantine": QUARANTINE}

    def plan(self):
        return [WorkUnit(f"u{i}", {"i": i}) for i in range(self.config.units)]

    def process(self, unit: WorkUnit) -> UnitResult:
        CALLS.append(unit.id)
        if unit.id == self.config.fail_on:
            raise RuntimeError("worker died")
        row = {"source_uri": unit.id, "stage": "test", "reason": "ok"}
        return UnitResult({"quarantine": pa.Table.from_pylist([row], QUARANTINE)})


def test_spec_errors_name_the_key():
    with pytest.raises(UserError, match=r"demo.yaml.stages.0.sourcez: unknown key"):
        parse_spec({"name": "x", "stages": [{"stage": "ingest", "sources": ["a"], "sourcez": 1}]}, "demo.yaml", {})
    with pytest.raises(UserError, match="'nope' is not a stage"):
        parse_spec({"name": "x", "stages": [{"stage": "nope"}]}, "demo.yaml", {})
    with pytest.raises(UserError, match="unknown key"):
        parse_spec({"name": "x", "colour": 1, "stages": [{"stage": "ingest", "sources": ["a"]}]}, "s", {})
    with pytest.raises(UserError, match=r"\$\{corpus\}"):
        parse_spec({"name": "x", "stages": [{"stage": "ingest", "sources": ["${corpus}"]}]}, "s", {"out": "/o"})
    _, cfgs = parse_spec({"name": "x", "stages": [{"stage": "ingest", "sources": ["${out}/c"]}]}, "s", {"out": "/o"})
    assert cfgs[0].sources == ["/o/c"]


def test_interrupted_stage_resumes_committed_units(tmp_path):
    out = str(tmp_path)
    CALLS.clear()
    with pytest.raises(RuntimeError, match="worker died"):
        run_stages([CountingConfig(name="count", fail_on="u3")], out, executor="local")
    assert CALLS == ["u0", "u1", "u2", "u3"]
    assert set(runtime.done_units(os.path.join(out, "count"))) == {"u0", "u1", "u2"}

    CALLS.clear()
    # Same stage config except the failure switch -> a different hash -> start clean.
    run = run_stages([CountingConfig(name="count")], out, executor="local")
    assert CALLS == [f"u{i}" for i in range(5)]
    assert run["stages"][0]["counts"]["quarantine"] == 5


def test_rerun_same_config_keeps_committed_units_and_skips_done_stage(tmp_path):
    out = str(tmp_path)
    cfg = CountingConfig(name="count", units=4)
    stage_dir = os.path.join(out, "count")
    CALLS.clear()
    run_stages([cfg], out, executor="local")
    assert len(CALLS) == 4
    # simulate a crash after two units: drop the success marker and two done-markers
    os.remove(os.path.join(stage_dir, runtime.SUCCESS))
    for u in ("u2", "u3"):
        os.remove(os.path.join(stage_dir, runtime.DONE_DIR, f"{u}.json"))
    CALLS.clear()
    run = run_stages([cfg], out, executor="local")
    assert CALLS == ["u2", "u3"]
    assert shards.count_rows(os.path.join(stage_dir, "quarantine")) == 4
    assert shards.validate(os.path.join(stage_dir, "quarantine")) == []
    CALLS.clear()
    run = run_stages([cfg], out, executor="local")
    assert CALLS == [] and run["stages"][0]["skipped"]


def test_changed_upstream_config_reruns_downstream(tmp_path):
    out = str(tmp_path)
    a, b = CountingConfig(name="a", units=2), CountingConfig(name="b", units=2)
    run_stages([a, b], out, executor="local")
    CALLS.clear()
    run_stages([CountingConfig(name="a", units=3), b], out, executor="local")
    assert CALLS == ["u0", "u1", "u2", "u0", "u1"]


def test_cli_help_everywhere_and_one_line_errors(tmp_path, capsys):
    from acedata.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"run", "ingest", "validate", "demo-data"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name
    assert main(["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - stage: ingest\n    sources: [a]\n    min_sid: 3\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.yaml.stages.0.min_sid: unknown key" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "acedata", "--help"], check=False, capture_output=True, text=True)
    assert r.returncode == 0 and "ingest" in r.stdout


def test_demo_spec_parses():
    import yaml

    root = os.path.dirname(os.path.dirname(__file__))
    with open(os.path.join(root, "pipelines", "demo.yaml")) as f:
        spec, cfgs = parse_spec(yaml.safe_load(f), "demo.yaml", {"out": "/tmp/x"})
    assert cfgs[0].name == "ingest" and spec.executor == "ray"
