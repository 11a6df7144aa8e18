"""The pair stage's last step: cleaning filters over a unit's candidate pairs (vectorised),
image sizes looked up per unit, and the `pairs` rows."""

from __future__ import annotations

import hashlib
import operator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def pair_id(task: str, source: str, target: str) -> str:
    return hashlib.sha256(f"{task}:{source}:{target}".encode()).hexdigest()[:32]


_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_DIGEST = operator.methodcaller("digest")


def pair_ids(task: str, src: pa.Array, tgt: pa.Array) -> pa.Array:
    """`pair_id(task, s, t)` of every pair, as a string array: the keys joined by Arrow, the
    hashes by `map` (no Python frame per pair), the hex digits by numpy."""
    if not len(src):
        return pa.array([], pa.string())
    keys = pc.binary_join_element_wise(pa.scalar(task, pa.string()), src.cast(pa.string()), tgt.cast(pa.string()), ":")
    raw = np.frombuffer(b"".join(map(_DIGEST, map(hashlib.sha256, keys.cast(pa.binary()).to_pylist()))), np.uint8)
    head = raw.reshape(-1, 32)[:, :16]  # hexdigest()[:32]: the first 16 bytes
    text = np.empty((len(head), 32), np.uint8)
    text[:, 0::2], text[:, 1::2] = _HEX[head >> 4], _HEX[head & 15]
    offsets = np.arange(0, 32 * (len(head) + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(len(head), pa.py_buffer(offsets), pa.py_buffer(text))


def reject_reasons(f: Any, sim: np.ndarray, wa: np.ndarray, ha: np.ndarray, wb: np.ndarray,
                   hb: np.ndarray, same_id: np.ndarray | None = None) -> np.ndarray:
    """The cleaning filters, vectorised: per pair "" (kept) or the first reason that drops it.

    Sizes are NaN where unknown (embeddings-only runs); size and aspect filters then pass.
    """
    why = np.full(len(sim), "", dtype=object)

    def mark(mask: np.ndarray, reason: str) -> None:
        why[(why == "") & mask] = reason

    if same_id is not None:
        mark(same_id, "duplicate")  # one image listed twice (e.g. embedded in two tables)
    mark(sim >= f.duplicate_sim, "duplicate")
    if f.sim_min is not None:
        mark(sim < f.sim_min, "band")
    if f.sim_max is not None:
        mark(sim > f.sim_max, "band")
    with np.errstate(invalid="ignore", divide="ignore"):
        mark(np.fmin(np.fmin(wa, ha), np.fmin(wb, hb)) < f.min_side, "size")  # NaN compares False
        ra, rb = wa / np.maximum(ha, 1), wb / np.maximum(hb, 1)
        if f.max_aspect is not None:
            worst = np.maximum(np.maximum(ra, 1 / ra), np.maximum(rb, 1 / rb))
            mark(worst > f.max_aspect, "aspect")
        if f.max_aspect_change is not None:
            mark(np.maximum(ra, rb) / np.minimum(ra, rb) > f.max_aspect_change, "aspect")
    return why


def image_sizes(tables: list[str], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of `ids` as floats, NaN where unknown or without an images table; looked
    up by the worker in the images tables' index (never joined on the driver)."""
    w = np.full(len(ids), np.nan)
    h = np.full(len(ids), np.nan)
    if not tables or not ids:
        return w, h
    from acedata.image_index import shared_reader

    infos = shared_reader(tables).infos(ids)  # one batched lookup: a few index row groups per partition
    for k, image_id in enumerate(ids):
        info = infos.get(image_id)
        if info is None:
            continue
        w[k] = np.nan if info["width"] is None else info["width"]
        h[k] = np.nan if info["height"] is None else info["height"]
    return w, h


def pairs_table(task: str, subtask: str, provenance: str, a: pa.Array, b: pa.Array, sim: np.ndarray,
                score: np.ndarray, set_ids: np.ndarray, cluster_ids: np.ndarray, both_directions: bool) -> pa.Table:
    """Unordered pairs (source = the smaller image_id), or both directions (`a`, `b`: string arrays)."""
    first = pc.less_equal(a, b)
    src, tgt = pc.if_else(first, a, b), pc.if_else(first, b, a)
    if both_directions:
        src, tgt = pa.concat_arrays([src, tgt]), pa.concat_arrays([tgt, src])
        sim, score = np.concatenate([sim, sim]), np.concatenate([score, score])
        set_ids, cluster_ids = np.concatenate([set_ids, set_ids]), np.concatenate([cluster_ids, cluster_ids])
    n = len(src)
    return pa.table({
        "pair_id": pair_ids(task, src, tgt),
        "source_id": src.cast(pa.string()), "target_id": tgt.cast(pa.string()),
        "task": _repeat(task, n), "subtask": _repeat(subtask, n),
        "cluster_id": pa.array(cluster_ids, pa.int32()), "set_id": pa.array(set_ids, pa.int64()),
        "sim_pass1": pa.array(np.asarray(sim, np.float32)), "score_pass2": pa.array(np.asarray(score, np.float32)),
        "provenance": _repeat(provenance, n),
    })


def _repeat(value: str, n: int) -> pa.Array:
    """`value` n times, copied by Arrow (no list of n Python references to convert)."""
    return pa.array([value], pa.string()).take(pa.array(np.zeros(n, np.int32)))


def same_rows(names: pa.Array | pa.ChunkedArray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs whose two rows carry the same image_id (one image listed twice)."""
    if not len(a):
        return np.zeros(0, bool)
    return pc.equal(names.take(pa.array(a)), names.take(pa.array(b))).to_numpy(zero_copy_only=False)
