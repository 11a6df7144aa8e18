"""Pipeline specs (YAML) and runs: validate, run stages in order, resume.

Each stage writes `RUN/<name>/<table>/` and, when complete, `RUN/<name>/_SUCCESS.json`
holding its config hash (which covers every earlier stage's config) and its counts.
A rerun skips stages whose marker matches and redoes the rest; inside an unfinished
stage, units already committed are kept.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import posixpath
import shutil
import string
import time
from typing import Any, Literal

import yaml
from pydantic import Field

from acedata import runtime, shards
from acedata.config import StageConfig, Strict, config_hash, validate_model
from acedata.errors import UserError
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


def run_stages(
    configs: list[StageConfig],
    out: str,
    executor: str = "ray",
    address: str | None = None,
    num_cpus: int | None = None,
    name: str = "run",
) -> dict[str, Any]:
    """Run stage configs in order under `out`, resuming from committed work."""
    load_stages()
    t0 = time.time()
    if executor == "ray":
        runtime.init_ray(address, num_cpus)
    fs, out_path = shards.resolve(out)
    fs.create_dir(out_path, recursive=True)
    tables: dict[str, list[str]] = {}
    summaries = []
    for i, cfg in enumerate(configs):
        kind = stage_kind(cfg)
        cls = REGISTRY[kind]
        stage_dir = posixpath.join(out, cfg.name or kind)
        digest = config_hash(*configs[: i + 1])
        inputs = {k: list(v) for k, v in tables.items()}
        inputs.update({k: [p] for k, p in cfg.inputs.items()})
        stage = cls(cfg, RunContext(out, stage_dir, inputs))
        marker = _read_marker(stage_dir)
        if marker and marker.get("config_hash") == digest:
            log.info("stage %s: complete, skipped (config unchanged)", cfg.name)
            summary = {**marker["summary"], "skipped": True}
        else:
            _prepare_stage_dir(stage_dir, digest)
            summary = runtime.run_stage(stage, executor)
            _write_marker(stage_dir, digest, summary)
        summaries.append({"name": cfg.name, **summary})
        for table in cls.outputs:
            tables.setdefault(table, []).append(stage.ctx.out(table))
    run = {"name": name, "out": out, "seconds": round(time.time() - t0, 2), "stages": summaries, "tables": tables}
    shards.write_bytes_atomic(fs, posixpath.join(out_path, "_run.json"), json.dumps(run, indent=1).encode())
    return run


def run_pipeline(path: str, out: str, address: str | None = None, executor: str | None = None) -> dict[str, Any]:
    spec, configs = load_spec(path, {"out": os.path.abspath(out) if "://" not in out else out})
    return run_stages(
        configs,
        out,
        executor=executor or spec.executor,
        address=address or spec.ray.address,
        num_cpus=spec.ray.num_cpus,
        name=spec.name,
    )


def _read_marker(stage_dir: str) -> dict[str, Any] | None:
    fs, d = shards.resolve(stage_dir)
    p = posixpath.join(d, runtime.SUCCESS)
    return shards.read_json(fs, p) if shards.exists(fs, p) else None


def _write_marker(stage_dir: str, digest: str, summary: dict[str, Any]) -> None:
    fs, d = shards.resolve(stage_dir)
    body = {"config_hash": digest, "finished": time.time(), "summary": summary}
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
            if "://" in stage_dir:
                fs.delete_dir(d)
            else:
                shutil.rmtree(d)
    fs.create_dir(d, recursive=True)
    marker = posixpath.join(d, runtime.SUCCESS)
    if shards.exists(fs, marker):
        fs.delete_file(marker)
    shards.write_bytes_atomic(fs, cfg_file, digest.encode())
