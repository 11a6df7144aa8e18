"""An order-independent digest of every table of a run: same digest = same dataset.

Per table, each row is written in a canonical form (columns by name; binary values, image
bytes included, by their sha256; floats by their exact bits) and hashed; the table digest
is the row count plus the sum of the row hashes modulo 2**256, a multiset hash: it ignores
shard layout, row order and file names, and changes with any id, row or value.

Normalised, not excluded: strings holding an absolute path of the run (`source_uri`,
provenance JSON) have the run directory replaced by `<run>` and each ingest source root
(from the run's ingest markers) by `<source:I>`, so a run moved or pointed at a corpus in
another place digests the same. Nothing else is left out: no table of the pipeline holds
a timestamp, a worker id or a scheduling artefact (a digest mismatch between two runs of
one spec is a bug). Files that are not tables (`_SUCCESS.json` with timings, k-means
scratch, `_status.json`) are not digested.

GPU caveat: models run on a GPU (embedding, diffusers synthesizers, vLLM) are not
bit-reproducible across GPU models, driver versions or batch composition; comparing
digests across such runs needs those tables excluded (`--skip`). The same holds for text from
an LLM/MLLM endpoint (`instruct` with `llm:`/`mllm:`): the request carries the spec's seed,
but a server batching requests on a GPU need not answer bit-identically. On CPU every stage
here gave identical digests under the local executor and Ray at other concurrency.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import struct
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from acedata import shards
from acedata.source_roots import source_root

MOD = 1 << 256


def _canon(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return {"sha256": hashlib.sha256(v).hexdigest()}
    if isinstance(v, float):
        return {"f64": struct.pack(">d", v).hex()}
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in sorted(v.items())}
    if isinstance(v, list | tuple):
        return [_canon(x) for x in v]
    return v


class _Paths:
    """Replaces run-specific absolute path prefixes inside strings."""

    def __init__(self, prefixes: list[tuple[str, str]]) -> None:
        self.prefixes = sorted(prefixes, key=lambda p: -len(p[0]))  # the longest (most specific) first

    def __call__(self, v: Any) -> Any:
        if isinstance(v, str):
            for old, new in self.prefixes:
                if old in v:
                    v = v.replace(old, new)
            return v
        if isinstance(v, dict):
            return {k: self(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self(x) for x in v]
        return v


def run_prefixes(run_dir: str) -> list[tuple[str, str]]:
    """(absolute prefix, placeholder) pairs: the run directory and every ingest source root."""
    fs, d = shards.resolve(run_dir)
    out = [(d.rstrip("/"), "<run>")]
    for info in fs.get_file_info(pafs.FileSelector(d, allow_not_found=True)):
        marker = posixpath.join(info.path, "_SUCCESS.json")
        if info.type != pafs.FileType.Directory or not shards.exists(fs, marker):
            continue
        cfg = shards.read_json(fs, marker).get("config") or {}
        for i, src in enumerate(cfg.get("sources") or []):
            out.append((source_root(src).rstrip("/"), f"<source:{i}>"))
    return out


def table_digest(path: str, normalise: _Paths | None = None) -> dict[str, Any]:
    """{"rows", "digest", "columns"}: the multiset hash of the table's canonical rows."""
    normalise = normalise or _Paths([])
    total, rows = 0, 0
    names: list[str] = []
    for batch in shards.iter_batches(path, batch_size=256):
        t = pa.Table.from_batches([batch])
        names = sorted(t.column_names)
        for row in t.select(names).to_pylist():
            body = json.dumps(_canon(normalise(row)), sort_keys=True, separators=(",", ":")).encode()
            total = (total + int.from_bytes(hashlib.sha256(body).digest(), "big")) % MOD
            rows += 1
    return {"rows": rows, "digest": f"{total:064x}", "columns": names}


def find_tables(run_dir: str) -> list[str]:
    """Table directories (holding `_manifest.json`) under a run, relative, sorted."""
    fs, d = shards.resolve(run_dir)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(d, recursive=True)):
        if posixpath.basename(info.path) == shards.MANIFEST:
            rel = posixpath.relpath(posixpath.dirname(info.path), d)
            if not any(part.startswith((".", "_")) for part in rel.split("/")):
                found.append(rel)
    return sorted(found)


def run_digest(run_dir: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """{"tables": {rel_path: table digest}, "digest": one hash over them all}."""
    normalise = _Paths(run_prefixes(run_dir))
    tables = {}
    for rel in find_tables(run_dir):
        if rel in skip:
            continue
        tables[rel] = table_digest(posixpath.join(run_dir, rel), normalise)
    overall = hashlib.sha256(json.dumps({k: v["digest"] for k, v in tables.items()}, sort_keys=True).encode())
    return {"digest": overall.hexdigest(), "tables": tables}
