"""Pair mining at any set size: dense sets larger than max_set_size, the band on every
written pair, k derived from N, border recovery, the vectorised union-find, and the pair
stage as an actor pool when its scorer loads a model."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acedata import shards
from acedata.mining.chaining import GuardConfig
from acedata.mining.kmeans import border_second, derive_k, sample_size
from acedata.mining.pairs import in_band_pairs, upper_pairs
from acedata.mining.partition import owned_here
from acedata.mining.scorers.siglip import SiglipScorer
from acedata.mining.twopass import MiningParams, MiningStats, mine_cluster
from acedata.pipeline import run_stages
from acedata.stage import RunContext
from acedata.stages.cluster import ClusterConfig
from acedata.stages.pair import Pair, PairConfig
from acedata.unionfind import UnionFind, components, group_roots


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def dense_set(n: int, cos: float = 0.9, d: int = 768, seed: int = 0) -> np.ndarray:
    """n vectors at pairwise cosine ~`cos` (a shared direction plus independent noise)."""
    rng = np.random.default_rng(seed)
    c = _unit(rng.standard_normal(d))
    return _unit(np.sqrt(cos) * c + np.sqrt(1 - cos) * _unit(rng.standard_normal((n, d))))


def _mine_pairs(x: np.ndarray, params: MiningParams, cap: int = 100) -> tuple[list, list, MiningStats]:
    stats = MiningStats()
    sets, pairs = [], []
    for fs in mine_cluster(x, SiglipScorer(), params, None, stats):
        sets.append(fs.members)
        i, j, sims, _, _ = in_band_pairs(x[fs.members], fs.pass2, (params.tau_low, params.tau_high),
                                         (params.pass2_low, params.pass2_high), cap, "0" * 64)
        pairs += [(int(fs.members[a]), int(fs.members[b]), float(s)) for a, b, s in zip(i, j, sims)]
    return sets, pairs, stats


@pytest.mark.parametrize("n", [65, 300, 1000])
def test_dense_set_larger_than_max_set_size_yields_bounded_in_band_pairs(n):
    x = dense_set(n, seed=n)
    params = MiningParams(tau_low=0.8, tau_high=0.95, pass2_low=0.8, pass2_high=0.95,
                          guard=GuardConfig(max_set_size=64, min_pair_sim=0.6))
    sets, pairs, stats = _mine_pairs(x, params)
    assert pairs, stats.flat()
    assert all(len(s) <= 64 for s in sets)
    assert all(0.8 <= s <= 0.95 for _, _, s in pairs)
    assert all(abs(float(x[a] @ x[b]) - s) < 1e-4 for a, b, s in pairs)
    # coherent subsets, not all-singletons: most members end in a set
    assert sum(len(s) for s in sets) >= 0.9 * n
    assert len({m for s in sets for m in s.tolist()}) == sum(len(s) for s in sets)  # disjoint


def test_out_of_band_pairs_inside_a_set_are_never_written():
    rng = np.random.default_rng(3)
    base = dense_set(12, cos=0.88, seed=3)
    dup = _unit(base[0] + 0.003 * rng.standard_normal(base.shape[1]))  # cosine ~0.997 with base[0]
    x = np.vstack([base, dup])
    sims = x @ x.T
    i, j = upper_pairs(len(x))
    assert (sims[i, j] > 0.95).any()  # the set does hold a pair above the band
    full = sims.copy()
    full[3, 4] = full[4, 3] = 0.1  # and a pair whose pass-2 score is below the pass-2 band
    a, b, s, oob, vetoed = in_band_pairs(x, full, (0.8, 0.95), (0.5, 1.0), 1000, "1" * 64)
    assert oob >= 2 and vetoed == 0 and len(a) == len(i) - oob
    assert ((s >= 0.8) & (s <= 0.95)).all()
    assert (3, 4) not in set(zip(a.tolist(), b.tolist()))
    # the cap samples among in-band pairs only, deterministically
    a2, b2, *_ = in_band_pairs(x, full, (0.8, 0.95), (0.5, 1.0), 10, "1" * 64)
    a3, b3, *_ = in_band_pairs(x, full, (0.8, 0.95), (0.5, 1.0), 10, "1" * 64)
    assert len(a2) == 10 and a2.tolist() == a3.tolist() and b2.tolist() == b3.tolist()


def test_k_is_derived_from_n_and_the_training_sample_is_bounded(tmp_path):
    assert derive_k(1_000_000, 1000) == 1000 and derive_k(4000, 1000) == 4 and derive_k(10, 1000) == 1
    assert sample_size(1000, 256, 39, 100_000) == 100_000  # not 256k
    assert sample_size(10_000, 256, 39, 100_000) == 390_000  # never below 39 per centroid
    assert sample_size(10, 256, 39, 100_000) == 2560
    x = dense_set(600, cos=0.3, d=32, seed=1)
    f = str(tmp_path / "emb.parquet")
    pq.write_table(pa.table({"image_id": [f"i{k:04d}" for k in range(len(x))],
                             "embedding": pa.array(x.tolist(), pa.list_(pa.float32(), 32))}), f)
    out = run_stages([ClusterConfig(name="cluster", target_cluster_size=100, inputs={"embeddings": f})],
                     str(tmp_path / "run"), executor="local")
    info = out["stages"][0]["kmeans"]
    assert info["k"] == 6 and info["k_derived"] and info["vectors"] == 600


def test_border_second_cluster_only_within_margin():
    ids = np.array([[0, 1], [2, 0], [1, -1]], dtype=np.int32)
    sims = np.array([[0.9, 0.88], [0.9, 0.5], [0.9, -np.inf]], dtype=np.float32)
    assert border_second(ids, sims, 0.05).tolist() == [1, -1, -1]
    assert border_second(ids, sims, None).tolist() == [-1, -1, -1]


def test_owned_here_writes_each_border_pair_once():
    rng = np.random.default_rng(0)
    home = rng.integers(0, 4, 500)
    other = np.where(rng.random(500) < 0.5, rng.integers(0, 4, 500), -1)
    other[other == home] = -1
    for a, b in rng.integers(0, 500, size=(2000, 2)).tolist():
        common = ({home[a], other[a]} & {home[b], other[b]}) - {-1}
        writers = [c for c in common if owned_here(c, home[[a]], other[[a]], home[[b]], other[[b]])[0]]
        assert len(writers) == (1 if common else 0), (a, b, common)


def _split_pair_data() -> tuple[np.ndarray, list[str], int, int]:
    """Two groups (cosine ~0.9 inside) whose centroids are far apart, plus a true pair (a, b)
    in band with each other that sits on the border: a with group A, b with group B."""
    rng = np.random.default_rng(7)
    d = 64
    u, v = _unit(rng.standard_normal(d)), _unit(rng.standard_normal(d))
    ga = _unit(np.sqrt(0.9) * u + np.sqrt(0.1) * _unit(rng.standard_normal((10, d))))
    gb = _unit(np.sqrt(0.9) * v + np.sqrt(0.1) * _unit(rng.standard_normal((10, d))))
    mid = _unit(u + v)
    w = _unit(rng.standard_normal(d))
    w = _unit(w - (w @ u) * u - (w @ v) * v)
    e = _unit(u - v)
    a = _unit(mid + 0.25 * w + 0.25 * e)  # cosine (1 - 1/16 + 1/16) / (1 + 1/8) ~ 0.89 with b
    b = _unit(mid + 0.25 * w - 0.25 * e)
    x = np.vstack([ga, gb, a, b]).astype(np.float32)
    ids = [f"g{k:03d}" for k in range(len(x))]
    return x, ids, len(x) - 2, len(x) - 1


@pytest.mark.parametrize("border", [False, True])
def test_border_recovery_finds_a_pair_split_by_the_partition(tmp_path, border):
    x, ids, a, b = _split_pair_data()
    assert 0.85 <= float(x[a] @ x[b]) <= 0.97
    assert float(x[a] @ x[:10].mean(0)) > float(x[a] @ x[10:20].mean(0))  # a nearer A, b nearer B
    assert float(x[b] @ x[10:20].mean(0)) > float(x[b] @ x[:10].mean(0))
    emb = str(tmp_path / "emb.parquet")
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.array(x.tolist(), pa.list_(pa.float32(), 64))}), emb)
    home = [0] * 10 + [1] * 10 + [0, 1]
    second = [None] * 20 + ([1, 0] if border else [None, None])
    clusters = str(tmp_path / "clusters")
    os.makedirs(clusters)
    pq.write_table(pa.table({"image_id": ids, "cluster_id": pa.array(home, pa.int32()),
                             "distance": pa.array([0.0] * len(ids), pa.float32()),
                             "cluster_id2": pa.array(second, pa.int32())}), os.path.join(clusters, "part.parquet"))
    cfg = PairConfig(name="pair", tau_low=0.8, tau_high=0.97, points_per_unit=15, guard={"min_pair_sim": 0.6},
                     inputs={"embeddings": emb, "clusters": clusters})
    out = run_stages([cfg], str(tmp_path / "run"), executor="local")
    pairs = shards.read_table(str(tmp_path / "run" / "pair" / "pairs")).to_pylist()
    got = [(p["source_id"], p["target_id"]) for p in pairs]
    assert len(got) == len(set(got))  # border points mined twice, every pair written once
    assert ((ids[a], ids[b]) in got) == border
    if border:
        assert out["stages"][0]["counts"]["border_points"] == 4 and out["stages"][0]["units"] == 2
    assert all(0.8 <= p["sim_pass1"] <= 0.97 + 1e-6 for p in pairs)


def test_vectorised_components_equal_the_reference_union_find():
    rng = np.random.default_rng(5)
    for trial in range(22):
        n = int(rng.integers(1, 400)) if trial < 20 else 6000  # numpy propagation, then scipy's path
        m = int(rng.integers(0, 2 * n))
        src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
        uf = UnionFind(n)
        uf.union_edges(src, dst)
        want = [s.tolist() for s in uf.sets(min_size=1 + trial % 2)]
        got = [s.tolist() for s in components(n, src, dst, min_size=1 + trial % 2)]
        assert got == want, trial


def test_group_roots_name_each_group_by_its_smallest_key():
    roots = group_roots([["d", "b"], ["x"], ["b", "c"], ["z", "y"]])
    assert roots == {"b": "b", "c": "b", "d": "b", "x": "x", "y": "y", "z": "y"}
    assert group_roots([]) == {}


def test_pair_runs_as_an_actor_pool_when_its_scorer_loads_a_model():
    tiny = {"model": {"name": "acedata-tiny-dinov2", "random_init": True}}
    ctx = RunContext("r", "r/pair", {})
    assert Pair(PairConfig(name="pair", scorer="object_model", scorer_options=tiny), ctx).uses_model
    assert Pair(PairConfig(name="pair", scorer="face"), ctx).uses_model
    assert not Pair(PairConfig(name="pair"), ctx).uses_model
    assert not Pair(PairConfig(name="pair", scorer="object"), ctx).uses_model


def test_scorer_option_typo_fails_when_the_spec_is_loaded():
    from acedata.config import validate_model
    from acedata.errors import UserError

    with pytest.raises(UserError, match=r"scorer_options\.nfeaturez: unknown key"):
        validate_model(PairConfig, {"name": "pair", "scorer": "object", "scorer_options": {"nfeaturez": 10}}, "pair")
    with pytest.raises(UserError, match="unknown scorer 'nope'"):
        validate_model(PairConfig, {"name": "pair", "scorer": "nope"}, "pair")


def test_pair_resumes_after_a_crash_with_the_same_output(tmp_path, monkeypatch):
    """A unit dies after others committed: the rerun keeps their partitions and outputs and
    writes what a clean run writes."""
    from acedata import runtime
    from acedata.mining.synthetic import generate

    g = generate(n_coarse=4, fine_per_coarse=3, group_size=8, d=64, near_dups=4, bridges=4, seed=2)
    emb = str(tmp_path / "emb.parquet")
    pq.write_table(pa.table({"image_id": g.ids, "embedding": pa.array(g.x.tolist(), pa.list_(pa.float32(), 64))}),
                   emb)
    cfgs = [ClusterConfig(name="cluster", k=4, nredo=3, inputs={"embeddings": emb}),
            PairConfig(name="pair", tau_low=0.7, tau_high=0.97, points_per_unit=30, inputs={"embeddings": emb})]
    clean = str(tmp_path / "clean")
    run_stages(cfgs, clean, executor="local")
    crashed = str(tmp_path / "crashed")
    real, seen = Pair.process, []

    def dies_on_third(self, unit):
        seen.append(unit.id)
        if len(seen) == 3:
            raise RuntimeError("worker died")
        return real(self, unit)

    monkeypatch.setattr(Pair, "process", dies_on_third)
    with pytest.raises(RuntimeError, match="worker died"):
        run_stages(cfgs, crashed, executor="local")
    assert len(runtime.done_units(os.path.join(crashed, "pair"))) == 2
    monkeypatch.setattr(Pair, "process", real)
    run_stages(cfgs, crashed, executor="local")

    def pairs(run: str) -> list:
        return sorted(shards.read_table(os.path.join(run, "pair", "pairs"), ["pair_id", "set_id"]).to_pylist(),
                      key=lambda r: r["pair_id"])

    assert pairs(crashed) == pairs(clean) and pairs(clean)
    assert not os.path.exists(os.path.join(crashed, "pair", "_partitions"))
