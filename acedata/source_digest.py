"""Content digests of ingest sources, for resume keys.

`content` (the default) hashes every regular file's bytes under a source root, keyed by its
path relative to the root: the digest changes exactly when a file's content, name or presence
changes, and not when the corpus is copied elsewhere or touched. Cost: one full read of the
corpus on the driver per run (threads overlap the reads), about what ingest itself reads;
at billions of files that is too much, so `metadata` hashes (relative path, size, mtime)
instead, which is what rsync and make trust: cheap, but blind to a same-size rewrite that
keeps its mtime, and it reruns ingest on a mere copy or touch.

Special files (pipes, sockets, devices) and symlinks are never opened: only their kind counts.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

Mode = Literal["content", "metadata"]


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _entries(root: str) -> list[tuple[str, os.stat_result]]:
    if not os.path.isdir(root):
        return [(os.path.basename(root), os.lstat(root))]
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            out.append((os.path.relpath(p, root).replace(os.sep, "/"), os.lstat(p)))
    return sorted(out)


def source_digest(root: str, mode: Mode = "content", threads: int = 8) -> str:
    """A digest of what a source root holds (see the module doc); `root`'s own location is left out."""
    root = os.path.abspath(root)
    if not os.path.lexists(root):
        return "missing"
    entries = _entries(root)
    regular = [(rel, st) for rel, st in entries if stat.S_ISREG(st.st_mode)]
    full = root if not os.path.isdir(root) else None
    if mode == "content":
        paths = [full or os.path.join(root, rel) for rel, _ in regular]
        with ThreadPoolExecutor(threads) as pool:
            shas = dict(zip((rel for rel, _ in regular), pool.map(_safe_sha, paths)))
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


def _safe_sha(path: str) -> str:
    try:
        return _file_sha(path)
    except OSError as e:  # unreadable now: ingest quarantines it; the digest records why
        return f"error:{e.errno}"
