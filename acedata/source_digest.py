"""Content digests of ingest sources, for resume keys.

`content` (the default) hashes every regular file's bytes under a source root, keyed by its
path relative to the root: the digest changes exactly when a file's content, name or presence
changes, and not when the corpus is copied elsewhere or touched — a copy in a bucket
(`s3://b/corpus`) digests like the same files on a disk. Cost: one full read of the corpus on
the driver per run (threads overlap the reads), about what ingest itself reads; at billions
of files that is too much, so `metadata` hashes (relative path, size, mtime) instead, which is
what rsync and make trust: cheap, but blind to a same-size rewrite that keeps its mtime, and
it reruns ingest on a mere copy or touch. On an object store mtime is the object's
last-modified time, which S3 keeps to the second: a same-size rewrite within the second of
the previous write goes unseen (pyarrow's listing carries no ETag); a filesystem that
reports no time hashes size alone.

Each file's bytes are hashed in the run's image id scheme (`acedata.ids`): xxh3-128 for new runs
(a tenth of sha256's CPU), sha256 for runs made before, whose resume keys so stay as they were.

Local special files (pipes, sockets, devices) and symlinks are never opened: only their kind
counts. On object stores every object is a regular file, read through the root's filesystem.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import pyarrow.fs as pafs

from acedata import ids, storage
from acedata.source_roots import is_remote, list_files, source_root

Mode = Literal["content", "metadata"]


def _sha(open_stream: Callable, scheme: str) -> str:
    h = ids.hasher(scheme)
    with open_stream() as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _entries(root: str) -> list[tuple[str, os.stat_result]]:
    if not os.path.isdir(root):
        return [(os.path.basename(root), os.lstat(root))]
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        # the folder's path relative to the root once, not a relpath per file (per-file cost)
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append((prefix + name, os.lstat(os.path.join(dirpath, name))))
    return sorted(out)


def source_digest(root: str, mode: Mode = "content", threads: int = 8, scheme: str = ids.SHA256) -> str:
    """A digest of what a source root holds (see the module doc); `root`'s own location is left out.
    `scheme` hashes each file's bytes (`content` mode)."""
    root = source_root(root)
    ids.check(scheme)
    if is_remote(root):
        return _remote_digest(root, mode, threads, scheme)
    if not os.path.lexists(root):
        return "missing"
    entries = _entries(root)
    regular = [(rel, st) for rel, st in entries if stat.S_ISREG(st.st_mode)]
    full = root if not os.path.isdir(root) else None
    if mode == "content":
        paths = [full or os.path.join(root, rel) for rel, _ in regular]
        # files in batches per thread task: a task per small file cost more than hashing it
        batch = max(1, min(64, len(paths) // (threads * 4)))
        with ThreadPoolExecutor(threads) as pool:
            done = pool.map(lambda part: _local_shas(part, scheme),
                            [paths[i : i + batch] for i in range(0, len(paths), batch)])
            shas = dict(zip((rel for rel, _ in regular), (sha for part in done for sha in part)))
    h = hashlib.sha256()
    for rel, st in entries:
        if not stat.S_ISREG(st.st_mode):
            kind = "link" if stat.S_ISLNK(st.st_mode) else "special"
            h.update(f"{rel}\0{kind}\n".encode())
        elif mode == "content":
            h.update(f"{rel}\0{st.st_size}\0{shas[rel]}\n".encode())
        else:
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _remote_digest(root: str, mode: Mode, threads: int, scheme: str) -> str:
    """The same digest over an object store: one listing, bytes read through the root's filesystem."""
    fs, base = storage.resolve(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    entries = [(posixpath.basename(base), info)] if info.type == pafs.FileType.File else sorted(
        list_files(fs, base), key=lambda e: e[0])
    h = hashlib.sha256()
    if mode == "content":
        with ThreadPoolExecutor(threads) as pool:
            shas = list(pool.map(lambda e: _safe(lambda: _sha(lambda: fs.open_input_stream(e[1].path), scheme)), entries))
        for (rel, i), sha in zip(entries, shas):
            h.update(f"{rel}\0{i.size}\0{sha}\n".encode())
    else:
        for rel, i in entries:
            h.update(f"{rel}\0{i.size}\0{i.mtime_ns if i.mtime_ns is not None else ''}\n".encode())
    return h.hexdigest()


def _local_sha(path: str, scheme: str, buf: bytearray) -> str:
    """The hash of a local file's bytes, read into `buf` (reused across a batch's files: no buffer
    allocated per file, and an unbuffered descriptor costs an open, two reads and a close; a buffered
    `open` added a stat, a terminal check and its objects, per file of a corpus read twice per run)."""
    h = ids.hasher(scheme)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.hexdigest()


def _local_shas(paths: list[str], scheme: str) -> list[str]:
    buf = bytearray(1 << 20)
    return [_safe(lambda p=p: _local_sha(p, scheme, buf)) for p in paths]


def _safe(f: Callable[[], str]) -> str:
    try:
        return f()
    except OSError as e:  # unreadable now: ingest quarantines it; the digest records why
        return f"error:{getattr(e, 'errno', None)}"
