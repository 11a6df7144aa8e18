"""Run-wide settings pinned when a run directory is created: `RUN/_settings.json`.

Today one: the image id scheme (`acedata.ids`). It is written before any stage runs and never
changed after, so a rerun or resume of a run computes ids as its first run did and committed
shards never hold ids of two schemes. A run directory from before this record existed (it holds
a run's files but no `_settings.json`) made its ids with sha256, and is pinned to it on its next run.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from acedata import ids, shards
from acedata.errors import UserError

SETTINGS = "_settings.json"
# Files every run writes at its top level (`_status.json` when it starts, since the first runner):
# a directory holding one already held a run. Stage folders alone do not count: a new run may be
# given (symlinked) stage folders of other runs.
_RUN_FILES = ("_status.json", "_run.json")


def _is_earlier_run(fs: pafs.FileSystem, out_path: str) -> bool:
    return any(shards.exists(fs, posixpath.join(out_path, f)) for f in _RUN_FILES)


def read(fs: pafs.FileSystem, out_path: str) -> dict[str, Any] | None:
    p = posixpath.join(out_path, SETTINGS)
    return shards.read_json(fs, p) if shards.exists(fs, p) else None


def pin(fs: pafs.FileSystem, out_path: str, id_scheme: str | None, inherited: set[str] | None = None,
        inputs: Iterable[str] = ()) -> dict[str, Any]:
    """The run's settings: the recorded ones, else (a new run) `id_scheme`, else the scheme of the
    runs its `inputs:` tables come from (`inherited`, see `table_scheme`), else the default; recorded now.

    Asking for another scheme than the run's is a UserError: its committed ids would mix. Every table
    of `inputs` is checked (`check_input`) before anything is recorded, so a refused run leaves no
    scheme behind."""
    if id_scheme is not None:
        ids.check(id_scheme)
    recorded = read(fs, out_path)
    if recorded is not None:
        have, why = ids.check(recorded.get("id_scheme", ids.LEGACY)), f"recorded in {SETTINGS}"
    elif _is_earlier_run(fs, out_path):
        have, why = ids.LEGACY, "a run from before id schemes were recorded"
    elif id_scheme is not None:
        have, why = id_scheme, ""
    elif inherited:
        if len(inherited) > 1:
            raise UserError(f"the inputs: tables come from runs of different image id schemes ({sorted(inherited)}); "
                            "one run never mixes schemes")
        have, why = next(iter(inherited)), ""
    else:
        have, why = ids.DEFAULT, ""
    if id_scheme is not None and id_scheme != have:
        raise UserError(f"run directory {out_path} makes image ids with {have} ({why}); id_scheme "
                        f"{id_scheme} would mix two schemes in one run: drop id_scheme (spec or --id-scheme), "
                        "or write to a new --out")
    for table in inputs:
        check_input(table, have)
    if recorded is None:  # an earlier run's inferred sha256 is recorded too, once
        recorded = {"id_scheme": have}
        shards.write_bytes_atomic(fs, posixpath.join(out_path, SETTINGS), json.dumps(recorded, indent=1).encode())
    return recorded


def table_scheme(table: str) -> str | None:
    """The id scheme of the run a table belongs to (its grandparent, RUN/<stage>/<table>), or None
    for a table outside any run (the grandparent's top-level files decide).

    A local path is resolved through symlinks first: a run's stage folder may be a link to another
    run's, whose scheme its tables have. Object-storage URIs are taken as they are."""
    fs, path = shards.resolve(table)
    if isinstance(fs, pafs.LocalFileSystem):
        path = os.path.realpath(path)
    run_dir = posixpath.dirname(posixpath.dirname(path.rstrip("/")))
    if not run_dir or not shards.exists(fs, run_dir):
        return None
    recorded = read(fs, run_dir)
    if recorded is not None:
        return recorded.get("id_scheme", ids.LEGACY)
    return ids.LEGACY if _is_earlier_run(fs, run_dir) else None


def check_input(table: str, id_scheme: str) -> None:
    """A table from another run (a stage's `inputs:`) must hold ids of this run's scheme."""
    theirs = table_scheme(table)
    if theirs is not None and theirs != id_scheme:
        raise UserError(f"input table {table} comes from a run whose image ids are {theirs}, but this run "
                        f"makes {id_scheme} ids: one run never mixes schemes; use a new --out (it takes the "
                        "inputs' scheme), or re-ingest")
