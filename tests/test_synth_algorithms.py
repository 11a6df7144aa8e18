"""Each weight-free synthesizer makes valid pairs: sizes, binary aligned masks, real inverses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from acedata.synth import REGISTRY, Img, load_all, weight_free
from acedata.synth.support.filters import check
from acedata.synth.support.pixels import composite

load_all()


@pytest.fixture(scope="module")
def photos() -> list[Img]:
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        im = im.resize((im.width * 160 // max(im.size), im.height * 160 // max(im.size)))
        out.append(Img(im, "image", image_id=name.ljust(64, "0").encode().hex()[:64]))
    return out


PER_IMAGE = [n for n in weight_free() if REGISTRY[n].inputs == "image"]


def test_registry_declares_every_family():
    families = {REGISTRY[n].task for n in REGISTRY} | {REGISTRY[n].inverse_task for n in REGISTRY} - {None}
    assert {"low_level", "controllable", "repainting", "element_editing", "semantic_editing", "layer_editing",
            "reference_generation"} <= families
    for name, cls in REGISTRY.items():
        d = cls().describe()
        assert d["name"] == name and d["subtasks"] and isinstance(d["needs_weights"], bool)
    assert {"depth", "instruct_pix2pix", "sd_inpaint_replace"} <= {n for n, c in REGISTRY.items() if c.needs_weights}


@pytest.mark.parametrize("name", PER_IMAGE)
def test_synthesizer_makes_valid_pairs(name, photos):
    synth = REGISTRY[name]()
    accepted = total = 0
    for src in photos:
        drafts = synth.make(src, np.random.default_rng(0), "a photo")
        assert drafts
        again = synth.make(src, np.random.default_rng(0), "a photo")
        assert [d.target.id for d in drafts] == [d.target.id for d in again], "same seed, same pixels"
        for d in drafts:
            assert d.task in {synth.task, synth.inverse_task} and d.subtask in synth.subtasks
            assert d.source.pil.size == d.target.pil.size == src.pil.size
            assert d.source.id != d.target.id
            if d.mask is not None:
                m = np.asarray(d.mask.pil)
                assert d.mask.kind == "mask" and m.shape == src.array().shape[:2]
                assert set(np.unique(m)) <= {0, 255} and (m > 0).any()
                s, t = d.source.array().astype(int), d.target.array().astype(int)
                assert (s[m == 0] == t[m == 0]).all(), "source and target differ outside the mask"
                assert (np.abs(s - t).max(2)[m > 0] > 0).mean() > 0.5, "the masked region changed"
            accepted += check(d).ok
            total += 1
    assert accepted >= total / 2, f"{name}: filters rejected most pairs"


@pytest.mark.parametrize("name", [n for n in PER_IMAGE if REGISTRY[n].inverse_task])
def test_condition_pairs_are_inverse(name, photos):
    d1, d2 = REGISTRY[name]().make(photos[0], np.random.default_rng(1))
    assert (d1.task, d2.task) == ("low_level", "controllable") and d1.subtask == d2.subtask == name
    assert d1.source.id == d2.target.id == photos[0].id and d1.target is d2.source
    assert d1.target.kind == "condition" and d1.target.is_new and not d1.source.is_new


def test_canny_marks_edges_of_a_square():
    a = np.zeros((96, 96, 3), np.uint8)
    a[24:72, 24:72] = 200
    cond = REGISTRY["canny"]().condition(a, np.random.default_rng(0))[0][:, :, 0]
    assert cond[24:72, 20:28].any() and not cond[40:56, 40:56].any() and not cond[:10, :10].any()


def test_repainting_fills_mask_with_gray(photos):
    for name in ("inpaint_brush", "inpaint_box", "inpaint_segment", "outpaint"):
        (d,) = REGISTRY[name]().make(photos[1], np.random.default_rng(3))
        m = np.asarray(d.mask.pil) > 0
        assert (d.source.array()[m] == 128).all() and d.target is photos[1]
        if name == "outpaint":
            assert m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
            assert not m[m.shape[0] // 2, m.shape[1] // 2]


def test_remove_and_add_are_reverse(photos):
    remove, add = REGISTRY["remove_add"]().make(photos[0], np.random.default_rng(5))
    assert (remove.subtask, add.subtask) == ("remove", "add")
    assert remove.source.id == add.target.id and remove.target.id == add.source.id and remove.mask is add.mask


def test_layers_decompose_and_fuse(photos):
    subj, bg, fuse = REGISTRY["layers"]().make(photos[2], np.random.default_rng(2))
    layer = np.asarray(subj.target.pil)
    assert subj.target.pil.mode == "RGBA" and 0 < (layer[:, :, 3] > 0).mean() < 1
    assert (layer[:, :, :3][layer[:, :, 3] == 0] == 255).all(), "outside the subject the layer is white"
    assert fuse.source.id == bg.target.id and fuse.extras[0].id == subj.target.id
    assert np.array_equal(composite(bg.target.array(), layer), fuse.target.array()), "fuse re-composites"
    hard = (layer[:, :, 3] == 255)
    assert np.array_equal(fuse.target.array()[hard], photos[2].array()[hard])


def test_reference_uses_other_members(photos):
    drafts = REGISTRY["reference"]().make_group(photos, np.random.default_rng(0))
    assert len(drafts) == len(photos)
    for d in drafts:
        ids = [d.source.id] + [e.id for e in d.extras]
        assert d.target.id not in ids and len(set(ids)) == len(ids) >= 1
        assert d.subtask == ("single_reference" if len(ids) == 1 else "multi_reference")
    assert REGISTRY["reference"]().make_group(photos[:1], np.random.default_rng(0)) == []


def test_synthesizers_command_lists_the_registry(capsys):
    import json

    from acedata.cli import main

    assert main(["synthesizers", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(REGISTRY)
    assert listed["depth"]["needs_weights"] and not listed["canny"]["needs_weights"]
    assert listed["canny"]["inverse_task"] == "controllable"
