"""Shared fixtures: an offline environment, the demo corpus, one embedded Ray per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The recorded digests (tests/small_digest.json, demo_digest.json) hold embeddings of a random-init
# SigLIP: torch's, oneDNN's and MKL's AVX-512 kernels give other last bits than their AVX2 ones, so
# on an AVX-512 machine the embeddings, and the clusters and pairs mined from them, missed the
# record. Every x86-64 machine these tests run on has AVX2: pin all three kernel sets to it, before
# torch is imported (here; Ray workers and subprocesses inherit the environment).
if os.uname().machine in ("x86_64", "AMD64"):
    for _var, _isa in (("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                       ("MKL_ENABLE_INSTRUCTIONS", "AVX2")):
        os.environ.setdefault(_var, _isa)
# A fresh `datasets` cache per test session: `load_dataset(folder)` gave two different `assemble`
# folders (other paths, other rows) the same cache entry, so an earlier run's rows came back.
_HF_DATASETS_CACHE = tempfile.mkdtemp(prefix="acedata-tests-hf-datasets-")
os.environ["HF_DATASETS_CACHE"] = _HF_DATASETS_CACHE
atexit.register(shutil.rmtree, _HF_DATASETS_CACHE, True)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> str:
    """The demo corpus (12 groups x 4 variants + odd inputs), built once per session."""
    from acedata.demo_data import build

    d = str(tmp_path_factory.mktemp("corpus"))
    build(d, variants=4, seed=0)
    return d


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The chat-completions STAND-IN server (tests/chat_standin.py), fresh per test module (its fault
    counters start at zero)."""
    from llm_server import start_standin

    srv = start_standin(str(tmp_path_factory.mktemp("standin") / "log.txt"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from acedata.runtime import init_ray

    init_ray("local", num_cpus=2)  # never a `ray start` cluster that happens to run on this machine
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto, separate process on 127.0.0.1) with one bucket.

    Its endpoint and credentials are put in this process's environment the standard AWS
    way, so subprocesses and the Ray workers they start reach it too.
    """
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from s3_server import S3Server

    server = S3Server().start(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
