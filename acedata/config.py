"""Config base classes: strict pydantic models (unknown keys are errors)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from acedata.errors import UserError


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

    name: str | None = None  # folder under the run directory (defaults to the stage type)
    resources: Resources = Field(default_factory=Resources)
    inputs: dict[str, str] = Field(default_factory=dict)  # table name -> path, overriding the pipeline's


def config_hash(*configs: BaseModel) -> str:
    h = hashlib.sha256()
    for c in configs:
        h.update(json.dumps(c.model_dump(mode="json"), sort_keys=True).encode())
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
