"""The cluster client without a cluster: token lookup, address and path checks, run status."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import cluster_stages  # registers the test stages

from acedata import jobs
from acedata.cli import main
from acedata.errors import UserError
from acedata.pipeline import STATUS, run_stages
from acedata.stages.ingest import IngestConfig


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_token_lookup_follows_rays_order(clean_env, tmp_path):
    assert jobs.auth_token() is None
    default = tmp_path / "home" / ".ray" / "auth_token"
    default.parent.mkdir(parents=True)
    default.write_text("from-default\n")
    assert jobs.auth_token() == "from-default"
    path = tmp_path / "tok"
    path.write_text("from-path")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert jobs.auth_token() == "from-path"
    clean_env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == "from-env"
    clean_env.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_token() is None
    clean_env.delenv("RAY_AUTH_MODE")
    clean_env.delenv("RAY_AUTH_TOKEN")
    path.write_text("")
    with pytest.raises(UserError, match="empty"):
        jobs.auth_token()


def test_address_and_paths_are_checked_before_anything_is_sent(clean_env, tmp_path, capsys):
    with pytest.raises(UserError, match="--address http://HEAD:8265 or set RAY_ADDRESS"):
        jobs.resolve_address(None)
    clean_env.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    assert jobs.resolve_address(None) == "http://127.0.0.1:1"
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nstages:\n  - stage: ingest\n    sources: [/nowhere]\n")
    with pytest.raises(UserError, match="absolute path or a URI"):
        jobs.submit_pipeline(str(spec), "relative/out")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - stage: no_such_stage\n")
    with pytest.raises(UserError, match="not a stage"):
        jobs.submit_pipeline(str(bad), "/abs/out")
    with pytest.raises(UserError, match="absolute path or a URI"):
        jobs.submit_training(str(spec), ["data/lcu"], "/abs/out")
    # the CLI prints one line and exits 2
    assert main(["submit", str(spec), "--out", "rel"]) == 2
    assert main(["jobs", "status", "somejob"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("acedata ") for line in err)


def test_last_status_takes_the_newest_complete_line():
    a = {"state": "running", "stage": "ingest", "updated": 1}
    b = {"state": "running", "stage": "embed", "updated": 2}
    log = "\n".join([
        "noise", jobs.STATUS_PREFIX + json.dumps(a), "(pid=1) more noise",
        jobs.STATUS_PREFIX + json.dumps(b), jobs.STATUS_PREFIX + '{"state": "runn',  # cut short
    ])
    assert jobs.last_status(log) == b
    assert jobs.last_status("nothing here") is None


def test_run_status_tracks_stages_and_counts(demo_corpus, tmp_path):
    seen = []
    configs = [
        IngestConfig(name="ingest", sources=[demo_corpus], files_per_unit=8),
        cluster_stages.ColorStatsConfig(name="stats", rows_per_unit=8),
    ]
    out = str(tmp_path / "run")
    run_stages(configs, out, executor="local", on_status=lambda b: seen.append(json.loads(json.dumps(b))))
    final = json.loads(Path(out, STATUS).read_text())
    assert final["state"] == "succeeded" and final["stage"] is None
    assert [s["state"] for s in final["stages"]] == ["succeeded", "succeeded"]
    images = final["stages"][0]["counts"]["images"]
    assert final["stages"][1]["counts"] == {"embeddings": images}
    assert final["stages"][1]["units_done"] == final["stages"][1]["units"] > 1
    assert seen[-1] == final
    # while running, the stage in progress was reported before the next one started
    running = [b["stage"] for b in seen if b["state"] == "running" and b["stage"]]
    assert running.index("ingest") < running.index("stats")

    seen.clear()  # a rerun skips both stages and says so
    run_stages(configs, out, executor="local", on_status=seen.append)
    assert [s["state"] for s in seen[-1]["stages"]] == ["skipped", "skipped"]
    assert seen[-1]["stages"][1]["counts"] == {"embeddings": images}


def test_run_status_records_a_failure(tmp_path):
    configs = [cluster_stages.ColorStatsConfig(name="stats", inputs={"images": str(tmp_path / "missing")})]
    out = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        run_stages(configs, out, executor="local")
    body = json.loads(Path(out, STATUS).read_text())
    assert body["state"] == "failed" and body["stage"] == "stats"
    assert body["stages"][0]["state"] == "failed" and "FileNotFoundError" in body["error"]
