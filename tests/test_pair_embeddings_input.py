"""`acedata pair --embeddings` with embeddings made elsewhere: each defect is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acedata import embeddings_input
from acedata.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shard(path, ids, vecs, fixed=True, **extra) -> None:
    vecs = np.asarray(vecs, np.float32)
    flat = pa.array(vecs.reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]) if fixed else pa.array(vecs.tolist(),
                                                                                         pa.list_(pa.float32()))
    pq.write_table(pa.table({"image_id": ids, "embedding": col, **extra}), path)


def _good(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    return subprocess.run([sys.executable, "-m", "acedata", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def _cases(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (embeddings path, words the error must contain)."""
    cases = {}
    for name, at, bad, words in (("nan", (2, 3), np.nan, "NaN or Inf"), ("inf", (4, 0), np.inf, "'i4'")):
        d = tmp_path / name
        d.mkdir()
        v = _good(6)
        v[at] = bad
        _shard(d / "a.parquet", [f"i{k}" for k in range(6)], v)
        cases[name] = (str(d), words)
    d = tmp_path / "dims"
    d.mkdir()
    _shard(d / "a.parquet", ["a", "b"], _good(2, 8))
    _shard(d / "b.parquet", ["c", "d"], _good(2, 16))
    cases["mixed_dims"] = (str(d), "different dimensions")
    d = tmp_path / "ragged"
    d.mkdir()
    pq.write_table(pa.table({"image_id": ["a", "b"], "embedding": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]])}),
                   d / "a.parquet")
    cases["ragged"] = (str(d), "different dimensions")
    d = tmp_path / "nocol"
    d.mkdir()
    pq.write_table(pa.table({"id": ["a"], "embedding": pa.array([[1.0, 2.0]])}), d / "a.parquet")
    cases["no_image_id"] = (str(d), "no image_id column")
    d = tmp_path / "noemb"
    d.mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "vec": pa.array([[1.0, 2.0]])}), d / "a.parquet")
    cases["no_embedding"] = (str(d), "no embedding column")
    bad = tmp_path / "not.parquet"
    bad.write_text("image_id,embedding\na,1\n")
    cases["not_parquet"] = (str(bad), "not a readable Parquet file")
    d = tmp_path / "dups"
    d.mkdir()
    _shard(d / "a.parquet", ["a", "b", "c"], _good(3))
    _shard(d / "b.parquet", ["d", "b"], _good(2, seed=1))
    cases["duplicate_ids"] = (str(d), "'b' appears more than once")
    d = tmp_path / "strings"
    d.mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "embedding": ["1,2"]}), d / "a.parquet")
    cases["wrong_type"] = (str(d), "expected a list of floats")
    return cases


def test_each_defect_is_refused_in_one_line(tmp_path):
    for name, (path, words) in _cases(tmp_path).items():
        with pytest.raises(UserError) as e:
            embeddings_input.check([path])
        assert words in str(e.value), (name, str(e.value))


def test_good_tables_pass(tmp_path):
    _shard(tmp_path / "a.parquet", ["a", "b"], _good(2), fixed=True)
    _shard(tmp_path / "b.parquet", ["c", "d"], _good(2, seed=3), fixed=False)
    assert embeddings_input.check([str(tmp_path)]) == {"rows": 4, "dim": 8}


@pytest.mark.parametrize("case", ["nan", "mixed_dims", "no_image_id", "not_parquet", "duplicate_ids"])
def test_cli_prints_one_line(tmp_path, case):
    path, words = _cases(tmp_path)[case]
    r = _cli("pair", "--embeddings", path, "--out", str(tmp_path / "run"), "--k", "2", "--executor", "local")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("acedata pair: error:") and words in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # a refused table leaves no empty run folder behind
