"""Template slot values for a pair: what the synthesizer stated in the pairs table's `slots`
column, else (mined pairs, tables from elsewhere) keys found in its provenance JSON."""

from __future__ import annotations

import json
from typing import Any

# Pairs tables without a `slots` column (mined pairs, tables from elsewhere): where template slots
# come from in a pair's provenance JSON (top level, or params/meta inside it).
SLOT_KEYS = {
    "object": ("object", "object_name", "subject", "category", "label"),
    "new_object": ("new_object", "replacement", "replace_with", "target_object"),
    "style": ("style", "style_name", "grade", "look"),
    "attribute": ("attribute", "attributes", "facial_attribute"),
    "prompt": ("edit_prompt", "prompt"),
    "caption": ("caption", "target_caption", "source_caption"),
}
# Where a subtask's synthesizer uses a key differently: replace's `object`/`prompt` name the new object.
SUBTASK_SLOT_KEYS = {
    "replace": {"object": ("old_object", "replaced_object", "source_object"),
                "new_object": ("new_object", "replacement", "replace_with", "object", "prompt")},
}


def pair_slots(pair: dict[str, Any], images: dict[str, dict]) -> dict[str, str]:
    """Template slot values for a pair: its `slots` column (what the synthesizer stated), else, for
    pairs tables without one (mined pairs, tables from elsewhere), keys found in its provenance; a
    missing caption comes from the images' captions."""
    if pair.get("slots") is not None:
        slots = {k: v for k, v in pair["slots"].items() if v}
    else:
        slots = _provenance_slots(pair)
    if "caption" not in slots:
        for iid in (pair.get("target_id"), pair.get("source_id")):
            cap = (images.get(iid) or {}).get("caption")
            if cap and cap.strip():
                slots["caption"] = " ".join(cap.split()).rstrip(".")
                break
    return slots


def _provenance_slots(pair: dict[str, Any]) -> dict[str, str]:
    """Slot values read from provenance JSON by the key names in SLOT_KEYS (pairs without `slots`)."""
    prov: dict[str, Any] = {}
    try:
        loaded = json.loads(pair.get("provenance") or "{}")
        if isinstance(loaded, dict):
            prov = loaded
    except json.JSONDecodeError:
        pass
    scopes = [prov[k] for k in ("params", "meta") if isinstance(prov.get(k), dict)] + [prov]
    keymap = {**SLOT_KEYS, **SUBTASK_SLOT_KEYS.get(pair.get("subtask") or "", {})}
    slots: dict[str, str] = {}
    for slot, keys in keymap.items():
        for scope in scopes:
            v = next((scope[k] for k in keys if isinstance(scope.get(k), (str, int, float)) and str(scope[k]).strip()),
                     None)
            if v is not None:
                slots[slot] = " ".join(str(v).replace("_", " ").split()).rstrip(".")
                break
    return slots
