"""The pass-2 scorer contract and its registry (scorers register like stages).

A scorer gives, inside a turn-1 set, a task-specific score for every member pair. Each
scorer module defines a `Scorer` subclass with a `name`, an `Options` pydantic model
(validated when the spec is loaded, so a typo in `scorer_options` is an error naming the
key) and `@register_scorer`. To add one: copy `siglip.py`, then import it in
`acedata/mining/scorers/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from acedata.config import Strict, validation_message
from acedata.errors import UserError


@dataclass
class PairScores:
    src: np.ndarray  # local indices into the set, src < dst
    dst: np.ndarray
    score: np.ndarray  # float32, nan where the scorer could not score the pair


class NoOptions(Strict):
    pass


class Scorer:
    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    needs_images: ClassVar[bool] = False
    loads_model: ClassVar[bool] = False  # True: setup() loads weights, so the pair stage runs as an actor pool
    default_band: ClassVar[tuple[float, float]] = (0.0, 1.0)
    # True: a pair's score is its embedding cosine as `pairs.pair_dots` computes it (bit for bit, float32 rows),
    # so pair enumeration reuses the scores instead of computing every product again
    cosine_scores: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def setup(self) -> None:
        """Load weights (once per worker)."""

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        raise NotImplementedError

    def score_sets(self, emb: np.ndarray, sets: list[np.ndarray],
                   images_of: Callable[[np.ndarray], list[bytes | None]] | None) -> list[PairScores]:
        """`score_set` for each set (rows of `emb`); a scorer that can batch the sets overrides this."""
        return [self.score_set(emb[m], images_of(m) if images_of is not None else None) for m in sets]

    def score_sets_flat(self, emb: np.ndarray, sets: list[np.ndarray],
                        images_of: Callable[[np.ndarray], list[bytes | None]] | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`score_sets` laid end to end: (src, dst as int64, score as float32, pairs per set)."""
        scored = self.score_sets(emb, sets, images_of)
        n = np.array([len(ps.src) for ps in scored], np.int64)
        if not scored:
            z = np.zeros(0, np.int64)
            return z, z, np.zeros(0, np.float32), n
        return (np.concatenate([ps.src for ps in scored]).astype(np.int64),
                np.concatenate([ps.dst for ps in scored]).astype(np.int64),
                np.concatenate([np.asarray(ps.score, np.float32) for ps in scored]), n)

    @property
    def model_id(self) -> str:
        return self.name


SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available to `pair` specs by its `name`."""
    SCORERS[cls.name] = cls
    return cls


def scorer_class(name: str) -> type[Scorer]:
    try:
        return SCORERS[name]
    except KeyError:
        raise UserError(f"unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}") from None


def scorer_options(name: str, options: dict | None) -> BaseModel:
    """`options` validated against the scorer's Options model (UserError naming the key)."""
    cls = scorer_class(name)
    try:
        return cls.Options.model_validate(options or {})
    except ValidationError as e:
        raise UserError(f"scorer {name!r}: bad options: {validation_message(e, 'scorer_options')}") from None


def make_scorer(name: str, options: dict | None = None) -> Scorer:
    return scorer_class(name)(scorer_options(name, options))
