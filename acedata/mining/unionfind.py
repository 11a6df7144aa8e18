"""Disjoint sets over 0..n-1 with path compression and union by rank."""

from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.rank = np.zeros(n, dtype=np.int8)
        self.unions = 0  # successful merges (n - unions = number of sets)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression: point every node on the path at the root
            parent[x], x = root, parent[x]
        return int(root)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.rank[ra] < self.rank[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if self.rank[ra] == self.rank[rb]:
            self.rank[ra] += 1
        self.unions += 1
        return True

    def union_edges(self, src: np.ndarray, dst: np.ndarray) -> None:
        for a, b in zip(src.tolist(), dst.tolist()):
            self.union(a, b)

    def labels(self) -> np.ndarray:
        """Root of every element (fully compressed afterwards)."""
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))

    def sets(self, min_size: int = 1) -> list[np.ndarray]:
        """Members of each set (sorted), sets ordered by their smallest member."""
        labels = self.labels()
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        groups = [g for g in np.split(order, bounds) if len(g) >= min_size]
        groups = [np.sort(g) for g in groups]
        groups.sort(key=lambda g: int(g[0]))
        return groups
