"""The distributed pair planner: cluster units write the pair stage's partitions (`members`),
pair's driver plans from k sizes alone, and the output equals a single-process reference."""

from __future__ import annotations

import itertools
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acedata import shards
from acedata.mining import members
from acedata.mining.cleaning import reject_reasons
from acedata.mining.pairs import in_band_pairs, set_key, upper_pairs
from acedata.mining.partition import cluster_index, owned_here
from acedata.mining.scorers import make_scorer
from acedata.mining.synthetic import generate
from acedata.mining.twopass import mine_cluster
from acedata.mining.vectors import normalize, to_matrix
from acedata.pipeline import run_stages
from acedata.stage import RunContext
from acedata.stages.cluster import ClusterConfig
from acedata.stages.pair import Pair, PairConfig, mining_params

BAND = (0.7, 0.97)


@pytest.fixture
def emb(tmp_path) -> str:
    """Generated hierarchical vectors (bridges, near-duplicates, singletons) in 3 shards."""
    g = generate(n_coarse=5, fine_per_coarse=4, group_size=6, d=48, near_dups=10, bridges=10, singletons=20,
                 loose_fraction=0.2, seed=11)
    path = tmp_path / "emb"
    path.mkdir()
    for s, rows in enumerate(np.array_split(np.arange(len(g.ids)), 3)):
        pq.write_table(pa.table({"image_id": [g.ids[i] for i in rows],
                                 "embedding": pa.array(g.x[rows].astype(np.float16).tolist(), pa.list_(pa.float16(), 48)),
                                 "model": ["gen"] * len(rows)}), str(path / f"part-{s}.parquet"))
    return str(path)


def _cfgs(emb: str, points_per_unit: int, rows_per_unit: int = 60) -> list:
    return [ClusterConfig(name="cluster", k=6, nredo=2, border_margin=0.05, rows_per_unit=rows_per_unit,
                          inputs={"embeddings": emb}),
            PairConfig(name="pair", tau_low=BAND[0], tau_high=BAND[1], points_per_unit=points_per_unit,
                       guard={"min_pair_sim": 0.6, "max_set_size": 8}, max_pairs_per_set=12)]


def _pairs(run: str) -> set[tuple]:
    t = shards.read_table(os.path.join(run, "pair", "pairs"), ["source_id", "target_id", "set_id", "cluster_id"])
    return set(zip(*(t.column(c).to_pylist() for c in t.column_names)))


def reference_pairs(clusters: str, emb: str, cfg: PairConfig) -> set[tuple]:
    """Single process, everything in memory: each cluster's rows (home or border guest) gathered
    from the whole cluster index, mined, enumerated and filtered."""
    index = cluster_index([clusters])
    e = shards.read_table(emb, ["image_id", "embedding"])
    vec = dict(zip(e.column("image_id").to_pylist(), normalize(to_matrix(e.column("embedding")))))
    ids = index.column("image_id").to_pylist()
    home, other = index.column("cluster_id").to_numpy(), index.column("cluster_id2").to_numpy()
    scorer = make_scorer(cfg.scorer, cfg.scorer_options)
    p = mining_params(cfg, scorer)
    out = set()
    for c in sorted(set(home.tolist()) | set(other[other >= 0].tolist())):
        rows = sorted(np.flatnonzero((home == c) | (other == c)).tolist(), key=lambda r: ids[r])
        names = [ids[r] for r in rows]
        x, hs, os_ = np.stack([vec[n] for n in names]), home[rows], other[rows]
        for fs in mine_cluster(x, scorer, p):
            m = fs.members
            ui, uj = upper_pairs(len(m))
            owned = owned_here(c, hs[m[ui]], os_[m[ui]], hs[m[uj]], os_[m[uj]])
            key = set_key([names[k] for k in m])
            i, j, sims, _, _ = in_band_pairs(x[m], fs.pass2, (p.tau_low, p.tau_high), (p.pass2_low, p.pass2_high),
                                             cfg.max_pairs_per_set, key, owned)
            nan = np.full(len(i), np.nan)
            a, b = [names[k] for k in m[i]], [names[k] for k in m[j]]
            why = reject_reasons(cfg.filters, sims, nan, nan, nan, nan, np.array(a) == np.array(b))
            out |= {(min(s, t), max(s, t), int(key[:15], 16), c) for s, t, w in zip(a, b, why) if w == ""}
    return out


def test_pair_output_equals_a_single_process_reference(tmp_path, emb):
    """Many cluster units x many pair units == one in-memory pass over the whole index, and
    the driver-built partitions of a foreign clusters table give the same pairs too."""
    many = str(tmp_path / "many")
    summary = run_stages(_cfgs(emb, points_per_unit=40), many, executor="local")
    cl, pr = summary["stages"]
    assert cl["units"] >= 3 and pr["units"] >= 3 and cl["counts"]["border_points"] > 0
    got = _pairs(many)
    ref = reference_pairs(os.path.join(many, "cluster", "clusters"), emb, _cfgs(emb, 40)[1])
    assert got == ref and len(got) > 50
    # other unit sizes on both stages: the same pairs
    one = str(tmp_path / "one")
    run_stages(_cfgs(emb, points_per_unit=10_000, rows_per_unit=10_000), one, executor="local")
    assert _pairs(one) == got
    # a clusters table made elsewhere (no members table): the driver partitions it, same pairs
    foreign = PairConfig(**{**_cfgs(emb, 40)[1].model_dump(), "inputs": {
        "embeddings": emb, "clusters": os.path.join(many, "cluster", "clusters")}})
    run_stages([foreign], str(tmp_path / "foreign"), executor="local")
    assert _pairs(str(tmp_path / "foreign")) == got
    assert not os.path.exists(os.path.join(tmp_path, "foreign", "pair", "_partitions"))  # scratch removed


def test_pair_driver_reads_no_rows(tmp_path, emb, monkeypatch):
    """plan() works from the k sizes alone: with every Parquet read failing on the driver it
    still plans whole clusters covering every membership; and the stage runs with the
    embeddings table gone (the vectors travel in the members table)."""
    run = str(tmp_path / "run")
    cfgs = _cfgs(emb, points_per_unit=40)
    run_stages(cfgs[:1], run, executor="local")
    table = os.path.join(run, "cluster", "members")
    meta = members.read_meta(table)
    assert meta["k"] == 6 and meta["embedding_models"] == ["gen"]
    assert sum(meta["sizes"]) == shards.count_rows(table)
    ctx = RunContext(run, os.path.join(run, "pair"), {t: [os.path.join(run, "cluster", t)] for t in
                                                      ("clusters", "members")} | {"embeddings": [emb]})

    def no_rows(*a, **k):
        raise AssertionError("the pair driver read a Parquet file")

    with monkeypatch.context() as m:
        m.setattr(shards, "open_parquet", no_rows)
        m.setattr(pq, "ParquetFile", no_rows)
        m.setattr(pq, "read_table", no_rows)
        units = Pair(cfgs[1], ctx).plan()
    covered = [c for u in units for c in range(u.payload["clusters"][0], u.payload["clusters"][1] + 1)]
    assert len(units) >= 3 and sorted(covered) == list(range(6))
    shutil.rmtree(emb)
    alone = PairConfig(**{**cfgs[1].model_dump(), "inputs": {
        t: os.path.join(run, "cluster", t) for t in ("clusters", "members")} | {"embeddings": emb}})
    out = run_stages([alone], str(tmp_path / "alone"), executor="local")["stages"][0]
    assert out["counts"]["pairs"] > 0 and not out.get("skipped")


def test_members_row_groups_hold_whole_clusters(tmp_path, emb, monkeypatch):
    """Row groups end only at cluster boundaries, so a unit reads just its clusters' groups."""
    monkeypatch.setattr(members, "GROUP_ROWS", 10)
    run = str(tmp_path / "run")
    run_stages(_cfgs(emb, points_per_unit=40)[:1], run, executor="local")
    table = os.path.join(run, "cluster", "members")
    for s in shards.list_shards(table):
        md = shards.open_parquet(s).metadata
        spans = [(md.row_group(g).column(0).statistics.min, md.row_group(g).column(0).statistics.max)
                 for g in range(md.num_row_groups)]
        assert md.num_row_groups >= 2
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), spans  # disjoint, ascending
    t, x = members.read_clusters(table, 2, 3)
    assert set(t.column("cluster_id").to_pylist()) == {2, 3} and len(x) == t.num_rows
    assert t.num_rows == sum(members.read_meta(table)["sizes"][2:4])


def test_enumerate_sets_equals_in_band_pairs_per_set():
    """The batched enumeration gives exactly the per-set pairs (bands, border ownership, cap)."""
    from acedata.mining.pairs import enumerate_sets

    rng = np.random.default_rng(4)
    x = normalize(rng.standard_normal((300, 16)) + 2.0 * rng.standard_normal(16))
    home, other = rng.integers(0, 3, 300), np.where(rng.random(300) < 0.3, rng.integers(0, 3, 300), -1)
    sets, want = [], []
    for k in range(40):
        m = np.sort(rng.choice(300, size=int(rng.integers(2, 20)), replace=False))
        p2 = rng.random((len(m), len(m))).astype(np.float32)
        p2 = (p2 + p2.T) / 2
        here, key = int(rng.integers(0, 3)), set_key([str(v) for v in m])
        sets.append((m, p2, here, key))
        ui, uj = upper_pairs(len(m))
        owned = owned_here(here, home[m[ui]], other[m[ui]], home[m[uj]], other[m[uj]])
        i, j, s, _, _ = in_band_pairs(x[m], p2, (0.2, 0.9), (0.1, 0.95), 7, key, owned)
        want += [(k, int(a), int(b), float(v)) for a, b, v in zip(m[i], m[j], s)]
    got, _, _ = enumerate_sets(x, sets, home, other, (0.2, 0.9), (0.1, 0.95), 7)
    assert [(int(k), int(a), int(b), float(v)) for k, a, b, v in zip(got["set"], got["a"], got["b"], got["sim"])] == want
    assert len(want) > 100


def test_siglip_scores_reused_as_sims_bit_for_bit(monkeypatch):
    """Pair enumeration takes siglip's pass-2 scores as the pairs' cosines instead of computing
    them again: the result must be the recomputed one exactly, whatever the products' step size."""
    from acedata.mining import pairs
    from acedata.mining.pairs import enumerate_sets, pair_dots

    g = generate(n_coarse=4, fine_per_coarse=5, group_size=7, d=64, near_dups=8, bridges=8, singletons=10,
                 loose_fraction=0.3, seed=5)
    x = normalize(g.x)
    scorer = make_scorer("siglip")
    params = mining_params(PairConfig(name="pair", tau_low=0.5, tau_high=0.97, device="cpu"), scorer)
    final = mine_cluster(x, scorer, params)
    assert len(final) > 5
    sets = [(fs.members, fs.pass2, 0, set_key([str(v) for v in fs.members])) for fs in final]
    home, other = np.zeros(len(x), np.int64), np.full(len(x), -1, np.int64)
    monkeypatch.setattr(pairs, "PAIR_CHUNK_BYTES", 1000)  # steps of a few pairs: the same bits as one big step
    a = np.concatenate([fs.members[upper_pairs(len(fs.members))[0]] for fs in final])
    b = np.concatenate([fs.members[upper_pairs(len(fs.members))[1]] for fs in final])
    small = pair_dots(x, a, b)
    monkeypatch.setattr(pairs, "PAIR_CHUNK_BYTES", 1 << 30)
    assert small.tobytes() == pair_dots(x, a, b).tobytes()
    got, oob, vetoed = enumerate_sets(x, sets, home, other, (0.5, 0.97), (0.5, 0.97), 5, scores_are_sims=True)
    want, oob2, vetoed2 = enumerate_sets(x, sets, home, other, (0.5, 0.97), (0.5, 0.97), 5)
    assert (oob, vetoed) == (oob2, vetoed2) and len(want["a"]) > 20
    for k in want:
        assert got[k].tobytes() == want[k].tobytes(), k


def test_pair_ids_equal_pair_id_per_pair():
    """The batched pair ids are `pair_id` of each pair, non-ASCII ids included."""
    from acedata.mining.cleaning import pair_id, pair_ids

    src = ["a", "img_0001", "é/ü:1", "x" * 300, "b"]
    tgt = ["b", "img_0002", "名前", "y", "a"]
    got = pair_ids("natural_edit", pa.array(src), pa.array(tgt)).to_pylist()
    assert got == [pair_id("natural_edit", s, t) for s, t in zip(src, tgt)]
    assert len(set(got)) == len(got) and pair_ids("t", pa.array([], pa.string()), pa.array([], pa.string())).to_pylist() == []


@pytest.mark.parametrize("d,dtype", [(768, np.float32), (33, np.float32), (16, np.float64)])
def test_set_pair_dots_equal_pair_dots_bit_for_bit(monkeypatch, d, dtype):
    """The stacked, diagonal-by-diagonal products are the per-pair ones, bit for bit, for
    every set size (1 and 2 included) and any step size."""
    from acedata.mining import pairs
    from acedata.mining.pairs import pair_dots, set_pair_dots

    rng = np.random.default_rng(d)
    x = rng.standard_normal((2000, d)).astype(dtype)
    sizes = rng.choice([1, 2, 3, 5, 8, 8, 13, 40], 120)
    perm = rng.permutation(2000)
    sets = [np.sort(p) for p in np.split(perm[: sizes.sum()], np.cumsum(sizes)[:-1])]
    a = np.concatenate([m[upper_pairs(len(m))[0]] for m in sets])
    b = np.concatenate([m[upper_pairs(len(m))[1]] for m in sets])
    want = pair_dots(x, a, b).tobytes()
    assert set_pair_dots(x, sets).tobytes() == want
    monkeypatch.setattr(pairs, "PAIR_CHUNK_BYTES", 1)
    assert set_pair_dots(x, sets).tobytes() == want
    assert set_pair_dots(x, []).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_normalize_into_equals_normalize_bit_for_bit(monkeypatch, dtype):
    """Scattered places (a step placed through scratch) and consecutive ones (a step converted
    straight into the output) give the bits of normalizing a gathered copy."""
    from acedata.mining import vectors
    from acedata.mining.vectors import normalize_into

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((700, 48)) * 3).astype(dtype)
    x[3] = 0  # a zero row stays zero
    rows = np.sort(rng.choice(700, 400, replace=False))
    monkeypatch.setattr(vectors, "NORM_ROWS", 64)
    want = normalize(x[rows])
    for dest in (np.arange(400) + 7, np.sort(rng.choice(1000, 400, replace=False))):
        out = np.full((1000, 48), np.nan, np.float32)
        normalize_into(out, dest, x, rows)
        assert out[dest].tobytes() == want.tobytes()
        assert np.isnan(np.delete(out, dest, axis=0)).all()
