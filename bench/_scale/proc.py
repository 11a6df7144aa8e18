"""Small parts the one-stage benchmarks share (bench/cluster_levels.py, bench/cluster_sample.py):
a child process's own peak RSS, the `--sizes` list, and the cached embeddings input per size."""

from __future__ import annotations

import os
import resource


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would carry the parent's peak across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sizes(spec: str) -> list[int]:
    """`1e5,1e6` -> [100000, 1000000]."""
    return [int(float(s)) for s in spec.split(",")]


def embeddings(work: str, n: int, dim: int) -> str:
    """`work`/emb-N: N generated embeddings of `dim` (written once, reused by later runs)."""
    from _scale import data  # imported here: a measuring child never loads the generators

    emb = os.path.join(work, f"emb-{n}")
    if not os.path.exists(emb):
        data.embeddings(emb, n, d=dim)
    return emb
