"""Edit-pair synthesis for the ACE task families (DESIGN.md §5).

One small module per family; each synthesizer registers itself in `REGISTRY` with its
task, subtasks, inputs, weight needs and resources. `weight_free()` lists those that
run with no model weights (the offline demo runs all of them).
"""

from __future__ import annotations

import importlib

from acedata.synth.base import REGISTRY, Draft, Img, Synthesizer, new_img, register

_MODULES = ("lowlevel", "repaint", "element", "semantic", "layer", "reference", "model_based", "pose", "face")


def load_all() -> dict[str, type[Synthesizer]]:
    for m in _MODULES:
        importlib.import_module(f"acedata.synth.{m}")
    return REGISTRY


def weight_free() -> list[str]:
    return sorted(n for n, cls in load_all().items() if not cls.needs_weights)


def get(name: str) -> type[Synthesizer]:
    reg = load_all()
    if name not in reg:
        from acedata.errors import UserError

        raise UserError(f"unknown synthesizer {name!r}; known: {', '.join(sorted(reg))}")
    return reg[name]


__all__ = ["REGISTRY", "Draft", "Img", "Synthesizer", "get", "load_all", "new_img", "register", "weight_free"]
