"""A local filesystem that crashes on its k-th write step and watches committed files.

`LocalFS` is the pass-through local disk the test filesystems build on (a hook before each write
step); `FaultFS` numbers those steps.
Test helper: `install(monkeypatch, fs)` makes every `acedata.shards.resolve` of a local
path return this filesystem, so every directory creation, output stream, rename and
delete any stage, the runtime or the pipeline makes through pyarrow is one numbered step.
`crash_at=k` raises `Crash` instead of step k (nothing of it happens, as if the process
died just before it). Independently, every step that would replace or delete a committed
file is recorded in `violations`: a shard or fragment of a unit whose done-marker exists,
or anything in a finished stage.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Callable

import pyarrow.fs as pafs

from acedata import shards


class Crash(Exception):
    pass


class LocalFS(pafs.FileSystemHandler):
    """The local disk through pyarrow's Python filesystem: every call goes to `LocalFileSystem`;
    `_step(op, *paths)` runs before each write step (nothing here; subclasses count or crash)."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def _step(self, op: str, *paths: str) -> None:
        pass

    def get_type_name(self) -> str:
        return "localfs"

    def equals(self, other) -> bool:
        return self is other

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._step("create_dir", path)
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._step("delete_dir", path)
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._step("delete_dir_contents", path)
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the root")

    def delete_file(self, path):
        self._step("delete_file", path)
        self.fs.delete_file(path)

    def move(self, src, dest):
        self._step("move", src, dest)
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self._step("copy_file", src, dest)
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._step("open_output_stream", path)
        return self.fs.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        self._step("open_append_stream", path)
        return self.fs.open_append_stream(path)


class FaultFS(LocalFS):
    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        self.crash_at = crash_at
        self.steps = 0
        self.log: list[tuple[str, str]] = []
        self.violations: list[str] = []

    def get_type_name(self) -> str:
        return "faultfs"

    def delete_root_dir_contents(self):
        raise Crash("refusing to delete the root")

    # --- bookkeeping -------------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _committed(self, path: str) -> bool:
        """Is `path` a committed file that no step may replace or delete?"""
        if not self._exists(path):
            return False
        name, parent = posixpath.basename(path), posixpath.dirname(path)
        if posixpath.basename(parent) == shards.UNITS_DIR:  # TABLE/_units/U.json
            table, unit = posixpath.dirname(parent), name[: -len(".json")]
        elif name.endswith(".parquet") and not name.startswith((".", "_")):  # TABLE/U-00000.parquet
            table, unit = parent, name.rsplit("-", 1)[0]
            if not self._exists(posixpath.join(table, shards.UNITS_DIR, f"{unit}.json")):
                return False
        else:
            return False  # manifests, markers, scratch: derived files, rewritten freely
        stage = posixpath.dirname(table)
        if self._exists(posixpath.join(stage, "_SUCCESS.json")):
            return True
        return self._exists(posixpath.join(stage, "_done", f"{unit}.json"))

    def _step(self, op: str, *paths: str) -> None:
        self.steps += 1
        self.log.append((op, paths[-1]))
        if self.steps == self.crash_at:
            raise Crash(f"crash at step {self.steps}: {op} {paths[-1]}")
        if op in ("move", "delete_file", "open_output_stream", "copy_file"):
            target = paths[-1] if op != "delete_file" else paths[0]
            if self._committed(target):
                self.violations.append(f"{op} {target}")


def install(monkeypatch, handler: pafs.FileSystemHandler) -> None:
    """Every `shards.resolve` of a local path returns `handler`'s filesystem (URIs stay as they were)."""
    real = shards.resolve
    wrapped = pafs.PyFileSystem(handler)

    def resolve(uri: str):
        if "://" in uri:
            return real(uri)
        return wrapped, os.path.abspath(uri)

    monkeypatch.setattr(shards, "resolve", resolve)


def representative_steps(log: list[tuple[str, str]], stages: tuple[str, ...]) -> list[int]:
    """Step numbers (1-based) of `stages` to crash at, for a quick sweep: every step outside
    unit work (stage setup, `plan` scratch, manifests, `finish`, markers) plus every step of
    each stage's first unit. Units run one after another under the local executor, so a
    unit's steps are those since the previous done-marker up to its own.
    """
    picked: list[int] = []
    for stage in stages:
        mine = [(k, op, p) for k, (op, p) in enumerate(log, 1) if f"/{stage}/" in p]
        done = [i for i, (_, op, p) in enumerate(mine) if op == "move" and f"/{stage}/_done/" in p]
        if not done:
            picked += [k for k, _, _ in mine]
            continue
        # setup, plan scratch and the first unit (up to its done-marker); then all after the last unit
        keep = [*range(done[0] + 1), *range(done[-1] + 1, len(mine))]
        picked += [mine[i][0] for i in keep]
    return sorted(picked)


def sweep(steps: list[int], log: list[tuple[str, str]], root: str,
          trial: Callable[[int, str], FaultFS], check: Callable[[str], None]) -> int:
    """Crash a fresh run in `root`/k{k} at each step k, rerun it (`trial`), assert no committed
    file was touched and `check` the rerun's output; returns the number of steps tried."""
    tried = 0
    for k in steps:
        out = os.path.join(root, f"k{k}")
        fs = trial(k, out)
        assert fs.violations == [], (k, log[k - 1], fs.violations)
        check(out)
        shutil.rmtree(out)
        tried += 1
    return tried
