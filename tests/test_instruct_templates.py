"""The template bank: coverage, determinism, slots, indicators, fallbacks."""

from __future__ import annotations

import pytest

from acedata.errors import UserError
from acedata.instruct.templates import FAMILIES, TemplateBank, indicators_in, load_bank, tidy
from acedata.synth import task_subtasks

# Every task/subtask a registered synthesizer produces: a new synthesizer is covered here without
# editing this file, and fails here until the template bank has phrasings for it.
PRODUCED = sorted(task_subtasks())
SLOTS = {"caption": "a red bicycle", "object": "dog", "new_object": "cat", "style": "watercolor",
         "attribute": "smiling", "prompt": "make it snowy"}


def test_every_produced_subtask_has_its_own_templates():
    bank = load_bank()
    assert set(FAMILIES) <= set(bank.families)
    assert len(PRODUCED) > 30 and {f for f, _ in PRODUCED} == set(FAMILIES) - {"natural_edit", "text_to_image"}
    for family, s in PRODUCED:
        canon = bank.canonical(family, s)
        assert canon is not None, (family, s)
        n = {"fuse": 2, "multi_reference": 3}.get(s, 1)
        ch = bank.choose(family, s, n, SLOTS, 0, f"{family}-{s}")
        assert ch.fallback is None and ch.key.startswith(f"{family}/{canon}#"), (family, s, ch)
        assert not [x for x in indicators_in(ch.text) if x not in ("{image}", "{image1}", "{image2}", "{image3}")]
        assert "{" not in ch.text.replace("{image}", "").replace("{image1}", "").replace("{image2}", "").replace(
            "{image3}", "")
    # natural pairs (subtask = the miner's scorer name) use the family list by design
    ch = bank.choose("natural_edit", "siglip", 1, {"caption": "x y"}, 0, "k")
    assert ch.text and ch.fallback is None


def test_choice_is_deterministic_and_varies_with_seed_and_pair():
    bank = load_bank()
    a = [bank.choose("low_level", "canny", 1, {}, 0, f"p{i}").text for i in range(30)]
    b = [bank.choose("low_level", "canny", 1, {}, 0, f"p{i}").text for i in range(30)]
    c = [bank.choose("low_level", "canny", 1, {}, 1, f"p{i}").text for i in range(30)]
    assert a == b
    assert a != c
    assert len(set(a)) >= 4  # many phrasings are used


def test_slots_limit_the_eligible_templates():
    bank = load_bank()
    with_obj = {bank.choose("element_editing", "remove", 1, {"object": "umbrella"}, 0, f"p{i}").text
                for i in range(40)}
    without = {bank.choose("element_editing", "remove", 1, {}, 0, f"p{i}").text for i in range(40)}
    assert any("umbrella" in t for t in with_obj)
    assert all("{object}" not in t and "umbrella" not in t for t in without)
    ctrl = bank.choose("controllable", "depth", 1, {"caption": "a lighthouse at dusk."}, 3, "z")
    assert "{caption}" not in ctrl.text


def test_multi_input_indicators_follow_input_count():
    bank = load_bank()
    fuse = bank.choose("layer_editing", "fuse", 2, {}, 0, "f1")
    assert set(indicators_in(fuse.text)) == {"{image1}", "{image2}"}
    ref = bank.choose("reference_generation", "", 3, {"caption": "a cat in a hat"}, 0, "r1")
    assert set(indicators_in(ref.text)) == {"{image1}", "{image2}", "{image3}"}
    single = bank.choose("reference_generation", "", 1, {}, 0, "r2")
    assert indicators_in(single.text) == ["{image}"]


def test_unknown_subtask_falls_back_to_family_and_says_so():
    bank = load_bank()
    ch = bank.choose("semantic_editing", "relighting", 1, {}, 0, "p")
    assert ch.fallback == "family_default" and ch.key.startswith("semantic_editing/default#")
    alias = bank.choose("semantic_editing", "Face-Attributes", 1, {}, 0, "p")
    assert alias.key.startswith("semantic_editing/facial#")
    unknown = bank.choose("no_such_family", "x", 1, {}, 0, "p")
    assert unknown.fallback == "last_resort" and "{image}" in unknown.text


def test_caption_rows_and_tidy():
    bank = load_bank()
    assert bank.caption("  a red  bicycle.", 0, "i").text.endswith("red bicycle.")
    assert tidy("generate   an image  of {image}:  ") == "Generate an image of {image}."


def test_bad_template_folder_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TemplateBank(tmp_path / "missing")
    (tmp_path / "x.yaml").write_text("family: x\ndefault: ['Edit {image']\n")
    with pytest.raises(UserError, match="malformed"):
        TemplateBank(tmp_path)


def test_slots_from_synthesizer_provenance():
    import json

    from acedata.instruct.slots import pair_slots

    def slots(subtask, prov, images=None):
        pair = {"task": "x", "subtask": subtask, "source_id": "s", "target_id": "t", "provenance": json.dumps(prov)}
        return pair_slots(pair, images or {})

    # replace: the synthesizer's `object`/`prompt` is the new object, not the one replaced
    rep = slots("replace", {"params": {"object": "a cat", "prompt": "a cat"}})
    assert rep["new_object"] == "a cat" and "object" not in rep
    assert slots("color_grading", {"params": {"look": "teal_orange"}})["style"] == "teal orange"
    assert slots("instruct_edit", {"params": {"prompt": "make it winter."}})["prompt"] == "make it winter"
    assert slots("canny", {"source_caption": "a dog"})["caption"] == "a dog"
    assert slots("canny", {}, {"t": {"caption": " a  cat. "}})["caption"] == "a cat"
    assert slots("canny", "not json") == {}
    text = load_bank().choose("element_editing", "replace", 1, slots("replace", {"params": {"object": "a lamp"}}),
                              0, "p").text
    assert "a lamp" in text


def test_the_slots_column_is_read_before_provenance():
    import json

    from acedata.instruct.slots import pair_slots

    prov = json.dumps({"params": {"look": "sepia", "prompt": "make it old"}, "source_caption": "a barn"})
    pair = {"task": "semantic_editing", "subtask": "color_grading", "source_id": "s", "target_id": "t",
            "provenance": prov, "slots": {"style": "teal orange", "object": None}}
    assert pair_slots(pair, {}) == {"style": "teal orange"}  # stated slots only: nothing guessed
    assert pair_slots({**pair, "slots": {"style": None}}, {"t": {"caption": "a red barn."}}) == {"caption": "a red barn"}
    assert pair_slots({**pair, "slots": None}, {})["style"] == "sepia"  # no column: provenance keys


def test_synthesizers_state_their_slots():
    import numpy as np
    from PIL import Image

    from acedata.synth import REGISTRY, Img, load_all
    from acedata.synth.base import Draft

    load_all()
    photo = Img(Image.new("RGB", (64, 48), (120, 60, 30)), "image", "c" * 64)
    (d,) = REGISTRY["color_grading"]().make(photo, np.random.default_rng(0))
    assert d.slots["style"] == d.params["look"].replace("_", " ")
    (w,) = REGISTRY["watercolor"]().make(photo, np.random.default_rng(0))
    assert w.slots == {"style": "watercolor"}
    with pytest.raises(ValueError, match="unknown template slots"):
        Draft("low_level", "canny", photo, photo, slots={"objct": "cat"})
