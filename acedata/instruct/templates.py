"""The instruction template bank (YAML data files) and the deterministic template chooser.

One file per task family (`templates/<family>.yaml`): phrasings per subtask, a family
`default` list for unknown subtasks, and subtask aliases. A template may use slots —
`{caption}`, `{object}`, `{new_object}`, `{style}`, `{attribute}`, `{prompt}`, `{refs}` — and the
image indicators `{image}` (one input) or `{image1}`, `{image2}` … (several, in input
order). Only templates whose slots can all be filled for a pair are eligible, and those
that use the pair's details (caption, object, style ...) are preferred when there are
any; among them the seed and the pair id pick one, so a rerun gives the same text.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from acedata.errors import UserError

TEMPLATE_DIR = Path(__file__).with_name("templates")
INDICATOR = re.compile(r"\{image(\d*)\}")
SLOTS = ("caption", "object", "new_object", "style", "attribute", "prompt")
FAMILIES = (
    "low_level", "controllable", "semantic_editing", "element_editing", "layer_editing",
    "repainting", "reference_generation", "natural_edit", "text_to_image",
)
# Used when not even the family's defaults fit (an unknown family, say).
LAST_RESORT = {1: "Edit {image}.", 2: "Combine {image1} and {image2} into a new image."}


@dataclass(frozen=True)
class Chosen:
    text: str  # filled instruction (indicators kept as literal `{image}` ...)
    template: str  # the raw template
    key: str  # family/subtask#index, for provenance
    fallback: str | None  # None | "family_default" | "last_resort": why a more generic list was used


def indicators_for(n_inputs: int) -> list[str]:
    """Image indicators of a CU with `n_inputs` inputs: `{image}` or `{image1}` … `{imageN}`."""
    if n_inputs <= 1:
        return ["{image}"]
    return [f"{{image{i}}}" for i in range(1, n_inputs + 1)]


def indicators_in(text: str) -> list[str]:
    """Indicators a text uses, in order of first appearance, without repeats."""
    seen: list[str] = []
    for m in INDICATOR.finditer(text):
        if m.group(0) not in seen:
            seen.append(m.group(0))
    return seen


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def tidy(text: str) -> str:
    """Collapse whitespace, drop a dangling ':' left by an empty slot, end with punctuation."""
    text = " ".join(text.split()).strip()
    text = re.sub(r"\s+([.,:;!?])", r"\1", text)
    text = text.rstrip(" :;,")
    text = re.sub(r"\.{2,}$", ".", text)
    text = re.sub(r"([.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    if text and text[-1] not in ".!?\"'":
        text += "."
    return text[:1].upper() + text[1:]


class TemplateBank:
    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory else TEMPLATE_DIR
        if not self.dir.is_dir():
            raise UserError(f"template folder {self.dir} does not exist; set `templates:` to a folder of YAML files")
        self.families: dict[str, dict[str, Any]] = {}
        for f in sorted(self.dir.glob("*.yaml")):
            with open(f, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
            fam = data.get("family") or f.stem
            subtasks = {k: list(v) for k, v in (data.get("subtasks") or {}).items()}
            default = list(data.get("default") or [])
            for name, items in [("default", default), *subtasks.items()]:
                for t in items:
                    try:
                        _fields(t)
                    except ValueError as e:
                        raise UserError(f"{f}: template {t!r} under {name} is malformed ({e})") from None
            self.families[fam] = {"subtasks": subtasks, "default": default, "aliases": dict(data.get("aliases") or {})}
        if not self.families:
            raise UserError(f"no template files (*.yaml) in {self.dir}")

    def subtasks(self, family: str) -> list[str]:
        return sorted(self.families.get(family, {}).get("subtasks", {}))

    def canonical(self, family: str, subtask: str) -> str | None:
        fam = self.families.get(family)
        if fam is None:
            return None
        s = subtask.lower().replace("-", "_").replace(" ", "_")
        s = fam["aliases"].get(s, s)
        return s if s in fam["subtasks"] else None

    def choose(
        self, task: str, subtask: str, n_inputs: int, slots: dict[str, str], seed: int, key: str
    ) -> Chosen:
        """Pick and fill a template for a pair; deterministic in (seed, key)."""
        fam = self.families.get(task)
        ind = indicators_for(n_inputs)
        filled = {k: v for k, v in slots.items() if v}
        filled["refs"] = _join(ind)
        lists: list[tuple[str, list[str], str | None]] = []
        if fam is not None:
            canon = self.canonical(task, subtask)
            if canon:
                lists.append((f"{task}/{canon}", fam["subtasks"][canon], None))
            # A family that has no subtask lists (natural_edit) uses its defaults by design, not as a fallback.
            generic = "family_default" if subtask and fam["subtasks"] else None
            lists.append((f"{task}/default", fam["default"], generic))
        for name, items, fallback in lists:
            eligible = [(i, t) for i, t in enumerate(items) if self._fits(t, ind, filled)]
            # Templates that carry the pair's own details (caption, object, style ...) come first.
            rich = [(i, t) for i, t in eligible if _fields(t) & set(SLOTS)]
            eligible = rich or eligible
            if eligible:
                i, t = eligible[_pick(seed, key, name, len(eligible))]
                return Chosen(self._fill(t, ind, filled), t, f"{name}#{i}", fallback)
        t = LAST_RESORT[1 if n_inputs <= 1 else 2]
        if n_inputs > 2:
            t = "Combine {refs} into a new image."
        return Chosen(self._fill(t, ind, filled), t, "last_resort", "last_resort")

    @staticmethod
    def _fits(template: str, ind: list[str], slots: dict[str, str]) -> bool:
        names = _fields(template)
        used = {"{" + n + "}" for n in names if n.startswith("image")}
        if not used and "refs" not in names:
            return False  # an editing instruction must point at its input
        if not used <= set(ind):
            return False
        if len(ind) > 1 and "refs" not in names and used != set(ind):
            return False  # a multi-input template must mention every input
        return all(n.startswith("image") or n in slots for n in names)

    @staticmethod
    def _fill(template: str, ind: list[str], slots: dict[str, str]) -> str:
        values = {i.strip("{}"): i for i in ind}
        values.update(slots)
        return tidy(template.format_map(values))

    def caption(self, caption: str, seed: int, key: str) -> Chosen:
        """A text-to-image row from a caption (variant phrasing picked like any template)."""
        items = self.families.get("text_to_image", {}).get("default") or ["{caption}"]
        i = _pick(seed, key, "text_to_image", len(items))
        return Chosen(tidy(items[i].format(caption=caption.strip().rstrip("."))), items[i], f"text_to_image#{i}", None)


def _pick(seed: int, key: str, name: str, n: int) -> int:
    h = hashlib.sha256(f"{seed}\x00{key}\x00{name}".encode()).digest()
    return int.from_bytes(h[:8], "big") % n


@lru_cache(maxsize=4)
def load_bank(directory: str | None = None) -> TemplateBank:
    return TemplateBank(directory)
