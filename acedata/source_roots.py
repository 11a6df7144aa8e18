"""Where an ingest source lives: one canonical root string, and deterministic listings.

A source root is written one way everywhere (record URIs, unit ids, resume digests, the
run digest's path normalisation): a local path or `file://` URI becomes the absolute local
path; any other URI (`s3://bucket/corpus/`, `memory://x`) loses its trailing '/'. Local
roots keep the local hardening rules (symlinks, fifos, devices); on object stores every
object is a regular file.

Listings are sorted the way a sorted top-down `os.walk` visits files (a directory's own
files by name, then each subdirectory by name), so a corpus copied from a disk to a bucket
splits into the same units in the same order.
"""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from acedata import storage


def source_root(src: str) -> str:
    """The canonical form of a source root (see the module doc)."""
    if src.startswith("file://"):
        return posixpath.normpath(storage.resolve(src)[1])
    if storage.is_uri(src):
        scheme, rest = src.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else src
    return storage.absolute(src)


def is_remote(root: str) -> bool:
    """True for roots read through a non-local filesystem (after `source_root`)."""
    return storage.is_uri(root)


def walk_key(rel: str) -> list[tuple[int, str]]:
    """Sort key of a relative path in sorted top-down walk order (files before subdirectories)."""
    parts = rel.split("/")
    return [(1, p) for p in parts[:-1]] + [(0, parts[-1])]


def list_files(fs: pafs.FileSystem, base: str) -> list[tuple[str, pafs.FileInfo]]:
    """Every regular file under `base` as (path relative to base, info), in walk order.

    One recursive listing (a single paginated LIST on an object store, no per-prefix calls).
    """
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    prefix = base.rstrip("/") + "/"
    out = [(i.path[len(prefix):], i) for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)]
    return sorted(out, key=lambda e: walk_key(e[0]))


def fs_path(uri: str, root: str, base: str) -> str:
    """The path inside the root's filesystem of `uri`, a URI at or under `root` (resolved as `base`)."""
    return base + uri[len(root):]


def read_bounded(fs: pafs.FileSystem, path: str, max_bytes: int) -> bytes | None:
    """The object's bytes, or None when it holds more than `max_bytes` (never more is held)."""
    with fs.open_input_stream(path) as f:
        data = f.read(max_bytes + 1)
    return None if len(data) > max_bytes else data
