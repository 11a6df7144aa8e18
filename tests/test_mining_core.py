"""Pair-mining building blocks: union-find, blocked similarity, k-means, the chaining
guard and the two-turn miner on generated embeddings with a known answer."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest

from acedata.errors import UserError
from acedata.mining.chaining import GuardConfig, guard_sets
from acedata.mining.kmeans import assign, faiss_threads, size_stats, train_spherical
from acedata.mining.pairs import sample_pairs
from acedata.mining.scorers import make_scorer
from acedata.mining.scorers.siglip import SiglipScorer
from acedata.mining.similarity import BandStats, band_edges
from acedata.mining.synthetic import generate
from acedata.mining.twopass import MiningParams, MiningStats, mine_cluster, mine_clusters
from acedata.mining.vectors import fixed_list, to_matrix
from acedata.unionfind import UnionFind


def test_union_find_invariants():
    rng = np.random.default_rng(1)
    n = 500
    uf = UnionFind(n)
    edges = rng.integers(0, n, size=(400, 2))
    # reference: connected components by BFS over the same edges
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges.tolist():
        adj[a].add(b)
        adj[b].add(a)
        uf.union(a, b)
    comp = np.full(n, -1)
    for s in range(n):
        if comp[s] < 0:
            stack = [s]
            comp[s] = s
            while stack:
                v = stack.pop()
                for w in adj[v]:
                    if comp[w] < 0:
                        comp[w] = s
                        stack.append(w)
    labels = uf.labels()
    for a, b in rng.integers(0, n, size=(2000, 2)).tolist():
        assert (labels[a] == labels[b]) == (comp[a] == comp[b])
    # after labels() every path is compressed: each parent is a root
    assert (uf.parent[uf.parent] == uf.parent).all()
    assert n - uf.unions == len(set(labels.tolist())) == len(uf.sets())
    # union by rank keeps trees shallow: rank <= log2(n)
    assert uf.rank.max() <= np.log2(n)
    assert sum(len(s) for s in uf.sets()) == n
    assert not uf.union(int(edges[0, 0]), int(edges[0, 1]))  # already joined


def test_union_by_rank_chain_is_shallow():
    uf = UnionFind(1024)
    for i in range(1023):  # a path graph: naive linking would build a 1023-deep chain
        uf.union(i, i + 1)
    assert uf.rank.max() <= 10
    assert len(uf.sets()) == 1


@pytest.mark.parametrize("block", [7, 64, 1000])
def test_blocked_band_equals_dense(block):
    g = generate(n_coarse=3, fine_per_coarse=3, group_size=10, seed=3)
    lo, hi = 0.6, 0.95
    stats = BandStats()
    src, dst, sim = band_edges(g.x, lo, hi, block=block, stats=stats)
    dense = g.x @ g.x.T
    i, j = np.nonzero(np.triu((dense >= lo) & (dense <= hi), 1))
    assert list(zip(src.tolist(), dst.tolist())) == list(zip(i.tolist(), j.tolist()))
    np.testing.assert_allclose(sim, dense[i, j], atol=1e-5)
    n = len(g.x)
    nb = -(-n // block)
    assert stats.blocks == nb * (nb + 1) // 2  # the upper triangle of blocks, each once
    assert stats.edges == len(src)


def test_to_matrix_accepts_lists_and_fixed_lists():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    fixed = fixed_list(x, np.float16)
    plain = pa.array(x.tolist(), pa.list_(pa.float32()))
    np.testing.assert_array_equal(to_matrix(fixed), x)
    np.testing.assert_array_equal(to_matrix(plain), x)
    np.testing.assert_array_equal(to_matrix(pa.chunked_array([plain[:2], plain[2:]])), x)
    with pytest.raises(UserError, match="different lengths"):
        to_matrix(pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32())))
    with pytest.raises(UserError, match="expected a list"):
        to_matrix(pa.array([1.0, 2.0]))


def test_spherical_kmeans_finds_coarse_clusters():
    g = generate(n_coarse=6, fine_per_coarse=3, group_size=12, a2=0.6, b2=0.25, near_dups=0, bridges=0, seed=5)
    km = train_spherical(g.x, 6, niter=25, seed=0, gpu=False, nredo=5)
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, atol=1e-4)
    cid, sim = assign(g.x, km.centroids)
    np.testing.assert_allclose(sim, np.max(g.x @ km.centroids.T, axis=1), atol=1e-5)
    # each coarse cluster maps to one k-means cluster (purity), most of the time exactly
    purity = sum(np.bincount(cid[g.coarse == c]).max() for c in range(6)) / len(cid)
    assert purity >= 0.95
    s = size_stats(np.bincount(cid, minlength=6), 6)
    assert s["nonempty"] <= 6 and s["max"] >= s["median"] >= s["min"] >= 1
    assert train_spherical(g.x[:3], 10, gpu=False).centroids.shape[0] == 3  # k capped at n


def test_faiss_thread_count_changes_no_result():
    # cluster units run FAISS at resources.num_cpus threads: centroids and searches must not depend on it
    import faiss

    from acedata.mining.twolevel import nearest

    x = generate(n_coarse=6, fine_per_coarse=3, group_size=12, seed=5).x
    before = faiss.omp_get_max_threads()
    got = []
    for n in (1, 3):
        with faiss_threads(n):
            assert faiss.omp_get_max_threads() == n
            km = train_spherical(x[:300], 5, niter=10, seed=1, gpu=False)
            got.append((km.centroids, *nearest(x, km.centroids, 3)))
    assert faiss.omp_get_max_threads() == before
    for a, b in zip(*got):
        assert np.array_equal(a, b)


def test_sample_pairs_deterministic_and_capped():
    def pairs(*args):
        i, j = sample_pairs(*args)
        return list(zip(i.tolist(), j.tolist()))

    key = "f" * 64
    allp = pairs(20, 10_000, key)
    assert len(allp) == 190 and all(i < j for i, j in allp)
    a, b = pairs(20, 30, key), pairs(20, 30, key)
    assert a == b and len(set(a)) == 30 and set(a) <= set(allp)
    assert pairs(20, 30, "0" * 64) != a


def _score(pairs: set[tuple[str, str]], truth: set[tuple[str, str]]) -> tuple[float, float]:
    tp = len(pairs & truth)
    return tp / max(1, len(pairs)), tp / max(1, len(truth))


def _mine_all(g, params, cap=10_000):
    """Mine every coarse cluster (the truth's) and return unordered id pairs and stats."""
    stats = MiningStats()
    out = set()
    for c in np.unique(g.coarse):
        rows = np.flatnonzero(g.coarse == c)
        for fs in mine_cluster(g.x[rows], SiglipScorer(), params, None, stats):
            for a, b in zip(*sample_pairs(len(fs.members), cap, "0" * 64)):
                ia, ib = rows[fs.members[a]], rows[fs.members[b]]
                if float(g.x[ia] @ g.x[ib]) < 0.97:  # the cleaning filter's duplicate cut
                    out.add(tuple(sorted((g.ids[ia], g.ids[ib]))))
    return out, stats


def test_chain_bridges_are_split_by_the_guard():
    g = generate(n_coarse=6, fine_per_coarse=4, group_size=10, near_dups=10, bridges=12, seed=7)
    truth = g.true_pairs()
    base = {"tau_low": 0.7, "tau_high": 0.97, "pass2_low": 0.7, "pass2_high": 0.97}
    off, _s_off = _mine_all(g, MiningParams(**base, guard=GuardConfig(enabled=False)))
    on, s_on = _mine_all(g, MiningParams(**base, guard=GuardConfig(min_pair_sim=0.7, max_set_size=64)))
    p_off, _r_off = _score(off, truth)
    p_on, r_on = _score(on, truth)
    # without the guard, bridges chain fine groups together: many wrong pairs
    assert p_off < 0.8
    # with it: precision >= 0.97 and recall >= 0.9 (members of a group are all in band of each other)
    assert p_on >= 0.97, (p_on, r_on)
    assert r_on >= 0.9, (p_on, r_on)
    assert s_on.guard_pass1.sets_incoherent > 0 and s_on.guard_pass1.incoherent_pairs_before > 0
    assert s_on.guard_pass1.incoherent_pairs_after == 0 and s_on.guard_pass2.incoherent_pairs_after == 0


def test_guard_bounds_set_size_and_peels():
    g = generate(n_coarse=1, fine_per_coarse=1, group_size=100, near_dups=0, bridges=0, seed=2)
    src, dst, sim = band_edges(g.x, 0.5, 1.0)
    uf = UnionFind(len(g.x))
    uf.union_edges(src, dst)
    sets, st = guard_sets(uf.sets(2), g.x, (src, dst, sim), 0.5, GuardConfig(max_set_size=16, min_pair_sim=0.5,
                                                                             max_rounds=1), upper=0.55)
    assert st.sets_oversize == 1 and st.sets_peeled >= 1
    assert all(2 <= len(s) <= 16 for s in sets)
    assert len(set(np.concatenate(sets).tolist())) == sum(len(s) for s in sets)  # disjoint
    assert sum(len(s) for s in sets) + st.members_dropped == 100


def test_unknown_scorer_is_a_user_error():
    with pytest.raises(UserError, match="unknown scorer"):
        make_scorer("nope")


def test_face_scorer_without_weights_names_the_model(tmp_path):
    from acedata.errors import ModelNotFound

    s = make_scorer("face", {"root": str(tmp_path)})
    with pytest.raises(ModelNotFound, match="insightface/buffalo_l") as e:
        s.setup()
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_stacked_guard_counts_equal_per_set_counts():
    """The guard's stacked check counts exactly the incoherent pairs the per-set check counts,
    with and without pass-2 scores (NaN: unscored counts as incoherent)."""
    from acedata.mining.chaining import _bad_pairs, _count_bad, _stacked_bad_counts

    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 32)).astype(np.float32) + 1.5 * rng.standard_normal(32).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(400)
    sizes = rng.integers(1, 40, 60)
    sets = [np.sort(p) for p in np.split(perm, np.cumsum(sizes))[:-1] if len(p)]
    scores = rng.random((400, 400)).astype(np.float32)
    scores[rng.random((400, 400)) < 0.02] = np.nan
    scores = np.fmin(scores, scores.T)

    def score_of(m: np.ndarray) -> np.ndarray:
        return scores[m[..., :, None], m[..., None, :]]

    # a second pass re-checks some sets as they were and some new ones (halves of the others),
    # the first pass's similarity checks looked up in `low`
    again = sets[::2] + [h for m in sets[1::2] for h in np.array_split(m, 2) if len(h)]
    for cfg, sof in ((GuardConfig(min_pair_sim=0.6), None), (GuardConfig(min_pair_sim=0.6, min_pair_score=0.3), score_of)):
        low: dict = {}
        for these in (sets, again):
            got = _stacked_bad_counts(these, x, cfg, sof, low)
            want = {i: _count_bad(_bad_pairs(m, x, cfg, sof)) for i, m in enumerate(these) if len(m) >= 2}
            assert {i: int(c) for i, c in enumerate(got) if c >= 0} == want and sum(want.values()) > 0
        assert low


def test_normalize_in_steps_is_the_whole_array_formula_bit_for_bit(monkeypatch):
    """normalize works in row steps (and gathers `rows` itself): the bits of x / ||x|| at once."""
    from acedata.mining import vectors

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((700, 48)) * rng.random((700, 1)) * 10).astype(np.float16)
    x[3] = 0
    order = rng.permutation(700)
    xs = x[order].astype(np.float32)
    want = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    monkeypatch.setattr(vectors, "NORM_ROWS", 64)
    assert vectors.normalize(x, order).tobytes() == want.tobytes()
    assert vectors.normalize(x[order]).tobytes() == want.tobytes()


def test_low_sims_decide_exactly_as_the_per_set_product():
    """The stacked similarity checks are `x @ x.T < t` of each set, even with `t` set to one of
    the per-set products itself (there the einsum and BLAS sums may round apart by an ulp)."""
    from acedata.mining.chaining import _low_sims

    rng = np.random.default_rng(7)
    for d, s in ((768, 8), (64, 5), (31, 13)):
        x = rng.standard_normal((600, d)).astype(np.float32) + rng.standard_normal(d).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        rows = x[rng.permutation(600)[: 30 * s]].reshape(30, s, d)
        exact = [r @ r.T for r in rows]
        for t in [0.5, float(exact[3][0, 1]), float(exact[7][2, 4]), float(np.median(np.stack(exact)))]:
            assert (_low_sims(rows, t) == np.stack([e < t for e in exact])).all()


class _PlainCosine(SiglipScorer):
    """siglip's scores through the per-cluster scorer path (as a model scorer is called)."""

    cosine_scores = False


@pytest.mark.parametrize("scorer", [SiglipScorer(), _PlainCosine()], ids=["one-call", "per-cluster"])
def test_mine_clusters_equals_mine_cluster_per_cluster(scorer):
    g = generate(n_coarse=5, fine_per_coarse=4, group_size=10, near_dups=10, bridges=12, seed=3)
    order = np.argsort(g.coarse, kind="stable")
    x, cid = g.x[order], g.coarse[order]
    bounds = np.r_[0, np.flatnonzero(np.diff(cid)) + 1, len(cid)]
    params = MiningParams(tau_low=0.7, tau_high=0.97, pass2_low=0.7, pass2_high=0.97,
                          guard=GuardConfig(min_pair_sim=0.7, max_set_size=8))
    one, per = MiningStats(), MiningStats()
    got = mine_clusters(x, bounds, scorer, params, None, one)
    want = [(lo + fs.members, fs.pass2) for lo, hi in pairwise(bounds)
            for fs in mine_cluster(x[lo:hi], scorer, params, None, per)]
    assert len(got) == len(want) > 10
    for fs, (m, p2) in zip(got, want):
        assert np.array_equal(fs.members, m)
        assert np.array_equal(fs.pass2, p2, equal_nan=True)
    a, b = one.flat(), per.flat()
    a.pop("guard1_micros"), a.pop("guard2_micros"), b.pop("guard1_micros"), b.pop("guard2_micros")
    assert a == b and a["guard1_sets_incoherent"] > 0
