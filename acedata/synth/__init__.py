"""Edit-pair synthesis for the ACE task families (DESIGN.md §5).

    base.py      the contract: Img, Draft, Synthesizer, `register` (the registry)
    families/    one module per task family; each `@register`s its synthesizers
    support/     shared pieces families use: masks, pixels, model loading, filters, contact sheets

Families are discovered: every module under `families/` is imported by `load_all()`, so a new
synthesizer is one new class (or module) there. Every list of synthesizers (the stage's default,
`acedata synthesizers`, the template coverage test) is read from the registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from acedata.synth import families
from acedata.synth.base import REGISTRY, Draft, Img, Synthesizer, new_img, register


def load_all() -> dict[str, type[Synthesizer]]:
    """Import every family module (sorted, so registration order is stable) and return the registry."""
    for info in sorted(pkgutil.iter_modules(families.__path__), key=lambda m: m.name):
        importlib.import_module(f"{families.__name__}.{info.name}")
    return REGISTRY


def weight_free() -> list[str]:
    return sorted(n for n, cls in load_all().items() if not cls.needs_weights)


def task_subtasks() -> set[tuple[str, str]]:
    """Every (task, subtask) some synthesizer emits: its own task and, for condition maps, the
    inverse task with the same subtask names."""
    out = set()
    for cls in load_all().values():
        for task in (cls.task, cls.inverse_task):
            if task:
                out.update((task, sub) for sub in cls.subtasks)
    return out


def get(name: str) -> type[Synthesizer]:
    reg = load_all()
    if name not in reg:
        from acedata.errors import UserError

        raise UserError(f"unknown synthesizer {name!r}; known: {', '.join(sorted(reg))}")
    return reg[name]


__all__ = ["REGISTRY", "Draft", "Img", "Synthesizer", "get", "load_all", "new_img", "register", "task_subtasks",
           "weight_free"]
