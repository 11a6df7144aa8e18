"""Contact sheet rows carry the pair's instruction, and a chained pair its whole chain."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from acedata.synth.support.contact_sheet import TEXT_W, chain_of, render, text_lines


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "PNG")
    return buf.getvalue()


PAIRS = [
    {"pair_id": "p1", "task": "semantic_editing", "subtask": "cartoon", "source_id": "a", "target_id": "b",
     "parent_pair_id": None},
    {"pair_id": "p2", "task": "semantic_editing", "subtask": "watercolor", "source_id": "b", "target_id": "c",
     "parent_pair_id": "p1"},
    {"pair_id": "p3", "task": "semantic_editing", "subtask": "color_grading", "source_id": "c", "target_id": "d",
     "parent_pair_id": "p2"},
]
BY_ID = {p["pair_id"]: p for p in PAIRS}
TEXT = {"p1": "Make {image} a cartoon.", "p2": "Now paint {image} in watercolor.", "p3": "Give {image} a warm grade."}


def test_a_chain_is_listed_oldest_turn_first_with_the_pairs_own_turn_marked():
    assert [q["pair_id"] for q in chain_of(PAIRS[2], BY_ID)] == ["p1", "p2", "p3"]
    lines = text_lines(PAIRS[2], BY_ID, TEXT)
    assert lines == [("turn 1: Make {image} a cartoon.", False), ("turn 2: Now paint {image} in watercolor.", False),
                     ("turn 3: Give {image} a warm grade.", True)]
    assert text_lines(PAIRS[0], BY_ID, TEXT) == [("Make {image} a cartoon.", True)]
    assert text_lines(PAIRS[0], BY_ID, {"p9": "x"}) == [("(no instruction)", True)]
    assert "instruct stage" in text_lines(PAIRS[0], BY_ID, {})[0][0]
    long = text_lines(PAIRS[0], BY_ID, {"p1": "word " * 40})
    assert len(long) > 2 and all(own for _, own in long)  # wrapped, one turn


def test_the_instruction_column_is_drawn_beside_the_images():
    images = {i: _png(c) for i, c in zip("abcd", [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)])}
    texts = [text_lines(p, BY_ID, TEXT) for p in PAIRS]
    sheet = render(PAIRS, images, "semantic_editing", 48, texts)
    bare = render(PAIRS, images, "semantic_editing", 48)
    assert sheet.width == bare.width + TEXT_W
    column = np.asarray(sheet.convert("L"))[:, bare.width:]
    ink_rows = np.flatnonzero((column < 128).any(axis=1))
    assert len(ink_rows) > 0
    row3 = np.asarray(sheet.convert("L"))[24 + 2 * (48 + 14 + 4):, bare.width:]
    assert (row3 < 128).any(axis=1).sum() >= 2 * 8  # three turns: at least three lines of glyphs
