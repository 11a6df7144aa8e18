"""Pipeline specs (YAML) and runs: validate, run stages in order, resume.

Each stage writes `RUN/<name>/<table>/` and, when complete, `RUN/<name>/_SUCCESS.json`
holding its resume key (`acedata.resume.stage_key`: output-affecting config, code
version, content digests of its inputs) and its counts. A rerun skips stages whose
marker matches and redoes the rest; inside an unfinished stage with the same key,
units already committed are kept.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import posixpath
import string
import time
from collections.abc import Callable
from typing import Any, Literal

import pyarrow.fs as pafs
import yaml
from pydantic import Field

from acedata import ids, run_settings, runtime, shards, storage
from acedata.config import StageConfig, Strict, validate_model
from acedata.errors import UserError
from acedata.resume import stage_key
from acedata.stage import REGISTRY, RunContext, Stage

log = logging.getLogger("acedata")


class RaySettings(Strict):
    address: str | None = None  # None: $RAY_ADDRESS, else an embedded local Ray
    num_cpus: int | None = None


class PipelineSpec(Strict):
    name: str
    description: str = ""
    executor: Literal["ray", "local"] = "ray"
    ray: RaySettings = Field(default_factory=RaySettings)
    stages: list[dict[str, Any]] = Field(min_length=1)
    # Image ids (`acedata.ids`); None: the default for a new run, the recorded one for an existing run.
    id_scheme: ids.IdScheme | None = None


def load_stages() -> dict[str, type[Stage]]:
    """Import every module in `acedata.stages` so each registers its stage."""
    import acedata.stages as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"acedata.stages.{mod.name}")
    return REGISTRY


def _substitute(obj: Any, env: dict[str, str]) -> Any:
    if isinstance(obj, str):
        try:
            return string.Template(obj).substitute(env)
        except KeyError as e:
            raise UserError(f"spec uses ${{{e.args[0]}}} but no such variable is set (known: {sorted(env)})") from None
    if isinstance(obj, list):
        return [_substitute(x, env) for x in obj]
    if isinstance(obj, dict):
        return {k: _substitute(v, env) for k, v in obj.items()}
    return obj


def parse_spec(data: Any, where: str, variables: dict[str, str]) -> tuple[PipelineSpec, list[StageConfig]]:
    if not isinstance(data, dict):
        raise UserError(f"{where}: a pipeline spec is a mapping with 'name' and 'stages'")
    spec = validate_model(PipelineSpec, data, where)
    registry = load_stages()
    configs: list[StageConfig] = []
    names: set[str] = set()
    for i, entry in enumerate(spec.stages):
        entry = _substitute(dict(entry), variables)
        kind = entry.pop("stage", None)
        if kind not in registry:
            raise UserError(f"{where}.stages.{i}.stage: {kind!r} is not a stage; known: {', '.join(sorted(registry))}")
        cfg = validate_model(registry[kind].Config, entry, f"{where}.stages.{i}")
        cfg.name = cfg.name or kind
        if cfg.name in names:
            raise UserError(f"{where}.stages.{i}: stage name {cfg.name!r} used twice; give one a 'name:'")
        names.add(cfg.name)
        configs.append(cfg)
    return spec, configs


def load_spec(path: str, variables: dict[str, str]) -> tuple[PipelineSpec, list[StageConfig]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"pipeline spec {path!r} not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_spec(data, os.path.basename(path), variables)


def stage_kind(cfg: StageConfig) -> str:
    return next(k for k, cls in REGISTRY.items() if cls.Config is type(cfg))


STATUS = "_status.json"


class RunStatus:
    """The run's live state in `RUN/_status.json`: the stage in progress and counts so far.

    Rewritten atomically as stages start and finish and (at most every `interval` s) as
    units commit; `on_change` gets the same dict (a submitted job prints it to its log).
    """

    def __init__(self, out: str, name: str, stage_names: list[str], on_change=None, interval: float = 1.0):
        self.fs, path = shards.resolve(out)
        self.path = posixpath.join(path, STATUS)
        self.on_change = on_change
        self.interval = interval
        self._last = 0.0
        self.body: dict[str, Any] = {
            "name": name, "out": out, "state": "running", "stage": None, "started": time.time(),
            "updated": time.time(), "error": None,
            "stages": [{"name": n, "state": "pending", "units": None, "units_done": 0, "counts": {}}
                       for n in stage_names],
        }

    def stage(self, i: int, **fields: Any) -> None:
        self.body["stages"][i].update(fields)
        if fields.get("state") == "running":
            self.body["stage"] = self.body["stages"][i]["name"]
        self.write(force="state" in fields)

    def finish(self, state: str, error: str | None = None) -> None:
        self.body.update(state=state, error=error, stage=None if state == "succeeded" else self.body["stage"])
        for s in self.body["stages"]:
            if s["state"] == "running":
                s["state"] = state
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.body["updated"] = now
        shards.write_bytes_atomic(self.fs, self.path, json.dumps(self.body, indent=1).encode())
        if self.on_change is not None:
            self.on_change(self.body)


def _open_run_dir(out: str) -> tuple[pafs.FileSystem, str]:
    """The run directory's filesystem and path, created if new; a file or an uncreatable path is a UserError."""
    fs, out_path = shards.resolve(out)
    if fs.get_file_info(out_path).type == pafs.FileType.File:
        raise UserError(f"--out {out} is an existing file; give a directory (new or a run to resume)")
    try:
        fs.create_dir(out_path, recursive=True)
    except OSError as e:  # e.g. a parent that is a file, or no permission
        raise UserError(f"--out {out}: cannot create the run directory ({str(e).splitlines()[0]})") from None
    return fs, out_path


def _run_one_stage(stage: Stage, cfg: StageConfig, stage_dir: str, executor: str, status: RunStatus,
                   i: int) -> dict[str, Any]:
    """Run stage `i` (or skip it when its marker's hash matches) and return its summary."""
    digest = stage_key(stage)
    marker = _read_marker(stage_dir)
    if marker and marker.get("config_hash") == digest:
        log.info("stage %s: complete, skipped (config, code version and inputs unchanged)", cfg.name)
        summary = {**marker["summary"], "skipped": True}
        status.stage(i, state="skipped", units=summary.get("units"), units_done=summary.get("units"),
                     counts=summary.get("counts", {}))
        return summary
    _prepare_stage_dir(stage_dir, digest)
    status.stage(i, state="running")

    def progress(done: int, total: int, counts: dict[str, int]) -> None:
        status.stage(i, units=total, units_done=done, counts=counts)

    with ids.using(stage.ctx.id_scheme):  # driver-side steps too (plan, waves, finish)
        summary = runtime.run_stage(stage, executor, progress=progress)
    _write_marker(stage_dir, digest, summary, config=cfg.model_dump(mode="json"))
    status.stage(i, state="succeeded", units=summary.get("units"), units_done=summary.get("units"),
                 counts=summary.get("counts", {}), seconds=summary.get("seconds"))
    return summary


def run_stages(
    configs: list[StageConfig],
    out: str,
    executor: str = "ray",
    address: str | None = None,
    num_cpus: int | None = None,
    name: str = "run",
    on_status: Callable[[dict[str, Any]], None] | None = None,
    id_scheme: str | None = None,
) -> dict[str, Any]:
    """Run stage configs in order under `out`, resuming from committed work.

    Image ids are made in the run's pinned scheme (`acedata.run_settings`): for a new run
    `id_scheme`, else that of the runs its `inputs:` tables come from, else the default; an
    existing run keeps its own (asking for another is a UserError).
    Progress goes to `out/_status.json` (and to `on_status`, when given).
    """
    load_stages()
    t0 = time.time()
    out = storage.absolute(out)
    fs, out_path = _open_run_dir(out)
    external = [storage.absolute(p) for c in configs for p in c.inputs.values()]
    inherited = {s for s in map(run_settings.table_scheme, external) if s is not None}
    # tables from other runs: of this run's scheme, or refused (before the scheme is recorded)
    scheme = run_settings.pin(fs, out_path, id_scheme, inherited, inputs=external)["id_scheme"]
    if executor == "ray":
        runtime.init_ray(address, num_cpus)
    status = RunStatus(out, name, [c.name or stage_kind(c) for c in configs], on_status)
    status.write(force=True)
    tables: dict[str, list[str]] = {}
    summaries = []
    try:
        for i, cfg in enumerate(configs):
            kind = stage_kind(cfg)
            cls = REGISTRY[kind]
            stage_dir = posixpath.join(out, cfg.name or kind)
            inputs = {k: list(v) for k, v in tables.items()}
            inputs.update({k: [storage.absolute(p)] for k, p in cfg.inputs.items()})
            stage = cls(cfg, RunContext(out, stage_dir, inputs, scheme))
            summary = _run_one_stage(stage, cfg, stage_dir, executor, status, i)
            summaries.append({"name": cfg.name, **summary})
            for table in cls.outputs:
                tables.setdefault(table, []).append(stage.ctx.out(table))
    except BaseException as e:  # a stop (SIGTERM/Ctrl-C) shows as interrupted, anything else as failed
        stopped = isinstance(e, KeyboardInterrupt | SystemExit)
        status.finish("interrupted" if stopped else "failed", f"{type(e).__name__}: {str(e)[:500]}")
        raise
    run = {"name": name, "out": out, "id_scheme": scheme, "seconds": round(time.time() - t0, 2), "stages": summaries,
           "tables": tables}
    shards.write_bytes_atomic(fs, posixpath.join(out_path, "_run.json"), json.dumps(run, indent=1).encode())
    status.finish("succeeded")
    return run


def run_pipeline(
    path: str,
    out: str,
    address: str | None = None,
    executor: str | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    id_scheme: str | None = None,
) -> dict[str, Any]:
    """Run a spec file; `id_scheme` overrides the spec's (see `run_stages`)."""
    out = storage.absolute(out)  # resolved here, before anything travels to workers
    spec, configs = load_spec(path, {"out": out})
    return run_stages(
        configs,
        out,
        executor=executor or spec.executor,
        address=address or spec.ray.address,
        num_cpus=spec.ray.num_cpus,
        name=spec.name,
        on_status=on_status,
        id_scheme=id_scheme or spec.id_scheme,
    )


def _read_marker(stage_dir: str) -> dict[str, Any] | None:
    fs, d = shards.resolve(stage_dir)
    p = posixpath.join(d, runtime.SUCCESS)
    return shards.read_json(fs, p) if shards.exists(fs, p) else None


def _write_marker(stage_dir: str, digest: str, summary: dict[str, Any], config: dict[str, Any] | None = None) -> None:
    fs, d = shards.resolve(stage_dir)
    body = {"config_hash": digest, "finished": time.time(), "summary": summary}
    if config is not None:  # the stage's settings, for dataset cards (thresholds, models)
        body["config"] = config
    shards.write_bytes_atomic(fs, posixpath.join(d, runtime.SUCCESS), json.dumps(body, indent=1).encode())


def _prepare_stage_dir(stage_dir: str, digest: str) -> None:
    """Keep committed units of an interrupted run with the same config; else start clean."""
    fs, d = shards.resolve(stage_dir)
    cfg_file = posixpath.join(d, "_config_hash")
    if shards.exists(fs, d):
        same = False
        if shards.exists(fs, cfg_file):
            with fs.open_input_stream(cfg_file) as f:
                same = f.read().decode() == digest
        if not same:
            storage.delete_dir(stage_dir)
    fs.create_dir(d, recursive=True)
    marker = posixpath.join(d, runtime.SUCCESS)
    if shards.exists(fs, marker):
        fs.delete_file(marker)
    shards.write_bytes_atomic(fs, cfg_file, digest.encode())
