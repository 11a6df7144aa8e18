"""Disjoint sets: the one union-find of the project.

* `UnionFind` — incremental, over 0..n-1 (path compression, union by rank), for code
  that merges as it goes;
* `components` — the same partition for a whole edge list at once, vectorised
  (scipy's connected components), for mining where edge lists are large;
* `group_roots` — string keys (image ids): every key mapped to the smallest key of its
  group, so a group's name does not depend on the order it was built in.
"""

from __future__ import annotations

from collections.abc import Iterable

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
        return label_sets(self.labels(), min_size)


SMALL = 4096  # graphs up to this many nodes: numpy label propagation (scipy's setup costs more)


def component_labels(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Component label of each of n nodes under undirected edges (src[i], dst[i])."""
    if len(src) == 0:
        return np.arange(n, dtype=np.int64)
    if n <= SMALL:
        return _propagate(n, np.asarray(src, np.int64), np.asarray(dst, np.int64))
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, labels = connected_components(g, directed=False)
    return labels.astype(np.int64)


def _propagate(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Min-label propagation with pointer jumping: every node ends labelled with the smallest
    node of its component (hook each edge's larger root under the smaller, then shortcut)."""
    labels = np.arange(n, dtype=np.int64)
    while True:
        ls, ld = labels[src], labels[dst]
        lo, hi = np.minimum(ls, ld), np.maximum(ls, ld)
        changed = lo != hi
        if not changed.any():
            return labels
        np.minimum.at(labels, hi[changed], lo[changed])  # hook: a root under a smaller label
        while True:  # shortcut: follow pointers until every label is a root
            nxt = labels[labels]
            if (nxt == labels).all():
                break
            labels = nxt


def label_sets(labels: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """Members of each label (sorted), sets ordered by their smallest member."""
    order = np.argsort(labels, kind="stable")  # stable: members stay sorted inside a label
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(order)]
    keep = np.flatnonzero(ends - starts >= min_size) if len(order) else np.zeros(0, np.int64)
    keep = keep[np.argsort(order[starts[keep]], kind="stable")]  # by smallest member (distinct per set)
    # slices of `order` (views, as np.split gives), only for the sets kept: most labels are singletons
    return [order[a:b] for a, b in zip(starts[keep].tolist(), ends[keep].tolist())]


def components(n: int, src: np.ndarray, dst: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """Connected components of 0..n-1 (sorted members, ordered by smallest member);
    the same partition as `UnionFind.union_edges` + `sets`, without a Python loop."""
    return label_sets(component_labels(n, src, dst), min_size)


def group_roots(groups: Iterable[Iterable[str]]) -> dict[str, str]:
    """Every key that appears in `groups` -> the smallest key of its connected group
    (keys in one inner iterable are joined)."""
    index: dict[str, int] = {}
    src, dst = [], []
    for g in groups:
        first = -1
        for key in g:
            i = index.setdefault(key, len(index))
            if first < 0:
                first = i
            else:
                src.append(first)
                dst.append(i)
    keys = np.array(sorted(index), dtype=object)
    rank = {k: r for r, k in enumerate(keys.tolist())}
    by_rank = np.array([rank[k] for k in index], dtype=np.int64)  # insertion index -> sorted rank
    labels = component_labels(len(index), by_rank[np.array(src, dtype=np.int64)], by_rank[np.array(dst, dtype=np.int64)])
    smallest = np.full(labels.max() + 1 if len(labels) else 0, len(keys), dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(len(keys)))
    return {k: keys[smallest[labels[r]]] for k, r in rank.items()}
