"""The assemble stage's settings (DESIGN.md §3: LCU shards)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from acedata.config import StageConfig


class AssembleConfig(StageConfig):
    max_history: int = Field(3, ge=0)  # m: history CUs per multi-turn row
    multi_turn: bool = True
    instruction_variants: Literal["all", "one"] = "all"  # single-turn rows per pair
    include_t2i: bool = True
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    # rows per output unit (about: units are ranges of the shuffle hash); a unit holds its rows'
    # image bytes in memory (~500 x 3 images of a few 100 KB)
    rows_per_unit: int = Field(500, ge=1)
    max_condition_frames: int = Field(9, ge=1, le=9)  # the target's indicator index stays <= 9
    dataset_card: bool = True
    reviews: bool = True  # apply human review decisions when the run (or inputs.reviews) has them
    # planning: input rows per shuffle bucket. A planning unit holds about this many rows as Python
    # objects (~1-2 KB each: a few hundred MB); the output does not depend on it
    shuffle_rows: int = Field(100_000, ge=1)
