"""A rejected candidate (quarantined with its reason) is not a failing synthesizer (counted; past
the failure limit the unit and the stage fail, the exception in the log and the run status)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from acedata import shards
from acedata.pipeline import run_stages
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig
from acedata.synth import REGISTRY, load_all
from acedata.synth.base import Draft, Img, Rejected, Synthesizer, new_img
from acedata.synth.support.collect import FailureLimit, SynthesizerFailures

load_all()


class OutOfMemory(Synthesizer):
    """Stands in for a model synthesizer on a GPU that has run out of memory: every call raises."""

    name = "test_oom"
    task = "semantic_editing"
    subtasks = ("instruct_edit",)

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


class NeverFindsAFace(Synthesizer):
    name = "test_reject"
    task = "semantic_editing"
    subtasks = ("facial_attribute",)

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        class NoFace(Rejected):
            reason = "no_face"

        raise NoFace("no face covering >= 0.02 of the image")


def unlucky(image_id: str) -> bool:
    return image_id.startswith("0")  # about one photo in 16


class FailsOnSomeImages(Synthesizer):
    """A bug that a few inputs trigger: within the failure limit the stage goes on."""

    name = "test_flaky"
    task = "low_level"
    subtasks = ("grayscale",)

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        if unlucky(src.meta.get("resized_from") or src.id):
            raise ValueError("cannot broadcast (3,) into (4,)")
        gray = np.repeat(np.asarray(src.pil.convert("L"))[:, :, None], 3, axis=2)
        return [Draft(self.task, "grayscale", src, new_img(gray, "condition"), synthesizer=self.name)]


@pytest.fixture
def synths(monkeypatch):
    for cls in (OutOfMemory, NeverFindsAFace, FailsOnSomeImages):
        monkeypatch.setitem(REGISTRY, cls.name, cls)


def _run(corpus, out, names, max_images=6, **kw):
    cfgs = [IngestConfig(name="ingest", sources=[corpus]),
            SynthesizeConfig(name="synthesize", synthesizers=names, max_images=max_images, images_per_unit=3,
                             max_side=64, chain_fraction=0, **kw)]
    return run_stages(cfgs, str(out), executor="local")


def test_failure_limit_needs_rate_and_count():
    limit = FailureLimit(max_rate=0.05, min_count=3)
    assert not limit.exceeded(2, 2)  # everything failed, but too few calls to call the model broken
    assert limit.exceeded(3, 3) and limit.exceeded(6, 100)
    assert not limit.exceeded(5, 100)  # 5% is within the limit


def test_out_of_memory_fails_the_stage_instead_of_quarantining_everything(synths, demo_corpus, tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="acedata"), pytest.raises(SynthesizerFailures) as err:
        _run(demo_corpus, tmp_path, ["test_oom", "grayscale"])
    msg = str(err.value)
    # the first unit to fail: every photo's test_oom call failed, its grayscale call did not
    m = re.search(r"(\d+) of (\d+) synthesizer calls failed", msg)
    assert m and int(m.group(1)) >= 3 and int(m.group(2)) == 2 * int(m.group(1)), msg
    assert f"test_oom x{m.group(1)}" in msg and "CUDA out of memory" in msg
    assert any("test_oom failed" in r.getMessage() and r.exc_info for r in caplog.records)  # traceback logged
    status = json.loads((tmp_path / "_status.json").read_text())
    assert status["state"] == "failed" and "CUDA out of memory" in status["error"]


def test_rejections_are_quarantined_with_their_reason_and_the_stage_succeeds(synths, demo_corpus, tmp_path):
    run = _run(demo_corpus, tmp_path, ["test_reject", "grayscale"])
    s = run["stages"][1]
    assert s["counts"]["synth_failures"] == 0 and s["quarantine_reasons"]["no_face"] == s["counts"]["photos"] >= 3
    assert s["counts"]["candidates"] == s["counts"]["pairs"] + s["counts"]["quarantine"]
    bad = shards.read_table(str(tmp_path / "synthesize" / "quarantine")).to_pylist()
    assert {b["detail"] for b in bad if b["reason"] == "no_face"} == {"NoFace: no face covering >= 0.02 of the image"}


def test_rare_failures_are_quarantined_and_counted(synths, demo_corpus, tmp_path):
    run = _run(demo_corpus, tmp_path, ["test_flaky"], max_images=None, failures={"max_rate": 0.25, "min_count": 50})
    photos = shards.read_table(str(tmp_path / "ingest" / "images"), columns=["image_id", "kind"]).to_pylist()
    expected = sum(unlucky(p["image_id"]) for p in photos if p["kind"] == "image")
    s = run["stages"][1]
    assert expected >= 1 and s["counts"]["synth_calls"] == sum(p["kind"] == "image" for p in photos)
    assert s["counts"]["synth_failures"] == expected and s["synth_failures"] == {"test_flaky": expected}
    bad = [b for b in shards.read_table(str(tmp_path / "synthesize" / "quarantine")).to_pylist()
           if b["reason"] == "synth_failed"]
    assert len(bad) == expected and {b["detail"] for b in bad} == {"ValueError: cannot broadcast (3,) into (4,)"}
    assert s["counts"]["candidates"] == s["counts"]["pairs"] + s["counts"]["quarantine"]
