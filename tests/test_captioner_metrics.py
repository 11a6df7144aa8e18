"""Captioner metrics against values worked out by hand, and the served request layout against
the training layout."""

from __future__ import annotations

import math

import pytest

from acedata.captioner import metrics as m


def test_edit_distance_by_hand():
    assert m.edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert m.edit_distance("", "abc") == 3 and m.edit_distance("abc", "abc") == 0
    assert m.normalised_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert m.normalised_edit_distance("Make  IT red", "make it red") == 0.0  # whitespace/case normalised
    assert m.normalised_edit_distance("", "") == 0.0


def test_indicator_validity_and_exact_match():
    assert m.indicator_valid("Turn {image} red.", 1)
    assert not m.indicator_valid("Turn it red.", 1)  # dropped
    assert not m.indicator_valid("Turn {image} like {image2}.", 1)  # invented
    assert m.indicator_valid("Put {image2} into {image1}.", 2)
    assert not m.indicator_valid("Put {image} into {image1}.", 2)
    assert m.exact_match(" Turn {image}  RED.", "turn {image} red.") and not m.exact_match("a", "b")


def test_bleu_by_hand():
    ref = "add snow to the old house now"  # 7 tokens
    assert m.bleu([ref], [ref]) == pytest.approx(100.0)
    # every n-gram of the 5-token prediction is in the reference: precisions 1, brevity penalty e^(1 - 7/5)
    assert m.bleu(["add snow to the old"], [ref]) == pytest.approx(100 * math.exp(1 - 7 / 5), abs=1e-3)


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e") = "a c d" = 3 tokens: P = R = 3/4, F = 0.75
    assert m.rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)
    # LCS 2 of pred 2 / ref 4: P = 1, R = 1/2, F = 2/3; mean with a perfect 1.0
    assert m.rouge_l(["a d", "x y"], ["a b c d", "x y"]) == pytest.approx((2 / 3 + 1) / 2)


def test_summary_with_the_minilm_embedder():
    preds = ["Turn {image} into a watercolor painting.", "Remove the car."]
    refs = ["Turn {image} into a watercolor painting.", "Remove the red car from {image}."]
    s = m.summarise(preds, refs, [1, 1])
    assert s["records"] == 2 and s["indicator_valid"] == 0.5 and s["exact_match"] == 0.5
    sims = m.sentence_similarity(preds, refs)
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and 0.3 < sims[1] < 0.99
    assert s["minilm_similarity"] == pytest.approx(sum(sims) / 2, abs=1e-6)
    assert s["edit_distance"] == pytest.approx(m.normalised_edit_distance(preds[1], refs[1]) / 2)


def test_served_request_layout_is_the_training_layout():
    """`image_labels: true` sends exactly the human turn `acedata export-captioner` writes."""
    from acedata.captioner.data import user_parts
    from acedata.instruct.captioner import CAPTIONER_PROMPT, MLLMConfig, image_message

    png = __import__("base64").b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
    cfg = MLLMConfig(endpoint={"model": "x"}, image_labels=True)
    [msg] = image_message(CAPTIONER_PROMPT, [png, png], cfg)
    served = [p["text"] if p["type"] == "text" else "<image>" for p in msg["content"]]
    human = "Image-1: <image>\nImage-2: <image>\n" + CAPTIONER_PROMPT  # export.py's internvl record
    trained = [p["text"] if p["type"] == "text" else "<image>" for p in user_parts(human, 2)]
    assert served == trained
