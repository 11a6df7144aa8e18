"""Pose, facial-attribute and model-mask synthesizers on tiny random-init models that are saved to a
folder and loaded by path, the same loading code as real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from acedata import shards
from acedata.errors import ModelNotFound, UserError
from acedata.models import ModelSpec
from acedata.synth import REGISTRY, Img, load_all
from acedata.synth.support.filters import check

load_all()
DIFFUSERS = {"steps": 2, "max_side": 64, "guidance": 3.0}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    from acedata.synth.support.tiny_models import (
        build_tiny_detector,
        build_tiny_pipeline,
        build_tiny_sam,
        build_tiny_segformer,
        build_tiny_vitpose,
    )

    root = tmp_path_factory.mktemp("tiny")
    out = {k: str(root / k) for k in ("vitpose", "person_det", "face_det", "ip2p", "sam", "segformer")}
    build_tiny_vitpose(out["vitpose"])
    build_tiny_detector(out["person_det"], labels=("person",))
    build_tiny_detector(out["face_det"], seed=1, labels=("face",))
    build_tiny_pipeline("instruct_pix2pix", out["ip2p"])
    build_tiny_sam(out["sam"])
    build_tiny_segformer(out["segformer"])
    return out


@pytest.fixture(scope="module")
def photo() -> Img:
    from skimage import data

    return Img(Image.fromarray(data.astronaut()).resize((96, 80)), "image", "c" * 64)


def _spec(name: str, path: str, **options) -> ModelSpec:
    return ModelSpec(name=f"tiny-{name}", path=path, device="cpu", options=options)


def _synth(name: str, spec: ModelSpec):
    s = REGISTRY[name]()
    s.load(spec)
    return s


def _palette_colours() -> set[tuple[int, ...]]:
    from acedata.synth.families.pose import COLOURS, LIMB_SHADE

    shaded = (COLOURS.astype(np.float32) * LIMB_SHADE).astype(np.uint8)
    return {(0, 0, 0)} | {tuple(int(v) for v in c) for c in np.concatenate([COLOURS, shaded])}


# --- pose ---------------------------------------------------------------------------------


def test_openpose_drawing_from_coco_keypoints():
    from acedata.synth.families.pose import COLOURS, draw_openpose, openpose18

    kps = np.zeros((17, 2), np.float32)
    kps[0] = (50, 20)  # nose
    kps[5], kps[6] = (70, 40), (30, 40)  # left / right shoulder
    kps[9] = (90, 90)  # left wrist, low score below
    scores = np.full(17, 0.05, np.float32)
    scores[[0, 5, 6]] = 0.9
    joints = openpose18(kps, scores, 0.3)
    assert joints[1].tolist() == [50, 40, 1], "the neck is the midpoint of the shoulders"
    assert joints[2, :2].tolist() == [30, 40] and joints[5, :2].tolist() == [70, 40]  # right / left swap to OpenPose
    assert joints[7, 2] == 0, "a low-score wrist is not drawn"
    canvas = draw_openpose([joints], 100, 120)
    assert canvas.shape == (100, 120, 3)
    assert tuple(canvas[20, 50]) == tuple(COLOURS[0]) and tuple(canvas[40, 50]) == tuple(COLOURS[1])
    assert (canvas[85:95, 85:95] == 0).all() and (canvas[95:, :] == 0).all()
    assert {tuple(int(v) for v in c) for c in canvas.reshape(-1, 3)} <= _palette_colours()
    # neck-nose limb (limb 12) is drawn between the joints in its shaded colour
    assert tuple(canvas[30, 50]) == tuple((COLOURS[12] * 0.6).astype(np.uint8))


def test_pose_makes_skeleton_and_inverse_pair(weights, photo):
    s = _synth("pose", _spec("vitpose", weights["vitpose"], keypoint_threshold=-1.0))
    low, ctrl = s.make(photo, np.random.default_rng(0))
    assert (low.task, ctrl.task, low.subtask, ctrl.subtask) == ("low_level", "controllable", "pose", "pose")
    assert low.target.kind == "condition" and ctrl.source is low.target and ctrl.target is photo
    m = low.target.array()
    assert m.shape == photo.array().shape and (m == 0).mean() > 0.3 and m.any()
    assert {tuple(int(v) for v in c) for c in m.reshape(-1, 3)} <= _palette_colours()
    assert low.params["boxes"] == "whole_image" and low.params["people"] == 1
    assert check(low).ok and check(ctrl).ok
    assert s.weights_id.startswith("tiny-vitpose@")


def test_pose_person_boxes_from_detector_and_fallback(weights, photo):
    det = {"name": "tiny-person-det", "path": weights["person_det"], "device": "cpu"}
    s = _synth("pose", _spec("vitpose", weights["vitpose"], keypoint_threshold=-1.0, detector=det,
                             detector_threshold=0.0, max_people=3))
    low, _ = s.make(photo, np.random.default_rng(0))
    assert low.params["boxes"] == "detector" and low.params["people"] == 1  # duplicate queries merged
    assert "+tiny-person-det@" in s.weights_id
    strict = _synth("pose", _spec("vitpose", weights["vitpose"], keypoint_threshold=-1.0, detector=det,
                                  detector_threshold=1.01))
    assert strict.make(photo, np.random.default_rng(0))[0].params["boxes"] == "whole_image"


def test_pose_without_confident_keypoints_is_an_error(weights, photo):
    from acedata.synth.families.pose import NoPoseFound

    s = _synth("pose", _spec("vitpose", weights["vitpose"], keypoint_threshold=5.0))
    with pytest.raises(NoPoseFound):
        s.make(photo, np.random.default_rng(0))


def test_missing_pose_or_detector_weights_name_the_model(weights, tmp_path):
    with pytest.raises(ModelNotFound, match="usyd-community/vitpose-base-simple"):
        _synth("pose", ModelSpec(name="usyd-community/vitpose-base-simple", path=str(tmp_path / "none")))
    det = {"name": "PekingU/rtdetr_r50vd_coco_o365", "path": str(tmp_path / "nodet")}
    with pytest.raises(ModelNotFound, match="rtdetr_r50vd"):
        _synth("pose", _spec("vitpose", weights["vitpose"], detector=det))


# --- facial attributes --------------------------------------------------------------------


def test_facial_attribute_edits_only_the_face_region(weights, photo):
    det = {"name": "tiny-face-det", "path": weights["face_det"], "device": "cpu"}
    attrs = [{"attribute": "smiling", "prompt": "make the person smile"}, "add glasses"]
    s = _synth("facial_attribute", _spec("ip2p", weights["ip2p"], **DIFFUSERS, detector=det,
                                          detector_threshold=0.0, min_face=0.0, attributes=attrs))
    seen = set()
    for seed in range(4):
        (d,) = s.make(photo, np.random.default_rng(seed))
        assert (d.task, d.subtask) == ("semantic_editing", "facial_attribute")
        assert d.source is photo and d.target.pil.size == photo.pil.size
        seen.add((d.params["attribute"], d.params["prompt"]))
        x0, y0, x1, y1 = d.params["edit_box"]
        assert d.params["region"] == "face" and 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 80
        src, tgt = photo.array(), d.target.array()
        outside = np.ones(src.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert (src[outside] == tgt[outside]).all(), "pixels outside the face box are the source's"
        assert (src[y0:y1, x0:x1] != tgt[y0:y1, x0:x1]).any()
    assert seen <= {("smiling", "make the person smile"), ("add glasses", "add glasses")} and len(seen) == 2


def test_facial_attribute_whole_image_and_errors(weights, photo):
    from acedata.synth.families.face import FACE_ATTRIBUTES, NoFaceFound

    s = _synth("facial_attribute", _spec("ip2p", weights["ip2p"], **DIFFUSERS, region="whole"))
    (d,) = s.make(photo, np.random.default_rng(0))
    w, h = d.target.pil.size
    assert w % 8 == 0 and h % 8 == 0 and d.source.pil.size == (w, h) and d.source.id != d.target.id
    assert (d.params["attribute"], d.params["prompt"]) in FACE_ATTRIBUTES and d.params["region"] == "whole"
    with pytest.raises(UserError, match="detector"):
        _synth("facial_attribute", _spec("ip2p", weights["ip2p"], **DIFFUSERS))
    det = {"name": "tiny-face-det", "path": weights["face_det"], "device": "cpu"}
    with pytest.raises(UserError, match="no class named"):
        _synth("facial_attribute", _spec("ip2p", weights["ip2p"], **DIFFUSERS, detector=det,
                                         detector_labels=["person"]))
    none = _synth("facial_attribute", _spec("ip2p", weights["ip2p"], **DIFFUSERS, detector=det,
                                            detector_threshold=1.01))
    with pytest.raises(NoFaceFound):
        none.make(photo, np.random.default_rng(0))


def test_facial_attribute_templates_use_the_attribute():
    from acedata.instruct.templates import load_bank

    bank = load_bank()
    assert bank.canonical("semantic_editing", "facial_attribute") is not None
    texts = {bank.choose("semantic_editing", "facial_attribute", 1,
                         {"attribute": "wearing glasses", "prompt": "add glasses"}, seed, "k").text
             for seed in range(40)}
    assert all("{image}" in t for t in texts)
    assert any("wearing glasses" in t for t in texts) and any("add glasses" in t for t in texts)


# --- model masks --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["segmentation", "sam"])
def test_model_masks_for_repaint_remove_and_layers(weights, photo, kind):
    path = weights["segformer" if kind == "segmentation" else "sam"]
    spec = _spec(kind, path, mask_model=kind, sam_points=6)
    inpaint = _synth("inpaint_model_mask", spec)
    mask, params = inpaint.masker.mask(photo.array(), np.random.default_rng(0), 0.0, 1.0)
    assert mask.shape == (80, 96) and set(np.unique(mask)) <= {0, 1} and params["method"] in ("sam",
                                                                                               "segmentation_model")
    for name in ("inpaint_model_mask", "remove_add_model_mask", "layers_model_mask"):
        s = inpaint if name == "inpaint_model_mask" else _synth(name, spec)
        drafts = s.make(photo, np.random.default_rng(1))
        assert drafts[0].params["mask_source"] in ("model", "weight_free_fallback")
        assert s.weights_id.startswith(f"tiny-{kind}@")
        for d in drafts:
            if d.mask is not None:
                m = np.asarray(d.mask.pil)
                assert set(np.unique(m)) <= {0, 255} and m.shape == (80, 96)
                outside = m == 0
                assert (d.source.array()[outside] == d.target.array()[outside]).all()
    # the weight-free synthesizers keep their masks unless a spec asks for a model
    plain = REGISTRY["inpaint_segment"]()
    assert plain.masker is None and "mask_source" not in plain.make(photo, np.random.default_rng(1))[0].params
    opted = REGISTRY["layers"]()
    opted.load(_spec(kind, path, mask_model=kind, mask_source="model"))
    assert opted.masker is not None and opted.make(photo, np.random.default_rng(1))[0].params["mask_source"] in (
        "model", "weight_free_fallback")
    with pytest.raises(UserError, match="mask_source"):
        REGISTRY["remove_add"]().load(_spec(kind, path, mask_source="sam"))
    with pytest.raises(UserError, match="mask model"):
        REGISTRY["layers_model_mask"]().load(None)


def test_segmentation_mask_names_its_class(weights, photo):
    s = _synth("remove_add_model_mask", _spec("segformer", weights["segformer"]))
    mask, params = s.masker.mask(photo.array(), np.random.default_rng(0), 0.0, 1.0)
    from acedata.synth.support.tiny_models import SEG_CLASSES

    assert params["object"] == s.masker.model.config.id2label[params["class_id"]] == SEG_CLASSES[params["class_id"]]
    assert 0 < mask.mean() == pytest.approx(params["segment_frac"], abs=1e-4)
    assert s.masker.mask(photo.array(), np.random.default_rng(0), 0.999, 1.0) is None


# --- the stage ----------------------------------------------------------------------------


def test_stage_runs_pose_face_and_model_masks(weights, demo_corpus, tmp_path):
    from acedata.pipeline import run_stages
    from acedata.stages.ingest import IngestConfig
    from acedata.stages.synthesize import SynthesizeConfig

    det = {"name": "tiny-face-det", "path": weights["face_det"], "device": "cpu"}
    models = {
        "pose": _spec("vitpose", weights["vitpose"], keypoint_threshold=-1.0),
        "facial_attribute": _spec("ip2p", weights["ip2p"], **DIFFUSERS, detector=det, detector_threshold=0.0,
                                  min_face=0.0),
        "inpaint_model_mask": _spec("sam", weights["sam"], mask_model="sam"),
    }
    cfg = SynthesizeConfig(name="synthesize", synthesizers=sorted(models), models=models, max_images=2,
                           max_side=96, chain_fraction=0)
    run = run_stages([IngestConfig(name="ingest", sources=[demo_corpus]), cfg], str(tmp_path), executor="local")
    counts = run["stages"][1]["counts"]
    # max_images=2: a hash sample of about 2 photos (acedata.synth.plan), each drawn by all 4
    assert counts["candidates"] == counts["pairs"] + counts["quarantine"] == counts["photos"] * 4 >= 4
    pairs = shards.read_table(str(tmp_path / "synthesize" / "pairs")).to_pylist()
    by_sub = {(p["task"], p["subtask"]) for p in pairs}
    assert ("low_level", "pose") in by_sub and ("controllable", "pose") in by_sub
    for p in pairs:
        prov = json.loads(p["provenance"])
        assert prov["weights"].startswith("tiny-")
        if p["subtask"] == "facial_attribute":
            assert prov["params"]["attribute"] and prov["params"]["prompt"]
