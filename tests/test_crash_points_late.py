"""A crash at every write step of the later stages (synthesize, instruct, assemble), then a rerun.

Same method as test_crash_points.py, on a run whose earlier stages are complete: each trial
copies that run, crashes just before write step k of the later stages (unit commits, their
`finish`, manifests, markers), reruns, and must validate, equal a clean run, and never have
replaced or deleted a committed file. By default the sweep takes every step outside unit work
and every step of each stage's first unit (the other units commit through the same code);
`ACEDATA_CRASH_ALL=1` tries every step (240 here, ~7 min on 2 busy cores).
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import faultfs
from test_crash_points import _check, _configs, _corpus

from acedata.digest import run_digest
from acedata.pipeline import run_stages
from acedata.stages.assemble import AssembleConfig
from acedata.stages.instruct import InstructConfig
from acedata.stages.synthesize import SynthesizeConfig

LATE = ("synthesize", "instruct", "assemble")


def _late_configs(a: str, b: str) -> list:
    return [
        *_configs(a, b),
        SynthesizeConfig(name="synthesize", per_image=1, max_images=3, max_side=64, images_per_unit=2,
                         chain_fraction=0.5, synthesizers=["grayscale", "canny", "mosaic"]),
        InstructConfig(name="instruct", pairs_per_unit=8, images_per_unit=64),
        AssembleConfig(name="assemble", max_history=2, validation_fraction=0.3, rows_per_unit=6),
    ]


@pytest.mark.slow
def test_crash_at_every_write_step_of_later_stages(tmp_path, monkeypatch, capsys):
    a, b = _corpus(str(tmp_path / "corpus"))
    clean = str(tmp_path / "clean")
    run_stages(_late_configs(a, b), clean, executor="local")
    want = run_digest(clean)
    base = str(tmp_path / "base")  # the earlier stages complete, the later ones not started
    shutil.copytree(clean, base)
    for name in LATE:
        shutil.rmtree(os.path.join(base, name))

    def trial(crash_at: int | None, out: str) -> faultfs.FaultFS:
        shutil.copytree(base, out)
        fs = faultfs.FaultFS(crash_at=crash_at)
        with monkeypatch.context() as m:
            faultfs.install(m, fs)
            if crash_at is not None:
                with pytest.raises(faultfs.Crash):
                    run_stages(_late_configs(a, b), out, executor="local")
                fs.crash_at = None
            run_stages(_late_configs(a, b), out, executor="local")
        return fs

    counter = trial(None, str(tmp_path / "count"))
    assert counter.violations == []
    in_late = [k for k, (_, path) in enumerate(counter.log, 1) if any(f"/{s}/" in path for s in LATE)]
    assert len(in_late) > 30
    if not os.environ.get("ACEDATA_CRASH_ALL"):  # quick sweep: finish/setup steps and one unit per stage
        in_late = faultfs.representative_steps(counter.log, LATE)
    tried = faultfs.sweep(in_late, counter.log, str(tmp_path), trial, lambda out: _check(out, want))
    with capsys.disabled():
        print(f"\ncrash points tried in synthesize/instruct/assemble: {tried}")
