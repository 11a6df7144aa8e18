"""Config base classes: strict pydantic models (unknown keys are errors)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from acedata.errors import UserError

# Fields marked this way change how a stage runs, never what it writes; resume keys skip them.
RUN_ONLY = {"run_only": True}


def run_only(default: Any = ..., **kw: Any) -> Any:
    """A config field that does not affect a stage's output (threads, names, concurrency...)."""
    return Field(default, json_schema_extra=RUN_ONLY, **kw)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Resources(Strict):
    """What one worker of a stage needs; Ray schedules by it."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0  # model stages ask for GPUs on a cluster; 0 keeps them on CPU
    memory_gb: float | None = None
    concurrency: int = Field(2, ge=1)  # parallel tasks / actors in the pool
    max_retries: int = Field(3, ge=0)  # task retries / actor restarts after a worker dies
    # Custom Ray node resources each worker needs, e.g. {"cpu_pool": 1} to keep decoding on the
    # nodes started with `ray start --resources '{"cpu_pool": N}'` (a heterogeneous cluster).
    custom: dict[str, float] = Field(default_factory=dict)


class StageConfig(Strict):
    """Fields every stage accepts in a pipeline spec."""

    name: str | None = run_only(None)  # folder under the run directory (defaults to the stage type)
    description: str = run_only("")
    resources: Resources = Field(default_factory=Resources, json_schema_extra=RUN_ONLY)
    # table name -> path, overriding the pipeline's. Run-only: resume keys hash the tables' content.
    inputs: dict[str, str] = Field(default_factory=dict, json_schema_extra=RUN_ONLY)


def _is_run_only(model: BaseModel, name: str) -> bool:
    extra = type(model).model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("run_only"))


def _output_value(v: Any, dumped: Any) -> Any:
    """`dumped` (the JSON form of `v`) with run-only fields of nested models removed."""
    if isinstance(v, BaseModel):
        return output_config(v)
    if isinstance(v, dict):
        return {k: _output_value(v[k], dumped[k]) for k in dumped}
    if isinstance(v, list | tuple):
        return [_output_value(x, d) for x, d in zip(v, dumped)]
    return dumped


def output_config(model: BaseModel) -> dict[str, Any]:
    """The settings that can change a stage's output: every field not marked `run_only`."""
    dumped = model.model_dump(mode="json")
    return {k: _output_value(getattr(model, k), dumped[k]) for k in dumped if not _is_run_only(model, k)}


def config_hash(*configs: BaseModel) -> str:
    """A short hash of the output-affecting settings of `configs` (run-only fields left out)."""
    h = hashlib.sha256()
    for c in configs:
        h.update(json.dumps(output_config(c), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def validation_message(err: ValidationError, where: str) -> str:
    """One line per problem: the key's dotted path and what is wrong."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}")
    return "; ".join(parts)


def validate_model(cls: type[BaseModel], data: object, where: str) -> BaseModel:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, where)) from None
