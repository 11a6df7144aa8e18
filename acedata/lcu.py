"""Helpers for Long-context Condition Units: indicator renumbering, chain walking, sample plans.

Frame order and image indicators (DESIGN.md §6)
-----------------------------------------------
The trainer packs one LCU sample as frames::

    frame 0            the noised target of the current CU
    condition frames   for each history CU, oldest first, its inputs in input order;
                       then the current CU's inputs in input order

Condition frame k (1-based) carries indicator index k-1; the target carries index N, the
number of condition frames. Indicator index i is written in text as ``{image}`` for i = 0
and ``{image<i>}`` for i >= 1 (the ten T5 tokens ``{image}``, ``{image1}`` ... ``{image9}``),
so at most 9 condition frames fit (the target then uses ``{image9}``).

Instruction rows name a CU's own inputs locally: ``{image}`` (single input) or ``{image1}``,
``{image2}`` ... (multi-input, 1-based in input order). Assembly rewrites each CU's local
indicators to the global index of the frame they name: local input j (1-based; ``{image}``
counts as j = 1) of a CU whose first input is preceded by `offset` condition frames becomes
index ``offset + j - 1``. Example, two history CUs and a current CU, one input each::

    history[0]  "make it {image} sunny"     -> "make it {image} sunny"      (frame 1, index 0)
    history[1]  "add a hat in {image}"      -> "add a hat in {image1}"      (frame 2, index 1)
    current     "remove the dog in {image}" -> "remove the dog in {image2}" (frame 3, index 2)
    target                                                                   (frame 0, index 3)

A single-turn single-input row keeps ``{image}``; a single-turn reference generation with
``{image1}``/``{image2}`` becomes ``{image}``/``{image1}``. This is the renumbering the
official ACE release applies to a history prompt list (every prompt after the first gets
``{image<i>}``), generalised to CUs with several inputs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

INDICATOR = re.compile(r"\{image(\d*)\}")
MAX_INDICATOR = 9  # the trainer embeds {image}, {image1} ... {image9}


class IndicatorError(ValueError):
    """An instruction names an input its CU does not have, or an index past {image9}."""


def indicator(index: int) -> str:
    """The text token of indicator index `index` (0 -> "{image}")."""
    if not 0 <= index <= MAX_INDICATOR:
        raise IndicatorError(f"indicator index {index} outside 0..{MAX_INDICATOR}")
    return "{image}" if index == 0 else f"{{image{index}}}"


def local_refs(instruction: str) -> list[int]:
    """The 1-based local inputs an instruction names, in text order ({image} = 1)."""
    return [int(m.group(1) or 1) for m in INDICATOR.finditer(instruction)]


def renumber(instruction: str, n_inputs: int, offset: int) -> str:
    """Rewrite local indicators of a CU with `n_inputs` inputs preceded by `offset` frames."""

    def repl(m: re.Match[str]) -> str:
        j = int(m.group(1) or 1)
        if j < 1 or j > n_inputs:
            raise IndicatorError(f"'{m.group(0)}' names input {j} but the CU has {n_inputs} input(s)")
        return indicator(offset + j - 1)

    return INDICATOR.sub(repl, instruction)


def frame_offsets(input_counts: list[int]) -> list[int]:
    """Condition frames before each CU's first input (CUs oldest first, current last)."""
    offsets, total = [], 0
    for n in input_counts:
        offsets.append(total)
        total += n
    return offsets


def renumber_lcu(instructions: list[str], input_counts: list[int]) -> list[str]:
    """Renumber every CU of a sample (history oldest first, current last) to frame indices."""
    offsets = frame_offsets(input_counts)
    n_frames = offsets[-1] + input_counts[-1] if input_counts else 0
    if n_frames > MAX_INDICATOR:
        raise IndicatorError(f"{n_frames} condition frames; the target index must stay <= {MAX_INDICATOR}")
    return [renumber(t, n, o) for t, n, o in zip(instructions, input_counts, offsets)]


# --- pairs and chains ------------------------------------------------------------------


@dataclass
class PairMeta:
    """The columns of a pair that assembly plans with (no image bytes)."""

    pair_id: str
    source_id: str
    target_id: str
    task: str
    subtask: str
    mask_id: str | None = None
    extra_input_ids: list[str] = field(default_factory=list)
    set_id: int | None = None
    parent_pair_id: str | None = None

    @property
    def input_ids(self) -> list[str]:
        return [self.source_id, *self.extra_input_ids]

    @property
    def image_ids(self) -> list[str]:
        ids = [*self.input_ids, self.target_id]
        return ids + ([self.mask_id] if self.mask_id else [])


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process and Python version."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return int.from_bytes(h.digest()[:8], "big")


class ChainIndex:
    """Finds the earlier CUs of a pair: its synthesis parents, or a path through its mining set.

    A synthesis chain follows `parent_pair_id` (the parent's target must be this pair's
    source). A mined pair B->C of set S continues with a pair X->B of the same set whose
    source X is not yet on the path (so paths never revisit an image); when several exist,
    one is picked by a seeded hash, so plans are reproducible.
    """

    def __init__(self, pairs: dict[str, PairMeta], usable: Callable[[str], bool], seed: int = 0) -> None:
        self.pairs = pairs
        self.usable = usable  # pair has an instruction and all its images
        self.seed = seed
        self.into: dict[tuple[int, str], list[str]] = {}
        for p in pairs.values():
            if p.set_id is not None and p.task == "natural_edit" and p.parent_pair_id is None:
                self.into.setdefault((p.set_id, p.target_id), []).append(p.pair_id)
        for v in self.into.values():
            v.sort()

    def predecessor(self, p: PairMeta, on_path: set[str], salt: str) -> PairMeta | None:
        if p.parent_pair_id is not None:
            parent = self.pairs.get(p.parent_pair_id)
            if parent is None or parent.target_id != p.source_id or not self.usable(parent.pair_id):
                return None
            return parent if parent.source_id not in on_path else None
        if p.set_id is None or p.task != "natural_edit":
            return None
        options = [
            q
            for q in self.into.get((p.set_id, p.source_id), [])
            if self.usable(q) and self.pairs[q].source_id not in on_path
        ]
        if not options:
            return None
        return self.pairs[options[stable_hash(self.seed, salt, p.pair_id) % len(options)]]

    def history(self, pair_id: str, m: int, max_frames: int = MAX_INDICATOR) -> list[str]:
        """Up to `m` earlier pair ids, oldest first, keeping all condition frames <= max_frames."""
        cur = self.pairs[pair_id]
        on_path = {*cur.input_ids, cur.target_id}
        frames = len(cur.input_ids)
        chain: list[str] = []
        while len(chain) < m:
            prev = self.predecessor(cur, on_path, pair_id)
            if prev is None or frames + len(prev.input_ids) > max_frames:
                break
            chain.append(prev.pair_id)
            on_path.update(prev.input_ids)
            frames += len(prev.input_ids)
            cur = prev
        return chain[::-1]
