"""Reference generation: several images of one subject (a pair-mining set, else an ingest
`group`) -> another image of it. Inputs are existing image rows; nothing new is drawn.
The first reference is the pair's source, the rest go to `extra_input_ids` in order.
"""

from __future__ import annotations

import numpy as np

from acedata.synth.base import Draft, Img, Synthesizer, register


@register
class Reference(Synthesizer):
    name = "reference"
    task = "reference_generation"
    subtasks = ("single_reference", "multi_reference")
    inputs = "group"
    algorithm = "same-subject set: references -> held-out member"
    max_refs = 3

    def make_group(self, images: list[Img], rng: np.random.Generator) -> list[Draft]:
        if len(images) < 2:
            return []
        drafts = []
        for t in range(len(images)):
            others = [i for i in range(len(images)) if i != t]
            n = int(rng.integers(1, min(self.max_refs, len(others)) + 1))
            refs = [images[i] for i in rng.choice(others, size=n, replace=False)]
            sub = "single_reference" if n == 1 else "multi_reference"
            drafts.append(Draft(self.task, sub, refs[0], images[t], extras=refs[1:],
                                params={"references": n}, synthesizer=self.name))
        return drafts
