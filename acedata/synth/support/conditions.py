"""The condition-map synthesizer shape shared by low-level analysis, model conditions and pose.

A condition synthesizer computes one map from a photo and emits two pairs over the same pixels:
`low_level/<subtask>` (photo -> map) and `controllable/<subtask>` (map -> photo).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from acedata.synth.base import Draft, Img, Synthesizer, new_img


class ConditionSynth(Synthesizer):
    task = "low_level"
    inverse_task = "controllable"

    def condition(self, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        cond, params = self.condition(src.array(), rng)
        cmap = new_img(cond, "condition", condition=self.subtasks[0])
        sub = self.subtasks[0]
        return [
            Draft("low_level", sub, src, cmap, params=params, synthesizer=self.name),
            Draft("controllable", sub, cmap, src, params=params, synthesizer=self.name),
        ]
