"""Ray wiring, in one place: start/attach Ray and run a stage's work units.

A stage's units run on Ray with the stage's declared resources: model stages through a
Ray Data actor pool (`map_batches`, the model loaded once per actor), the rest as plain Ray
tasks, one per unit, at most `resources.concurrency` in flight. A Ray Data pipeline per wave
cost more driver and cluster CPU than a small wave's units (planning, its executor thread,
stats and autoscaling actors), and ingest runs three waves. `executor="local"` runs the same
units in-process (tests, debugging).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs

from acedata import ids, image_index, shards
from acedata.schemas import conform
from acedata.stage import RunContext, Stage, WorkUnit

log = logging.getLogger("acedata")

DONE_DIR = "_done"
SUCCESS = "_SUCCESS.json"


# --- Ray session -------------------------------------------------------------------


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to a cluster or start a private embedded Ray (see `acedata.ray_session`)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from acedata import ray_session

    ray_session.start(address, num_cpus)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = True


# --- unit execution (runs on workers) --------------------------------------------


def execute_unit(stage: Stage, unit: WorkUnit) -> dict[str, int]:
    """Process one unit and commit its outputs; the done-marker is written last."""
    for table in stage.outputs:
        shards.clear_attempts(stage.ctx.out(table), unit.id)
    with ids.using(stage.ctx.id_scheme):  # every id a unit computes is in the run's scheme
        result = stage.process(unit)
    counts = dict(result.counts)
    for table, rows in result.tables.items():
        schema = stage.output_schema(table)
        indexed = image_index.is_image_table(schema)
        writer = shards.ShardWriter(stage.ctx.out(table), schema, unit=unit.id,
                                    keep_columns=image_index.INDEX_COLUMNS if indexed else ())
        writer.write(conform(rows, schema))
        written = writer.commit()
        if indexed:  # each shard's image index, built by the worker from the rows it just wrote
            image_index.write_index(stage.ctx.out(table), [s.__dict__ for s in written], whole_table=False,
                                    written={k: image_index.index_rows(v, k) for k, v in writer.kept.items()})
        counts.setdefault(table, rows.num_rows)
    fs, d = shards.resolve(stage.ctx.stage_dir)
    fs.create_dir(posixpath.join(d, DONE_DIR), recursive=True)
    shards.write_bytes_atomic(fs, posixpath.join(d, DONE_DIR, f"{unit.id}.json"), json.dumps(counts).encode())
    # The attempt markers stay: a unit run again without its done-marker (lost with a Ray node
    # whose task output Ray re-executes, or removed by hand) must clear every earlier attempt,
    # the committed one included, as a table listing did.
    return counts


def _units_from_batch(batch: dict[str, Any]) -> list[WorkUnit]:
    return [WorkUnit(str(i), json.loads(p)) for i, p in zip(batch["id"], batch["payload"])]


class _ModelWorker:
    """A Ray Data actor: builds the stage and loads its model once, then takes units."""

    def __init__(self, stage_cls: type[Stage], config: dict[str, Any], ctx: RunContext) -> None:
        self.stage = stage_cls(stage_cls.Config.model_validate(config), ctx)
        self.stage.setup()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        return _execute_batch(self.stage, batch)


def _unit_task(built: tuple[str, type[Stage], dict[str, Any], RunContext], unit_id: str, payload: str) -> dict[str, int]:
    """One unit as a plain Ray task. A worker process runs many tasks of one stage in a row, so it
    keeps the stage it built (and set up) for the run's token: setup runs once per worker, as on
    the local executor, not once per unit."""
    global _TASK_STAGE
    token, stage_cls, config, ctx = built
    if _TASK_STAGE is None or _TASK_STAGE[0] != token:
        _TASK_STAGE = None  # drop the previous stage's state before building the next
        stage = stage_cls(stage_cls.Config.model_validate(config), ctx)
        stage.setup()
        _TASK_STAGE = (token, stage)
    return execute_unit(_TASK_STAGE[1], WorkUnit(unit_id, json.loads(payload)))


_TASK_STAGE: tuple[str, Stage] | None = None  # (run token, stage) of the last task in this worker
_REMOTE_UNIT_TASK = None


def _execute_batch(stage: Stage, batch: dict[str, Any]) -> dict[str, list[str]]:
    units = _units_from_batch(batch)
    return {"id": [u.id for u in units], "counts": [json.dumps(execute_unit(stage, u)) for u in units]}


# Called on the driver as each unit commits: (unit id, that unit's counts).
UnitDone = Callable[[str, dict[str, int]], None]


def _resource_args(stage: Stage) -> dict[str, Any]:
    res = stage.config.resources
    named: dict[str, Any] = {"num_cpus": res.num_cpus}
    if res.num_gpus:
        named["num_gpus"] = res.num_gpus
    if res.memory_gb:
        named["memory"] = int(res.memory_gb * (1 << 30))
    if res.custom:
        # Custom node resources pin a stage to a node group (e.g. decoding on CPU nodes).
        named["resources"] = dict(res.custom)
    return named


def _run_on_ray(stage: Stage, units: list[WorkUnit], on_unit: UnitDone | None = None) -> None:
    if not stage.uses_model:
        _run_tasks(stage, units, on_unit)
        return
    import warnings

    import ray.data

    res = stage.config.resources
    items = [{"id": u.id, "payload": json.dumps(u.payload)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 200))
    named = _resource_args(stage)
    config = stage.config.model_dump(mode="json")
    with warnings.catch_warnings():
        # Bounded retries have no named map_batches parameter yet; they still travel as remote args.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        out = ds.map_batches(
            _ModelWorker,
            fn_constructor_args=(type(stage), config, stage.ctx),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            max_restarts=res.max_retries,
            max_task_retries=res.max_retries,
            **named,
        )
        # Stream the per-unit results back so the driver can report progress as units commit.
        for row in out.iter_rows():
            if on_unit is not None:
                on_unit(str(row["id"]), json.loads(row["counts"]))


def _run_tasks(stage: Stage, units: list[WorkUnit], on_unit: UnitDone | None = None) -> None:
    """A stage without a model: one Ray task per unit, at most `resources.concurrency` in flight
    (what Ray Data's task pool gave), spread over the nodes as Ray Data spread them; a task lost
    with its worker runs again up to `max_retries` times, and a unit that raises fails the stage."""
    import ray

    global _REMOTE_UNIT_TASK
    if _REMOTE_UNIT_TASK is None:
        _REMOTE_UNIT_TASK = ray.remote(_unit_task)
    res = stage.config.resources
    task = _REMOTE_UNIT_TASK.options(max_retries=res.max_retries, scheduling_strategy="SPREAD",
                                     **_resource_args(stage))
    token = uuid.uuid4().hex  # names this run of the stage for the workers' cached stage
    built = ray.put((token, type(stage), stage.config.model_dump(mode="json"), stage.ctx))  # shipped once
    waiting = list(reversed(units))
    running: dict[Any, str] = {}
    try:
        while waiting or running:
            while waiting and len(running) < res.concurrency:
                u = waiting.pop()
                running[task.remote(built, u.id, json.dumps(u.payload))] = u.id
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                counts = ray.get(ref)
                unit_id = running.pop(ref)
                if on_unit is not None:
                    on_unit(unit_id, counts)
    finally:
        for ref in running:  # a unit failed: the others stop (their uncommitted writes are cleared on rerun)
            ray.cancel(ref)


def _run_local(stage: Stage, units: list[WorkUnit], on_unit: UnitDone | None = None) -> None:
    from tqdm import tqdm

    stage.setup()
    # No bar for one unit, nor off a terminal (None): a log or a pipe gets no carriage-return lines,
    # and a command that fails prints its one-line error alone.
    name = stage.ctx.stage_dir.rsplit("/", 1)[-1]
    for unit in tqdm(units, desc=name, unit="unit", disable=len(units) < 2 or None):
        counts = execute_unit(stage, unit)
        if on_unit is not None:
            on_unit(unit.id, counts)


# --- read-only maps (no outputs, no markers) --------------------------------------------


def map_payloads(fn: Callable[[dict[str, Any]], bytes], payloads: list[dict[str, Any]], executor: str = "local",
                 num_cpus: float = 1, max_retries: int = 3) -> Iterator[bytes]:
    """`fn` over JSON payloads, results yielded as they finish (in any order): in-process, or one
    Ray Data task per payload as `_run_on_ray` runs a stage's units. For work that writes nothing
    (e.g. `acedata stats` partials), so a retried task simply computes its result again."""
    if executor != "ray":
        for p in payloads:
            yield fn(p)
        return
    if not payloads:
        return
    import warnings

    import ray.data

    def run(batch: dict[str, Any]) -> dict[str, list[bytes]]:
        return {"result": [fn(json.loads(p)) for p in batch["payload"]]}

    ds = ray.data.from_items([{"payload": json.dumps(p)} for p in payloads],
                             override_num_blocks=min(len(payloads), 200))
    with warnings.catch_warnings():  # as in `_run_on_ray`: retries travel as remote args
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        out = ds.map_batches(run, batch_size=1, compute=ray.data.TaskPoolStrategy(), num_cpus=num_cpus,
                             max_retries=max_retries)
    for row in out.iter_rows():
        yield row["result"]


# --- stage execution (driver) ------------------------------------------------------


def done_units(stage_dir: str) -> dict[str, dict[str, int]]:
    fs, d = shards.resolve(stage_dir)
    done = posixpath.join(d, DONE_DIR)
    if not shards.exists(fs, done):
        return {}
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(done)):
        name = posixpath.basename(info.path)
        if name.endswith(".json") and not name.startswith("."):  # hidden: a marker still being written
            out[name[:-5]] = shards.read_json(fs, info.path)
    return out


def run_stage(
    stage: Stage, executor: str = "ray", progress: Callable[[int, int, dict[str, int]], None] | None = None
) -> dict[str, Any]:
    """Run the units not yet committed, wave by wave, merge manifests, finish, and return the summary.

    `progress(units_done, units_total, counts_so_far)` is called on the driver as units
    commit (units committed by an earlier, interrupted run included); the total grows as
    later waves are planned.
    """
    t0 = time.time()
    tally = _Tally(progress)
    units, wave, all_ids = stage.plan(), 0, []
    if units:  # tables written before attempt markers: their unfinished units' files get markers, once
        for table in stage.outputs:
            shards.adopt_attempts(stage.ctx.out(table), lambda: set(done_units(stage.ctx.stage_dir)))
    while units:
        ids = [u.id for u in units]
        if len(set(ids)) != len(ids) or set(ids) & set(all_ids):
            raise RuntimeError(f"{type(stage).__name__}: wave {wave} has duplicate unit ids")
        wave_counts = _run_wave(stage, units, executor, tally, wave)
        all_ids += ids
        units = stage.next_wave(wave, wave_counts)
        wave += 1
    done = done_units(stage.ctx.stage_dir)
    counts = _sum(done[i] for i in all_ids)
    for table in stage.outputs:
        shards.finalize_manifest(stage.ctx.out(table), stage.output_schema(table), table=table)
    extra = stage.finish(counts) or {}
    for table in stage.outputs:
        if image_index.is_image_table(stage.output_schema(table)):  # the table's partitioned index
            image_index.ensure_index(stage.ctx.out(table), executor, stage.config.resources.concurrency)
    return {"stage": stage.kind, "units": len(all_ids), "counts": counts, "seconds": round(time.time() - t0, 2), **extra}


class _Tally:
    """Units committed so far and their summed counts, reported to a progress callback."""

    def __init__(self, progress: Callable[[int, int, dict[str, int]], None] | None) -> None:
        self.progress = progress
        self.planned: set[str] = set()
        self.finished: dict[str, dict[str, int]] = {}

    def plan(self, ids: list[str], done: dict[str, dict[str, int]]) -> None:
        self.planned.update(ids)
        for i in ids:
            if i in done:
                self.finished[i] = done[i]
        self._report()

    def unit_done(self, unit_id: str, unit_counts: dict[str, int]) -> None:
        if unit_id in self.planned and unit_id not in self.finished:
            self.finished[unit_id] = unit_counts
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(len(self.finished), len(self.planned), _sum(self.finished.values()))


def _sum(parts: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            counts[k] = counts.get(k, 0) + int(v)
    return counts


def _run_wave(stage: Stage, units: list[WorkUnit], executor: str, tally: _Tally, wave: int) -> dict[str, int]:
    """Run one wave's uncommitted units; return the wave's summed counts once all have committed."""
    ids = [u.id for u in units]
    done = done_units(stage.ctx.stage_dir)
    todo = [u for u in units if u.id not in done]
    log.info("stage %s wave %d: %d units (%d already committed)", stage.kind, wave, len(units), len(units) - len(todo))
    tally.plan(ids, done)
    if todo:
        (_run_on_ray if executor == "ray" else _run_local)(stage, todo, tally.unit_done)
    done = done_units(stage.ctx.stage_dir)
    missing = [i for i in ids if i not in done]
    if missing:
        raise RuntimeError(f"stage {stage.kind}: {len(missing)} units did not commit (e.g. {missing[:3]})")
    return _sum(done[i] for i in ids)
