"""Stages touch run paths only through `acedata.storage` / `acedata.shards` (a lint rule).

Object storage is the normal case, so `os`, `open`, `shutil`, `pathlib`, `np.save`/`np.load`
and Parquet calls given a bare path (no `filesystem=`) are banned in stage code: each would
silently act on a local path when the run lives at s3://, gs:// or memory://.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGE_FILES = sorted((ROOT / "acedata" / "stages").glob("*.py"))
BANNED_MODULES = {"os", "shutil", "pathlib", "tempfile", "glob"}
BANNED_CALLS = {("np", "save"), ("np", "savez"), ("np", "savez_compressed"), ("np", "load"), ("np", "fromfile"),
                ("numpy", "save"), ("numpy", "load")}
NEEDS_FILESYSTEM = {("pq", "write_table"), ("pq", "read_table"), ("pq", "ParquetFile"), ("pq", "ParquetWriter")}


def banned_uses(source: str) -> list[str]:
    """`line: what` for every banned use in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "open":
                found.append(f"{node.lineno}: open()")
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                key = (f.value.id, f.attr)
                if key in BANNED_CALLS:
                    found.append(f"{node.lineno}: {key[0]}.{key[1]}()")
                has_fs = any(k.arg == "filesystem" for k in node.keywords)
                # a path string needs filesystem=; a file object from fs.open_* is fine
                first = node.args[0] if node.args else None
                if key in NEEDS_FILESYSTEM and not has_fs and not isinstance(first, ast.Call):
                    found.append(f"{node.lineno}: {key[0]}.{key[1]}() without filesystem=")
    return found


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.name)
def test_stage_uses_the_filesystem_layer(path):
    assert banned_uses(path.read_text()) == [], f"{path.name}: use acedata.storage instead"


def test_the_rule_catches_what_it_bans():
    src = (
        "import os, shutil\nimport numpy as np\nimport pyarrow.parquet as pq\n"
        "open('x')\nnp.save('c.npy', a)\npq.write_table(t, 'p.parquet')\n"
        "pq.write_table(t, p, filesystem=fs)\npq.ParquetFile(fs.open_input_file(p))\n"
    )
    assert banned_uses(src) == ["1: import os", "1: import shutil", "4: open()", "5: np.save()",
                                "6: pq.write_table() without filesystem="]
