"""Model-based synthesizers and the CLIP filter, end to end on tiny random-init models that
are saved to a folder and loaded by path through the same code as real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from acedata import shards
from acedata.errors import ModelNotFound
from acedata.models import ModelSpec
from acedata.synth import REGISTRY, Img, load_all

load_all()
DIFFUSERS = {"steps": 2, "max_side": 64, "guidance": 3.0}  # only diffusers synthesizers take these


def _opts(name: str) -> dict:
    return DIFFUSERS if REGISTRY[name].Options.model_fields.keys() >= DIFFUSERS.keys() else {}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    from acedata.synth.support.tiny_models import build_tiny_dpt, build_tiny_pipeline, build_tiny_segformer

    root = tmp_path_factory.mktemp("tiny")
    out = {"depth": str(root / "dpt"), "segmentation_model": str(root / "segformer")}
    build_tiny_dpt(out["depth"])
    build_tiny_segformer(out["segmentation_model"])
    for synth, kind in (("instruct_pix2pix", "instruct_pix2pix"), ("img2img_style", "img2img"),
                        ("sd_inpaint_replace", "inpaint")):
        out[synth] = str(root / kind)
        build_tiny_pipeline(kind, out[synth])
    return out


@pytest.fixture(scope="module")
def photo() -> Img:
    from skimage import data

    return Img(Image.fromarray(data.astronaut()).resize((72, 64)), "image", "b" * 64)


def _loaded(name: str, path: str):
    s = REGISTRY[name]()
    s.load(ModelSpec(name=f"tiny-{name}", path=path, device="cpu", options=_opts(name)))
    return s


@pytest.mark.parametrize("name,subtask", [("depth", "depth"), ("segmentation_model", "segmentation")])
def test_condition_models_make_map_and_inverse(weights, photo, name, subtask):
    s = _loaded(name, weights[name])
    low, ctrl = s.make(photo, np.random.default_rng(0))
    assert (low.task, ctrl.task, low.subtask) == ("low_level", "controllable", subtask)
    d = low.target.array()
    assert d.shape == photo.array().shape and low.target.kind == "condition"
    assert ctrl.source is low.target and ctrl.target is photo
    assert s.weights_id.endswith(weights[name])
    if name == "depth":
        assert d.std() > 0 and (d[:, :, 0] == d[:, :, 1]).all()
    else:  # every pixel carries one palette colour
        from acedata.synth.support.pixels import palette

        assert {tuple(c) for c in d.reshape(-1, 3)} <= {tuple(c) for c in palette(8)}


@pytest.mark.parametrize("name", ["instruct_pix2pix", "img2img_style", "sd_inpaint_replace"])
def test_diffusers_synthesizers(weights, photo, name):
    s = _loaded(name, weights[name])
    (d,) = s.make(photo, np.random.default_rng(0), "an astronaut")
    w, h = d.source.pil.size
    assert w % 8 == 0 and h % 8 == 0 and d.target.pil.size == (w, h) and d.params["prompt"]
    assert d.source.id != d.target.id
    if name == "sd_inpaint_replace":
        m = np.asarray(d.mask.pil) > 0
        assert set(np.unique(np.asarray(d.mask.pil))) <= {0, 255} and m.any()
        assert (d.source.array()[~m] == d.target.array()[~m]).all(), "outside the mask nothing changes"


def test_stage_with_model_synthesizers(weights, demo_corpus, tmp_path):
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig
    from acedata.stages.synthesize import Synthesize, SynthesizeConfig

    models = {n: ModelSpec(name=f"tiny-{n}", path=p, device="cpu", options=_opts(n)) for n, p in weights.items()}
    cfg = SynthesizeConfig(name="synthesize", synthesizers=sorted(weights), models=models, max_images=2,
                           max_side=96, chain_fraction=0)
    assert Synthesize(cfg, None).uses_model  # an actor pool on Ray
    run = run_stages([IngestConfig(name="ingest", sources=[demo_corpus]), cfg], str(tmp_path), executor="local")
    s = run["stages"][1]
    # max_images=2: a hash sample of about 2 photos (acedata.synth.plan), each drawn by all 7
    assert s["counts"]["candidates"] == s["counts"]["pairs"] + s["counts"]["quarantine"] == s["counts"]["photos"] * 7
    assert s["counts"]["photos"] >= 1
    pairs = shards.read_table(str(tmp_path / "synthesize" / "pairs")).to_pylist()
    bad = shards.read_table(str(tmp_path / "synthesize" / "quarantine")).to_pylist()
    made = {json.loads(p["provenance"])["synthesizer"] for p in pairs}
    made |= {b["source_uri"].split("/")[2] for b in bad}
    assert made == set(weights)
    for p in pairs:
        assert json.loads(p["provenance"])["weights"].startswith("tiny-")


def test_options_typo_fails_when_the_spec_loads(tmp_path):
    from acedata.errors import UserError
    from acedata.stages.synthesize import SynthesizeConfig

    with pytest.raises(UserError, match=r"models\.instruct_pix2pix\.options\.stpes: unknown key"):
        SynthesizeConfig(name="synthesize", models={"instruct_pix2pix": ModelSpec(name="x", options={"stpes": 2})})
    with pytest.raises(UserError, match=r"models\.depth\.options\.steps: unknown key"):  # not a diffusers model
        SynthesizeConfig(name="synthesize", models={"depth": ModelSpec(name="x", options={"steps": 2})})
    with pytest.raises(UserError, match=r"models\.img2img_style\.options\.strength"):
        SynthesizeConfig(name="synthesize", models={"img2img_style": ModelSpec(name="x", options={"strength": 3})})
    with pytest.raises(UserError, match="sed: unknown key"):  # a detector's own options are checked too
        SynthesizeConfig(name="synthesize", models={"pose": ModelSpec(
            name="x", options={"detector": {"name": "d", "options": {"sed": 1}}})})
    ok = SynthesizeConfig(name="synthesize", models={"instruct_pix2pix": ModelSpec(name="x", options=DIFFUSERS)})
    assert ok.models["instruct_pix2pix"].options == DIFFUSERS


def test_missing_weights_name_the_model(demo_corpus, tmp_path):
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig
    from acedata.stages.synthesize import SynthesizeConfig

    cfg = SynthesizeConfig(name="synthesize", synthesizers=["depth"],
                           models={"depth": ModelSpec(name="Intel/dpt-hybrid-midas", path=str(tmp_path / "none"))})
    with pytest.raises(ModelNotFound, match="dpt-hybrid-midas"):
        run_stages([IngestConfig(name="ingest", sources=[demo_corpus]), cfg], str(tmp_path), executor="local")


def test_clip_filter_scores_and_rejects(photo):
    from acedata.synth.base import Draft, new_img
    from acedata.synth.families.semantic import _grade
    from acedata.synth.support.clip_filter import ClipFilterConfig, ClipScorer
    from acedata.synth.support.filters import Verdict

    spec = ModelSpec(name="acedata-tiny-siglip", random_init=True, device="cpu")
    d = Draft("semantic_editing", "color_grading", photo, new_img(_grade(photo.array(), "sepia", 1.0)),
              params={"look": "sepia"})
    lenient = ClipScorer(ClipFilterConfig(model=spec, image_min=-1.0, directional_min=-1.0))
    v = lenient.judge(d, "an astronaut", Verdict(True))
    assert v.ok and -1 <= v.scores["clip_image"] <= 1 and "clip_directional" in v.scores
    strict = ClipScorer(ClipFilterConfig(model=spec, image_min=1.01))
    v = strict.judge(d, "an astronaut", Verdict(True))
    assert not v.ok and v.reason == "clip_image_low"
    other = Draft("layer_editing", "fuse", photo, photo)
    assert strict.judge(other, None, Verdict(True)).ok  # only the configured tasks are scored
