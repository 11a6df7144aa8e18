"""Resume keys: a stage is redone exactly when its output-affecting config, its code version
or the content of its inputs changed (acedata.resume)."""

from __future__ import annotations

import os
import shutil
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

import cluster_stages

from acedata import shards
from acedata.images import encode
from acedata.pipeline import run_stages
from acedata.stages.cluster import ClusterConfig
from acedata.stages.ingest import IngestConfig


def _corpus(d) -> str:
    os.makedirs(d, exist_ok=True)
    for i in range(6):
        im = Image.new("RGB", (48 + 8 * i, 36 + 4 * i), ((40 * i) % 256, 255 - 30 * i, (90 * i) % 256))
        with open(os.path.join(d, f"im{i}.png"), "wb") as f:
            f.write(encode(im, "PNG"))
    return str(d)


def _configs(corpus: str, **over) -> list:
    return [
        IngestConfig(**{"name": "ingest", "sources": [corpus], "files_per_unit": 3, **over.get("ingest", {})}),
        cluster_stages.ColorStatsConfig(**{"name": "stats", "rows_per_unit": 2, **over.get("stats", {})}),
        ClusterConfig(**{"name": "cluster", "k": 2, "gpu": False, **over.get("cluster", {})}),
    ]


def _rerun(configs, out) -> dict[str, bool]:
    """Run and say, per stage, whether it was redone (True) or skipped (False)."""
    run = run_stages(configs, str(out), executor="local")
    return {s["name"]: not s.get("skipped", False) for s in run["stages"]}


@pytest.fixture
def run(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    assert _rerun(_configs(corpus), out) == {"ingest": True, "stats": True, "cluster": True}
    return corpus, out


def test_run_only_settings_rerun_nothing(run):
    corpus, out = run
    res = {"resources": {"concurrency": 7, "num_cpus": 3, "max_retries": 0}, "description": "renamed"}
    cfgs = _configs(corpus, ingest=res, stats=res, cluster=res)
    assert _rerun(cfgs, out) == {"ingest": False, "stats": False, "cluster": False}


def test_threshold_change_reruns_that_stage_and_what_reads_it(run):
    corpus, out = run
    assert _rerun(_configs(corpus, cluster={"k": 3}), out) == {"ingest": False, "stats": False, "cluster": True}
    # min_side 41 quarantines the two images under 41 px high: ingest's output changes, so everything reruns
    assert _rerun(_configs(corpus, ingest={"min_side": 41}, cluster={"k": 3}), out) == \
        {"ingest": True, "stats": True, "cluster": True}
    # a limit that changes no row: ingest reruns, but its tables are identical, so nothing downstream does
    assert _rerun(_configs(corpus, ingest={"min_side": 41, "max_pixels": 10**8}, cluster={"k": 3}), out) == \
        {"ingest": True, "stats": False, "cluster": False}


def test_stage_version_bump_reruns_it(run, monkeypatch):
    corpus, out = run
    monkeypatch.setattr(cluster_stages.ColorStats, "version", 2)
    # stats reruns; its rows are the same, so cluster (chained by content) stays
    assert _rerun(_configs(corpus), out) == {"ingest": False, "stats": True, "cluster": False}


def test_source_content_change_reruns_ingest(run):
    corpus, out = run
    p = os.path.join(corpus, "im0.png")
    os.utime(p, (1, 1))  # touched, same bytes: content digests ignore it
    assert _rerun(_configs(corpus), out) == {"ingest": False, "stats": False, "cluster": False}
    with open(p, "wb") as f:
        f.write(encode(Image.new("RGB", (48, 40), (1, 2, 3)), "PNG"))
    assert _rerun(_configs(corpus), out) == {"ingest": True, "stats": True, "cluster": True}
    moved = str(out.parent / "elsewhere")  # the same content at another path: a new source_uri
    shutil.copytree(corpus, moved)
    assert _rerun(_configs(moved), out)["ingest"] is True


def test_metadata_mode_sees_size_and_mtime(run):
    corpus, out = run
    cfgs = _configs(corpus, ingest={"source_digest": "metadata"})  # another digest: ingest redoes, same rows
    assert _rerun(cfgs, out) == {"ingest": True, "stats": False, "cluster": False}
    assert _rerun(cfgs, out)["ingest"] is False
    os.utime(os.path.join(corpus, "im1.png"), (5, 5))
    assert _rerun(cfgs, out)["ingest"] is True


def test_replaced_inputs_file_reruns_the_stage_reading_it(run, tmp_path):
    _, out = run
    shard = shards.list_shards(str(out / "ingest" / "images"))[0]
    own = str(tmp_path / "mine.parquet")
    shutil.copy(shard, own)
    cfg = [cluster_stages.ColorStatsConfig(name="ext", inputs={"images": own})]
    ext = tmp_path / "ext"
    assert _rerun(cfg, ext) == {"ext": True}
    assert _rerun(cfg, ext) == {"ext": False}
    t = pq.read_table(own)
    pq.write_table(t.slice(0, 1), own)  # same name, other content
    assert _rerun(cfg, ext) == {"ext": True}
    assert shards.count_rows(str(ext / "ext" / "embeddings")) == 1
