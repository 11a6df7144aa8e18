"""Mergeable, deterministic summaries for `acedata stats` partials (see `acedata.stats_partial`).

Each summary is built from one partial's values and merged on the driver; merging is associative
and commutative and every result is a function of the multiset of values alone, so the answer does
not depend on how rows were split into partials or in which order partials arrive.

- `nearest_quantile`: polars' `interpolation="nearest"` read off a sorted value -> count map.
- exact float sums (`sum_parts`): each float64 is m * 2^(e-53) with an integer m; per exponent the
  high and low 26-bit halves of m are summed as int64, so a sum (and a mean) is exact however the
  values were grouped, where a float accumulation would change in the last bits.
- log buckets (`bucket_keys`): a DDSketch-style relative-error sketch for float values, bucket
  (gamma^(k-1), gamma^k] stands for 2 gamma^k / (gamma + 1), within `RELATIVE_ERROR` of every value
  in it; |v| < `ZERO_BELOW` counts as 0.
- HyperLogLog (`hll_registers`, `hll_estimate`) over xxh3-64 of the UTF-8 text: 2^14 registers,
  standard error 1.04 / sqrt(2^14) = 0.81%; merged by element-wise max.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import xxhash

# --- quantiles off a value -> count map -------------------------------------------------------


def nearest_index(q: float, n: int) -> int:
    """The 0-based rank polars' `quantile(q, interpolation="nearest")` picks among n sorted values:
    q * (n - 1) rounded half away from zero (Rust's f64::round)."""
    i = q * (n - 1)
    lo = math.floor(i)
    return min(n - 1, lo + (1 if i - lo >= 0.5 else 0))


def nearest_quantile(sorted_items: list[tuple[Any, int]], q: float, n: int) -> Any:
    """The value at `nearest_index(q, n)` of (value, count) pairs sorted by value, n = total count."""
    k = nearest_index(q, n)
    seen = 0
    for v, c in sorted_items:
        seen += c
        if seen > k:
            return v
    return sorted_items[-1][0] if sorted_items else None


# --- exact float sums -----------------------------------------------------------------------

_HALF = 26


def sum_parts(values: np.ndarray, counts: np.ndarray) -> dict[int, list[int]]:
    """Exact Σ value * count of finite float64 values as {exponent: [Σ high half, Σ low half]}."""
    if not len(values):
        return {}
    m, e = np.frexp(values.astype(np.float64))
    mi = (m * 2.0**53).astype(np.int64)  # exact: |m| < 1 has 53 significant bits
    hi = (mi >> _HALF) * counts  # |hi| < 2^27, so products and sums stay far inside int64
    lo = (mi & ((1 << _HALF) - 1)) * counts
    order = np.argsort(e, kind="stable")
    e, hi, lo = e[order], hi[order], lo[order]
    starts = np.flatnonzero(np.r_[True, e[1:] != e[:-1]])
    return {int(x): [int(a), int(b)] for x, a, b in
            zip(e[starts], np.add.reduceat(hi, starts), np.add.reduceat(lo, starts))}


def merge_sum_parts(a: dict[int, list[int]], b: dict[int, list[int]]) -> dict[int, list[int]]:
    """`a` plus `b`, in place."""
    for k, (h, low) in b.items():
        cur = a.setdefault(k, [0, 0])
        cur[0] += h
        cur[1] += low
    return a


def parts_total(parts: dict[int, list[int]]) -> Fraction:
    total = Fraction(0)
    for e, (h, low) in parts.items():
        mant = (h << _HALF) + low
        total += Fraction(mant) * (Fraction(2) ** (int(e) - 53))
    return total


# --- log buckets ----------------------------------------------------------------------------

RELATIVE_ERROR = 0.001
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LN_GAMMA = math.log(GAMMA)
ZERO_BELOW = 1e-9
_OFFSET = -math.ceil(math.log(ZERO_BELOW) / _LN_GAMMA) + 1  # keys of |v| >= ZERO_BELOW are >= 1


def bucket_keys(values: np.ndarray) -> np.ndarray:
    """Signed bucket keys, ascending with the value: 0 for |v| < ZERO_BELOW."""
    v = values.astype(np.float64)
    a = np.abs(v)
    big = a >= ZERO_BELOW
    k = np.zeros(len(v), np.int64)
    with np.errstate(divide="ignore"):
        k[big] = np.ceil(np.log(a[big]) / _LN_GAMMA).astype(np.int64) + _OFFSET
    return np.where(v < 0, -k, k)


def bucket_value(key: int) -> float:
    """The value a bucket stands for (within RELATIVE_ERROR of each of its values)."""
    if key == 0:
        return 0.0
    k = abs(key) - _OFFSET
    v = 2.0 * GAMMA**k / (GAMMA + 1.0)
    return v if key > 0 else -v


def add_counts(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    """`a` plus `b`, in place (the driver folds partials into one accumulator)."""
    for k, c in b.items():
        a[k] = a.get(k, 0) + c
    return a


def to_buckets(exact: dict[float, int]) -> dict[int, int]:
    if not exact:
        return {}
    vals = np.fromiter(exact.keys(), np.float64, len(exact))
    counts = np.fromiter(exact.values(), np.int64, len(exact))
    return counts_by_key(bucket_keys(vals), counts)


def counts_by_key(keys: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    uniq, inv = np.unique(keys, return_inverse=True)
    summed = np.zeros(len(uniq), np.int64)
    np.add.at(summed, inv, counts)
    return {int(k): int(c) for k, c in zip(uniq, summed)}


# --- distinct values --------------------------------------------------------------------------

HLL_P = 14
HLL_M = 1 << HLL_P
HLL_STD_ERROR = round(1.04 / math.sqrt(HLL_M), 4)
_NULL_HASH = 0  # a null text counts as one more distinct value, as polars' n_unique counts it


def text_hashes(texts: list[str | None]) -> np.ndarray:
    """Sorted unique xxh3-64 hashes of texts (stable across processes and machines)."""
    nulls = texts.count(None)
    if nulls:
        texts = [t for t in texts if t is not None]
    h = np.fromiter(map(xxhash.xxh3_64_intdigest, map(str.encode, texts)), np.uint64, len(texts))
    return sorted_unique(np.append(h, np.uint64(_NULL_HASH)) if nulls else h)


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by a sort (faster than its hash path for uint64)."""
    s = np.sort(x)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _clz64(w: np.ndarray) -> np.ndarray:
    n = np.zeros(len(w), np.int64)
    x = w.copy()
    for s in (32, 16, 8, 4, 2, 1):
        top_zero = x < (np.uint64(1) << np.uint64(64 - s))
        n[top_zero] += s
        x[top_zero] <<= np.uint64(s)
    n[w == 0] = 64
    return n


def hll_registers(hashes: np.ndarray) -> np.ndarray:
    reg = np.zeros(HLL_M, np.uint8)
    if len(hashes):
        h = hashes.astype(np.uint64)
        idx = (h >> np.uint64(64 - HLL_P)).astype(np.int64)
        rank = np.minimum(_clz64(h << np.uint64(HLL_P)), 64 - HLL_P) + 1
        np.maximum.at(reg, idx, rank.astype(np.uint8))
    return reg


def hll_estimate(reg: np.ndarray) -> int:
    m = float(HLL_M)
    alpha = 0.7213 / (1 + 1.079 / m)
    est = alpha * m * m / float(np.sum(np.ldexp(1.0, -reg.astype(np.int64))))
    zeros = int(np.count_nonzero(reg == 0))
    if est <= 2.5 * m and zeros:
        est = m * math.log(m / zeros)  # linear counting for the small range
    return round(est)
