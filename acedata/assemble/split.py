"""The validation split without a driver-side union-find, and the seeded global shuffle.

Guarantee: no image is in both splits. Samples that share an image are connected; a
connected group of images goes wholly to one split, chosen by a seeded hash of its smallest
image id (the same rule as the single-process reference, so both give the same split).

Connected components, distributed: the image graph (a star over each usable pair's inputs
and target) is kept as an edge list partitioned by node, in edge buckets of about
10 x `shuffle_rows` edges (edge rows are two ids; with image buckets every round wrote
image-buckets^2 files, which grew with the run), re-bucketed by image once settled. Rounds alternate the large-star and
small-star operations of Kiveris et al., "Connected Components in MapReduce and Beyond"
(SoCC 2014): each node links its larger neighbours (large) or its smaller neighbours and
itself (small) to the smallest node it sees. Every round is one wave of one unit per node
bucket; each preserves connectivity and the graph becomes one star per component, centred
on its smallest node, in O(log^2 n) rounds. A large-star round's units count the nodes that
are not yet settled (a non-centre with more than one neighbour); when a round counts none, its
input is the star forest, and a node's component is min(itself, its neighbours).
(A bounded label propagation would need as many rounds as the longest chain of images.)
Known limit: a star's centre holds all its component's edges, so a giant component (say a
quarter of all images linked by edit chains) puts them in one bucket; the label wave only reads
each node's own edge, but the rounds' unit of that bucket grows with the component.
When all edges fit one unit (at most 10 x `shuffle_rows` of them, known from the join's counts), one
`components` unit runs an in-memory union-find over them instead, which saves the rounds' waves.

Then `label` units (one per image bucket) read the samples keyed by their first image and the
final edges of that bucket, assign the split, and write each sample into the output bucket of
its split by a range of its seeded shuffle hash, so output units in bucket order, each sorted
by the hash, are the whole split in shuffled order; and request the images each output bucket
needs (fetch.py).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acedata import shuffle
from acedata.assemble import fetch
from acedata.assemble.config import AssembleConfig
from acedata.assemble.records import EDGES, ORDERED, SAMPLES, SPLITS, range_bucket, shuffle_hash, split_of
from acedata.unionfind import group_roots


def edges_dir(scratch: str, r: int) -> str:
    return posixpath.join(scratch, f"edges-{r:04d}")


def label_edges_dir(scratch: str) -> str:
    """The star forest (or the one unit's roots) by image bucket, as the label wave reads it."""
    return posixpath.join(scratch, "edges-label")


def out_dir(scratch: str, split: str) -> str:
    return posixpath.join(scratch, f"out-{split}")


def _neighbours(scratch: str, b: int) -> dict[str, set[str]]:
    t = shuffle.read_bucket(label_edges_dir(scratch), b, schema=EDGES)
    nbrs: dict[str, set[str]] = defaultdict(set)
    for u, v in zip(t.column("key").to_pylist(), t.column("nbr").to_pylist()):
        if u != v:
            nbrs[u].add(v)
    return nbrs


def star_round(r: int, large: bool, b: int, scratch: str, n_edge: int, writer: str) -> dict[str, int]:
    """One large-star or small-star step over the nodes of edge bucket `b`; writes round r+1's edges."""
    t = shuffle.read_bucket(edges_dir(scratch, r), b, schema=EDGES)
    src, dst, unsettled = star_step(t.column("key"), t.column("nbr"), large)
    shuffle.write_buckets(pa.table({"key": src, "nbr": dst}, schema=EDGES), "key", n_edge,
                          edges_dir(scratch, r + 1), writer)
    return {"asm_unsettled": unsettled} if large else {}


def star_step(key: pa.ChunkedArray, nbr: pa.ChunkedArray, large: bool) -> tuple[pa.Array, pa.Array, int]:
    """The edges one star step emits for one bucket's edge list, and (large) its unsettled nodes.

    Per node u with neighbours N (self-loops and repeats dropped), m = min(N + {u}): large links
    each v in N with v > u to m, small each v in N + {u} with v < u or v = u; an emitted link is
    both directions (v, m), (m, v), skipped when v = m, in (u, v) order. Vectorised over ids
    ranked in sorted order: per-node Python sets cost ~4.5 us per edge each round (0.5 us here), and the
    number of rounds grows with the graph.
    """
    both = pa.chunked_array([*key.chunks, *nbr.chunks], pa.string()).combine_chunks().dictionary_encode()
    order = pc.sort_indices(both.dictionary).to_numpy()  # UTF-8 byte order = code point order = str order
    names = both.dictionary.take(pa.array(order))
    n = max(1, len(names))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    ranked = rank[both.indices.to_numpy(zero_copy_only=False)]
    u, v = ranked[:len(key)], ranked[len(key):]
    code = np.sort(u[u != v] * n + v[u != v])
    code = code[np.r_[True, code[1:] != code[:-1]]] if len(code) else code  # distinct (u, v), by u then v
    uu, vv = code // n, code % n
    first = np.flatnonzero(np.r_[True, uu[1:] != uu[:-1]]) if len(uu) else np.zeros(0, np.int64)
    nodes = uu[first]
    low = np.minimum(vv[first], nodes)  # each node's m: its smallest neighbour, or itself
    unsettled = 0
    if large:
        deg = np.diff(np.r_[first, len(uu)])
        unsettled = int(((low < nodes) & (deg > 1)).sum())
        links = code[vv > uu]
    else:
        links = np.sort(np.concatenate([code[vv < uu], nodes * n + nodes]))
    lu, lv = links // n, links % n
    lm = low[np.searchsorted(nodes, lu)]
    keep = lv != lm
    lv, lm = lv[keep], lm[keep]
    a, z = np.empty(2 * len(lv), np.int64), np.empty(2 * len(lv), np.int64)
    a[0::2], a[1::2] = lv, lm
    z[0::2], z[1::2] = lm, lv
    return names.take(pa.array(a)), names.take(pa.array(z)), unsettled


def components(n_edge: int, n_img: int, scratch: str, writer: str) -> dict[str, int]:
    """All edges in one unit: each node linked to its component's smallest node (the label's edges)."""
    src, dst = [], []
    for b in range(n_edge):
        t = shuffle.read_bucket(edges_dir(scratch, 0), b, schema=EDGES)
        src += t.column("key").to_pylist()
        dst += t.column("nbr").to_pylist()
    roots = group_roots(zip(src, dst))
    nodes = sorted(v for v, r in roots.items() if v != r)
    shuffle.write_buckets(pa.table({"key": nodes, "nbr": [roots[v] for v in nodes]}, schema=EDGES), "key", n_img,
                          label_edges_dir(scratch), writer)
    return {}


def rebucket(r: int, b: int, scratch: str, n_img: int, writer: str) -> dict[str, int]:
    """The star forest's edge bucket `b` (round r's input), sent on by image bucket for the label wave."""
    t = shuffle.read_bucket(edges_dir(scratch, r), b, schema=EDGES)
    shuffle.write_buckets(t, "key", n_img, label_edges_dir(scratch), writer)
    return {}


def label(b: int, scratch: str, c: AssembleConfig, final_edges: int | None, n_out: dict[str, int], n_img: int,
          writer: str) -> dict[str, int]:
    """Assign this bucket's samples to a split and to the output bucket of their shuffle hash."""
    nbrs = _neighbours(scratch, b) if final_edges is not None else {}
    t = shuffle.read_bucket(posixpath.join(scratch, "samples"), b, schema=SAMPLES)
    rows: dict[str, dict[str, list]] = {s: {"h": [], "sample_id": [], "rec": []} for s in n_out}
    images: dict[str, list[list[str]]] = {s: [] for s in n_out}
    counts: dict[str, int] = defaultdict(int)
    for first, sid, kind, text, need in zip(*(t.column(k).to_pylist()
                                              for k in ("key", "sample_id", "kind", "rec", "images"))):
        root = min(nbrs.get(first, ()), default=first)
        split = split_of(min(root, first), c.validation_fraction, c.seed)
        part = rows[split]
        part["h"].append(shuffle_hash(c.seed, sid))
        part["sample_id"].append(sid)
        part["rec"].append(text)
        images[split].append(need)
        counts[f"planned_{kind}"] += 1
        counts[f"planned_{split}"] += 1
    for split, part in rows.items():
        table = pa.table(part, schema=ORDERED)
        buckets = np.array([range_bucket(h, n_out[split]) for h in part["h"]], np.int64)
        shuffle.write_parts(table, buckets, out_dir(scratch, split), writer)
        # the images each output bucket needs, sent to their image buckets (fetch.py)
        ids = [i for need in images[split] for i in need]
        outs = np.repeat(buckets, [len(need) for need in images[split]]).tolist()
        k = list(SPLITS).index(split)
        fetch.request(ids, k, outs, scratch, n_img, f"{writer}-{k}")  # one file per split and bucket
    return dict(counts)
