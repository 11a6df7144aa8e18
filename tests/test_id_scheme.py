"""A run's image id scheme: xxh3-128 for a new run, pinned in RUN/_settings.json; a rerun or resume
keeps it (asking for another is refused); a run directory from before schemes is sha256; every
stage that makes ids (ingest, synthesize: photos, masks, conditions) makes them in the run's scheme."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from acedata import ids, shards
from acedata.errors import UserError
from acedata.pipeline import run_pipeline, run_stages
from acedata.stages.ingest import IngestConfig
from acedata.stages.synthesize import SynthesizeConfig


def _settings(out) -> dict:
    with open(os.path.join(out, "_settings.json")) as f:
        return json.load(f)


def _ids(out, table="ingest/images") -> list[str]:
    return shards.read_table(os.path.join(out, table), columns=["image_id"]).column("image_id").to_pylist()


def _ingest(src) -> list[IngestConfig]:
    return [IngestConfig(name="ingest", sources=[src], files_per_unit=8)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    from acedata.demo_data import build

    d = str(tmp_path_factory.mktemp("corpus"))
    build(d, variants=2, seed=0, odd=False)
    return d


def test_new_run_defaults_to_xxh3_and_records_it(corpus, tmp_path):
    out = str(tmp_path / "run")
    run = run_stages(_ingest(corpus), out, executor="local")
    assert ids.DEFAULT == "xxh3-128"
    assert _settings(out) == {"id_scheme": "xxh3-128"} and run["id_scheme"] == "xxh3-128"
    got = _ids(out)
    assert got and all(ids.scheme_of(i) == "xxh3-128" for i in got)


def test_resume_keeps_the_recorded_scheme(corpus, tmp_path):
    out = str(tmp_path / "run")
    run_stages(_ingest(corpus), out, executor="local", id_scheme="sha256")
    first = sorted(_ids(out))
    assert all(len(i) == 64 for i in first)
    # an interrupted stage: one unit's done-marker gone, so the rerun redoes that unit only
    done = os.path.join(out, "ingest", "_done")
    os.remove(os.path.join(done, min(os.listdir(done))))
    os.remove(os.path.join(out, "ingest", "_SUCCESS.json"))
    run = run_stages(_ingest(corpus), out, executor="local")  # no scheme asked: the run's own
    assert run["id_scheme"] == "sha256" and _settings(out) == {"id_scheme": "sha256"}
    assert sorted(_ids(out)) == first
    with pytest.raises(UserError, match="mix two schemes"):
        run_stages(_ingest(corpus), out, executor="local", id_scheme="xxh3-128")
    assert _settings(out) == {"id_scheme": "sha256"}


def test_run_from_before_schemes_is_sha256(corpus, tmp_path):
    out = str(tmp_path / "run")
    run_stages(_ingest(corpus), out, executor="local", id_scheme="sha256")
    before = sorted(_ids(out))
    os.remove(os.path.join(out, "_settings.json"))  # what a run made before this record looks like
    with pytest.raises(UserError, match="before id schemes were recorded"):
        run_stages(_ingest(corpus), out, executor="local", id_scheme="xxh3-128")
    shutil.rmtree(os.path.join(out, "ingest"))  # even with its stage gone, _status.json says a run was here
    run = run_stages(_ingest(corpus), out, executor="local")
    assert run["id_scheme"] == "sha256" and _settings(out) == {"id_scheme": "sha256"}
    assert sorted(_ids(out)) == before


def test_spec_sets_the_scheme_of_a_new_run(corpus, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "executor": "local", "id_scheme": "sha256",
                                    "stages": [{"stage": "ingest", "sources": [corpus]}]}))
    out = str(tmp_path / "run")
    run_pipeline(str(spec), out)
    assert _settings(out)["id_scheme"] == "sha256" and all(len(i) == 64 for i in _ids(out))
    spec.write_text(yaml.safe_dump({"name": "t", "id_scheme": "md5", "stages": [{"stage": "ingest", "sources": [corpus]}]}))
    with pytest.raises(UserError, match="id_scheme"):
        run_pipeline(str(spec), str(tmp_path / "other"))


@pytest.mark.parametrize("scheme", ids.SCHEMES)
def test_synthesized_images_and_masks_use_the_run_scheme(corpus, tmp_path, scheme):
    out = str(tmp_path / "run")
    cfgs = [*_ingest(corpus), SynthesizeConfig(name="synthesize", max_images=4, per_image=3, max_side=96,
                                               chain_fraction=1.0)]
    run_stages(cfgs, out, executor="local", id_scheme=scheme)
    made = shards.read_table(os.path.join(out, "synthesize", "images"), columns=["image_id", "kind"]).to_pylist()
    assert made and {r["kind"] for r in made} >= {"image"}
    assert {ids.scheme_of(r["image_id"]) for r in made} == {scheme}
    pairs = shards.read_table(os.path.join(out, "synthesize", "pairs")).to_pylist()
    refs = {i for p in pairs for i in (p["source_id"], p["target_id"], p["mask_id"], *(p["extra_input_ids"] or []))
            if i}
    assert refs and {ids.scheme_of(i) for i in refs} == {scheme}


def test_source_digest_hashes_files_in_the_run_scheme(corpus, tmp_path):
    """Ingest's resume key hashes file bytes in the run's scheme: sha256 runs keep the key they had."""
    from acedata.source_digest import source_digest

    old = source_digest(corpus)
    assert source_digest(corpus, scheme="sha256") == old
    new = source_digest(corpus, scheme="xxh3-128")
    assert new != old
    moved = tmp_path / "moved"
    shutil.copytree(corpus, moved, symlinks=True)
    assert source_digest(str(moved), scheme="xxh3-128") == new  # content, not location
    (moved / "extra.txt").write_text("x")
    assert source_digest(str(moved), scheme="xxh3-128") != new


def test_scheme_travels_to_ray_workers(corpus, tmp_path, ray_local):
    """Workers compute ids in the run's scheme, not their process default (xxh3-128)."""
    out = str(tmp_path / "run")
    run_stages(_ingest(corpus), out, executor="ray", id_scheme="sha256")
    local = str(tmp_path / "local")
    run_stages(_ingest(corpus), local, executor="local", id_scheme="sha256")
    got = _ids(out)
    assert got and all(len(i) == 64 for i in got) and sorted(got) == sorted(_ids(local))


def test_cli_ingest_picks_the_scheme_of_a_new_run(corpus, tmp_path, capsys):
    from acedata.cli import main

    out = str(tmp_path / "run")
    assert main(["ingest", corpus, "--out", out, "--executor", "local", "--id-scheme", "sha256"]) == 0
    assert _settings(out)["id_scheme"] == "sha256"
    assert main(["ingest", corpus, "--out", out, "--executor", "local", "--id-scheme", "xxh3-128"]) == 2
    assert "mix two schemes" in capsys.readouterr().err


def test_inputs_from_another_run_set_a_new_runs_scheme_and_never_mix(corpus, tmp_path):
    first = str(tmp_path / "first")
    run_stages(_ingest(corpus), first, executor="local", id_scheme="sha256")
    synth = SynthesizeConfig(name="synthesize", max_images=2, per_image=1, max_side=96, chain_fraction=0.0,
                             inputs={"images": os.path.join(first, "ingest", "images")})
    second = str(tmp_path / "second")
    run = run_stages([synth], second, executor="local")  # a new run takes its inputs' scheme
    assert run["id_scheme"] == "sha256" and _settings(second)["id_scheme"] == "sha256"
    assert all(len(i) == 64 for i in _ids(second, "synthesize/images"))
    third = str(tmp_path / "third")
    with pytest.raises(UserError, match="never mixes schemes"):  # asked for the other: refused
        run_stages([synth], third, executor="local", id_scheme="xxh3-128")
    assert not os.path.exists(os.path.join(third, "_settings.json"))  # nothing pinned: rerunnable as is
    other = str(tmp_path / "other")
    run_stages(_ingest(corpus), other, executor="local")
    with pytest.raises(UserError, match="never mixes schemes"):  # an xxh3 run fed a sha256 table
        run_stages([SynthesizeConfig(name="synthesize", max_images=2, per_image=1, max_side=96,
                                     inputs={"images": os.path.join(first, "ingest", "images")})],
                   other, executor="local")
    assert _settings(other)["id_scheme"] == "xxh3-128"


def test_stage_folder_linked_to_an_old_run_takes_its_scheme(corpus, tmp_path):
    """A new run given (symlinked) the stage folder of a run from before schemes: tables reached
    through the link are that run's (sha256), so the new run is sha256 and refuses xxh3-128."""
    old = str(tmp_path / "old")
    run_stages(_ingest(corpus), old, executor="local", id_scheme="sha256")
    os.remove(os.path.join(old, "_settings.json"))  # a run from before the record: _status.json only
    new = str(tmp_path / "new")
    os.makedirs(new)
    os.symlink(os.path.join(old, "ingest"), os.path.join(new, "ingest"))
    synth = SynthesizeConfig(name="synthesize", max_images=2, per_image=1, max_side=96, chain_fraction=0.0,
                             inputs={"images": os.path.join(new, "ingest", "images")})
    with pytest.raises(UserError, match="never mixes schemes"):
        run_stages([synth], new, executor="local", id_scheme="xxh3-128")
    assert not os.path.exists(os.path.join(new, "_settings.json"))
    run = run_stages([synth], new, executor="local")
    assert run["id_scheme"] == "sha256" and _settings(new) == {"id_scheme": "sha256"}
    made = _ids(new, "synthesize/images")
    assert made and all(len(i) == 64 for i in made)
