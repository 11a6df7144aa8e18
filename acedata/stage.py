"""The stage contract. Stage code never imports Ray; `acedata.runtime` runs stages.

A stage splits its input into work units on the driver (`plan`), processes each unit
with a pure function over Arrow tables (`process`), may plan further waves of units
from what earlier waves wrote (`next_wave`), and may do a final driver-side step
(`finish`). A model stage loads its model once per worker in `setup`.

Each unit's outputs are written under names derived from the unit id and committed
atomically, with a done-marker written last: a retried or resumed unit overwrites
its own files, so a stage's output is exact however often workers die.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from acedata import ids
from acedata.config import StageConfig

REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to pipeline specs by its `kind`."""
    REGISTRY[cls.kind] = cls
    return cls


@dataclass
class WorkUnit:
    id: str  # stable across reruns: names the unit's output files
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitResult:
    tables: dict[str, pa.Table]  # output table name -> rows (quarantine included)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RunContext:
    """Where a stage reads and writes."""

    run_dir: str
    stage_dir: str
    inputs: dict[str, list[str]]  # table name -> table paths produced by earlier stages
    # How this run's image ids are made (`acedata.ids`): pinned per run by `acedata.pipeline`.
    id_scheme: str = ids.DEFAULT

    def out(self, table: str) -> str:
        return posixpath.join(self.stage_dir, table)

    def input(self, table: str) -> list[str]:
        paths = self.inputs.get(table)
        if not paths:
            from acedata.errors import UserError

            raise UserError(
                f"stage at {self.stage_dir} needs a '{table}' table but no earlier stage made one; "
                f"add the stage that makes it or set inputs: {{{table}: PATH}}"
            )
        return paths


class Stage:
    kind: ClassVar[str]  # name in pipeline specs
    Config: ClassVar[type[StageConfig]] = StageConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {}  # table name -> schema
    uses_model: ClassVar[bool] = False  # True: an actor pool, `setup` once per actor
    # Bump when a code change alters what the stage writes: runs resumed from older output redo it.
    version: ClassVar[int] = 1

    def __init__(self, config: StageConfig, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx

    def output_schema(self, table: str) -> pa.Schema:
        return self.outputs[table]

    def input_digest(self) -> dict[str, Any]:
        """Content digests of inputs read from outside any table (e.g. ingest's sources).

        Part of the stage's resume key, beside its config and its input tables' manifests.
        """
        return {}

    def plan(self) -> list[WorkUnit]:
        raise NotImplementedError

    def setup(self) -> None:
        """Load models / open resources; runs once per worker before `process`."""

    def process(self, unit: WorkUnit) -> UnitResult:
        raise NotImplementedError

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        """Units to run once every unit of wave `wave` has committed (wave 0: `plan`'s units); [] ends.

        For joins and group-bys the driver must not do row by row: a wave's units write
        their rows hash-partitioned by a key (`acedata.partition`), and the next wave's
        units each read one partition. `counts` are the finished wave's summed counts.
        Unit ids must be unique across waves; a resumed run replans every wave the same way.
        """
        return []

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        """Driver-side step after all units are committed; returns extra summary fields."""
        return {}
