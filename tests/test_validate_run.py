"""`acedata validate` checks a run against its record: missing tables, manifests, malformed files."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from acedata.pipeline import run_stages
from acedata.stages.ingest import IngestConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    return subprocess.run([sys.executable, "-m", "acedata", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("validate")
    src = d / "src"
    src.mkdir()
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (40 + i, 40), (i * 50, 80, 90)).save(buf, "PNG")
        (src / f"{i}.png").write_bytes(buf.getvalue())
    (src / "junk.jpg").write_bytes(b"not an image")
    run_stages([IngestConfig(name="ingest", sources=[str(src)])], str(d / "run"), executor="local")
    return str(d / "run")


def _copy(clean_run: str, tmp_path) -> str:
    dst = str(tmp_path / "run")
    shutil.copytree(clean_run, dst)
    return dst


def test_clean_run_passes(clean_run):
    r = _cli("validate", clean_run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok   ") == 3  # images, quarantine, duplicates


@pytest.mark.parametrize("removed, want, check_stage_dir", [
    ("ingest/quarantine/_manifest.json",
     "MISSING {run}/ingest/quarantine: table declared by its stage has no _manifest.json", False),
    # the run and the stage directory alike
    ("ingest/duplicates", "MISSING {run}/ingest/duplicates: table declared by its stage is missing", True),
    ("ingest/_SUCCESS.json", "stage listed in _run.json has no _SUCCESS.json", False),
], ids=["manifest", "table", "stage_marker"])
def test_missing_part_fails(clean_run, tmp_path, removed, want, check_stage_dir):
    run = _copy(clean_run, tmp_path)
    path = os.path.join(run, *removed.split("/"))
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
    for where in (run, os.path.join(run, "ingest")) if check_stage_dir else (run,):
        r = _cli("validate", where)
        assert r.returncode == 1
        assert want.format(run=run) in r.stdout


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '{"rows": 1}'])
def test_malformed_manifest_is_one_line(clean_run, tmp_path, body):
    run = _copy(clean_run, tmp_path)
    with open(os.path.join(run, "ingest", "images", "_manifest.json"), "w") as f:
        f.write(body)
    r = _cli("validate", run)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"FAIL {run}/ingest/images\n  - malformed _manifest.json" in r.stdout
