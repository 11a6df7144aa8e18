"""Helpers shared by the ACE model tests (imported by name: pytest puts tests/model on sys.path)."""

from __future__ import annotations

import os
from typing import Any

import yaml
from acemodel.config import TrainConfig

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "model", "configs", "tiny.yaml")


def tiny_config(data: dict[str, Any] | None = None, optim: dict[str, Any] | None = None, **top: Any) -> TrainConfig:
    """model/configs/tiny.yaml with `data`/`optim` keys merged in and top-level keys replaced."""
    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw["data"].update(data or {})
    raw["optim"].update(optim or {})
    return TrainConfig(**{**raw, **top})
