"""The rows one synthesize unit writes: new images (deduplicated), accepted pairs, quarantined
candidates; and the count of synthesizer calls that failed.

Three outcomes per candidate, kept apart:
- accepted: a `pairs` row (plus `images` rows for the pixels it made);
- rejected: a `quarantine` row with the filter's reason, or the synthesizer's own (`Rejected`:
  no face, no person ...), or `synth_failed` for a failing call below the failure limit;
- failed: the synthesizer raised something else (a bug, CUDA out of memory). Failures are counted
  per synthesizer; past the limit the unit raises `SynthesizerFailures`, so the stage fails
  instead of quarantining everything and reporting success.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
from pydantic import Field

from acedata.codecs import encode_kind
from acedata.config import Strict
from acedata.schemas import IMAGES, PAIRS, QUARANTINE
from acedata.synth.base import Draft, Img, Synthesizer, slot_text


class FailureLimit(Strict):
    """How many failing synthesizer calls a unit (and the stage, over all units) tolerates."""

    max_rate: float = Field(0.05, ge=0, le=1)  # failed calls / calls above this ...
    min_count: int = Field(3, ge=1)  # ... and at least this many failed calls: the unit fails

    def exceeded(self, failures: int, calls: int) -> bool:
        return failures >= self.min_count and failures > self.max_rate * max(calls, 1)


class SynthesizerFailures(RuntimeError):
    """Synthesizers raised more often than the failure limit allows."""


def pair_id_of(d: Draft) -> str:
    parts = [d.task, d.subtask, d.source.id, d.target.id, d.mask.id if d.mask else "",
             ",".join(e.id for e in d.extras), pair_id_of(d.parent) if d.parent else ""]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class Collector:
    """Rows of one unit. `synths` gives each synthesizer's weights id and algorithm for provenance."""

    def __init__(self, stage: str, seed: int, synths: dict[str, Synthesizer]) -> None:
        self.stage, self.seed, self.synths = stage, seed, synths
        self.images: dict[str, dict[str, Any]] = {}
        self.pairs: list[dict[str, Any]] = []
        self.accepted: set[str] = set()
        self.bad: list[dict[str, Any]] = []
        self.candidates = 0
        self.calls = 0
        self.failures: dict[str, list[str]] = defaultdict(list)  # synthesizer -> "Type: message" per failure

    def _quarantine(self, row: dict[str, Any], synth: str, reason: str, detail: str, item_id: str) -> None:
        self.candidates += 1
        self.bad.append({"source_uri": f"synth://{synth or 'input'}/{row['image_id']}", "stage": self.stage,
                         "reason": reason, "detail": detail, "item_id": item_id})

    def unreadable(self, row: dict[str, Any], error: Exception) -> None:
        self._quarantine(row, "", "unreadable_image", f"{type(error).__name__}: {error}", row["image_id"])

    def rejected(self, row: dict[str, Any], synth: str, reason: str, detail: str) -> None:
        self._quarantine(row, synth, reason, detail[:200], row["image_id"])

    def failed(self, row: dict[str, Any], synth: str, error: Exception) -> None:
        detail = f"{type(error).__name__}: {str(error)[:200]}"
        self.failures[synth].append(detail)
        self._quarantine(row, synth, "synth_failed", detail, row["image_id"])

    def check_failures(self, limit: FailureLimit, unit: str) -> None:
        n = sum(len(v) for v in self.failures.values())
        if limit.exceeded(n, self.calls):
            raise SynthesizerFailures(f"unit {unit}: {n} of {self.calls} synthesizer calls failed "
                                      f"(limit: {limit.max_rate:.0%}, at least {limit.min_count}): "
                                      + describe_failures(self.failures))

    def add(self, d: Draft, row: dict[str, Any], verdict) -> None:
        self.candidates += 1
        pid = pair_id_of(d)
        uri = f"synth://{d.synthesizer}/{row['image_id']}"
        if verdict.ok and pid in self.accepted:  # the same edit drawn twice (e.g. by a chain)
            verdict.ok, verdict.reason, verdict.detail = False, "duplicate_pair", "same inputs and target as an earlier pair"
        if not verdict.ok:
            self.bad.append({"source_uri": uri, "stage": self.stage, "reason": verdict.reason,
                             "detail": f"{d.task}/{d.subtask}: {verdict.detail}", "item_id": pid})
            return
        synth = self.synths.get(d.synthesizer)
        weights = synth.weights_id if synth is not None else None
        for im in [d.source, d.target, *d.extras] + ([d.mask] if d.mask else []):
            if im.is_new and im.id not in self.images:
                self.images[im.id] = image_row(im, uri, row, d, weights)
        provenance = {
            "stage": self.stage,
            "synthesizer": d.synthesizer,
            "algorithm": getattr(synth, "algorithm", ""),
            "params": d.params,
            "seed": self.seed,
            "origin_image_id": row["image_id"],
            "source_caption": row.get("caption"),
            "weights": weights,
            "random_init": bool(weights and "random-init" in weights),
        }
        self.accepted.add(pid)
        self.pairs.append({
            "pair_id": pid,
            "source_id": d.source.id,
            "target_id": d.target.id,
            "task": d.task,
            "subtask": d.subtask,
            "mask_id": d.mask.id if d.mask else None,
            "extra_input_ids": [e.id for e in d.extras],
            "scores": [{"name": k, "value": float(v)} for k, v in sorted(verdict.scores.items())],
            "parent_pair_id": pair_id_of(d.parent) if d.parent else None,
            "provenance": json.dumps(provenance, default=str),
            "slots": pair_slots(d, row),
        })

    def tables(self) -> dict[str, pa.Table]:
        return {
            "images": pa.Table.from_pylist(list(self.images.values()), IMAGES),
            "pairs": pa.Table.from_pylist(self.pairs, PAIRS),
            "quarantine": pa.Table.from_pylist(self.bad, QUARANTINE),
        }

    def counts(self) -> dict[str, int]:
        counts = {"candidates": self.candidates, "synth_calls": self.calls,
                  "synth_failures": sum(len(v) for v in self.failures.values())}
        counts.update({f"synth_failures.{name}": len(v) for name, v in sorted(self.failures.items())})
        return counts


def pair_slots(d: Draft, row: dict[str, Any]) -> dict[str, str]:
    """The draft's own slots plus the caption of the photo it came from (when it has one)."""
    slots = dict(d.slots)
    caption = row.get("caption")
    if "caption" not in slots and isinstance(caption, str) and caption.strip():
        slots["caption"] = slot_text(caption)
    return slots


def describe_failures(failures: dict[str, list[str]]) -> str:
    return "; ".join(f"{name} x{len(errs)} ({errs[0]})" for name, errs in sorted(failures.items()))


def image_row(im: Img, uri: str, row: dict[str, Any], d: Draft, weights: str | None) -> dict[str, Any]:
    meta = {k: v for k, v in im.meta.items() if not k.startswith("_")}
    meta.update(derived_from=row["image_id"], synthesizer=d.synthesizer, task=d.task, subtask=d.subtask)
    if weights:  # model output: which weights, and whether they were random-init
        meta.update(weights=weights, random_init="random-init" in weights)
    data, fmt = encode_kind(im.pil, im.kind)  # the codec of its kind (acedata.codecs)
    return {
        "image_id": im.id,
        "source_uri": uri,
        "width": im.pil.width,
        "height": im.pil.height,
        "format": fmt,
        "image": {"bytes": data, "path": None},
        "kind": im.kind,
        "orig_mode": im.pil.mode,
        "group": row.get("group"),
        "meta": json.dumps(meta, default=str),
    }
