"""Weight-free stages on Ray run as plain tasks (`runtime._run_tasks`); a worker sets a stage up
once per run of the stage, as the local executor does, not once per unit."""

from __future__ import annotations

import os
import posixpath
import sys
from collections import Counter
from typing import ClassVar

import pyarrow as pa
import pyarrow.dataset as ds

from acedata import runtime
from acedata.config import StageConfig
from acedata.stage import RunContext, Stage, UnitResult, WorkUnit

ROWS = pa.schema([("unit", pa.string()), ("pid", pa.int64()), ("setup_pid", pa.int64())])


class SetupCounting(Stage):
    """Logs every `setup` and every unit with the process that ran it."""

    kind = "test_setup_counting"
    Config = StageConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"rows": ROWS}

    def setup(self) -> None:
        self.setup_pid = os.getpid()
        with open(posixpath.join(self.ctx.stage_dir, "_setups.log"), "a") as f:
            f.write(f"{os.getpid()}\n")

    def plan(self) -> list[WorkUnit]:
        return [WorkUnit(f"u-{i:02d}", {}) for i in range(12)]

    def process(self, unit: WorkUnit) -> UnitResult:
        row = {"unit": [unit.id], "pid": [os.getpid()], "setup_pid": [self.setup_pid]}
        return UnitResult({"rows": pa.table(row, ROWS)}, {"rows": 1})


def _run(stage_dir: str) -> tuple[list[int], pa.Table]:
    os.makedirs(stage_dir, exist_ok=True)
    ctx = RunContext(run_dir=os.path.dirname(stage_dir), stage_dir=stage_dir, inputs={})
    summary = runtime.run_stage(SetupCounting(StageConfig(), ctx), executor="ray")
    assert summary["counts"]["rows"] == 12
    with open(posixpath.join(stage_dir, "_setups.log")) as f:
        setups = [int(line) for line in f]
    return setups, ds.dataset(ctx.out("rows")).to_table()


def test_task_workers_set_a_stage_up_once_per_run(tmp_path, ray_local):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    setups, rows = _run(str(tmp_path / "run" / "a"))
    pids = rows.column("pid").to_pylist()
    assert sorted(rows.column("unit").to_pylist()) == [f"u-{i:02d}" for i in range(12)]
    assert rows.column("setup_pid").to_pylist() == pids  # each unit ran on a stage its own worker set up
    assert Counter(setups) == Counter(set(pids))  # one setup per worker that ran units, not per unit
    assert len(setups) < 12

    again, _ = _run(str(tmp_path / "run" / "b"))  # a new run of the stage is set up afresh
    assert again
