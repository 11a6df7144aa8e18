"""Folder sources on any non-local filesystem (`s3://`, `gs://`, `memory://` ...).

The same rules as a local folder, through the pyarrow filesystem of the root: one sorted
listing, hidden names skipped, `<stem>.json` / `.txt` / `.caption` beside an image read as its
metadata (found in the listing, so no existence probe per image), `.tar` and `.parquet`
files as their own units. Every object is a regular file, so the symlink / fifo / device
rules of local folders do not arise. An object larger than `max_file_bytes` (by the size the
listing reported) is never read; a read is capped at that size in case it grew since.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from acedata import storage
from acedata.errors import UserError
from acedata.source_roots import fs_path, list_files, read_bounded
from acedata.sources import IMAGE_EXTS, TEXT_META, Record, _file_units, _unit_id

SIDECARS = (".json", *TEXT_META)


def list_remote_units(root: str, files_per_unit: int) -> list[tuple[str, dict[str, Any]]]:
    fs, base = storage.resolve(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"source {root!r} does not exist; check the URI in the spec or command")
    if info.type == pafs.FileType.File:
        return _file_units(root, root)
    listing = [(rel, i.size) for rel, i in list_files(fs, base)]
    names = {rel for rel, _ in listing}
    files: list[tuple[str, int]] = []
    tars = set()
    for rel, size in listing:
        name = posixpath.basename(rel)
        if name.startswith("."):
            continue
        stem, ext = posixpath.splitext(rel)
        ext = ext.lower()
        if ext == ".tar":
            tars.add(stem)
        if ext in SIDECARS and any(stem + e in names or stem + e.upper() in names for e in IMAGE_EXTS):
            continue  # sidecar metadata, read with its image
        files.append((rel, size))
    units: list[tuple[str, dict[str, Any]]] = []
    loose: list[tuple[str, int]] = []
    for rel, size in files:
        stem, ext = posixpath.splitext(rel)
        uri = storage.join(root, rel)
        if ext.lower() == ".tar":
            units.extend(_file_units(uri, root))
        elif ext.lower() == ".parquet":
            if stem not in tars:  # else img2dataset's per-shard metadata table; the tar holds the images
                units.extend(_file_units(uri, root))
        else:
            loose.append((rel, size))
    for i in range(0, len(loose), files_per_unit):
        chunk = loose[i : i + files_per_unit]
        uris = [storage.join(root, rel) for rel, _ in chunk]
        sidecars = [[storage.join(root, posixpath.splitext(rel)[0] + e) for e in SIDECARS
                     if posixpath.splitext(rel)[0] + e in names and posixpath.splitext(rel)[0] + e != rel]
                    for rel, _ in chunk]
        # `sizes` and `sidecars` are hints for the reader; unit ids hash only root, kind and files.
        payload = {"kind": "files", "root": root, "files": uris, "sizes": [s for _, s in chunk], "sidecars": sidecars}
        units.append((_unit_id("files", uris), payload))
    return units


def read_remote_files(payload: dict[str, Any], max_file_bytes: int) -> Iterator[Record]:
    root = payload["root"]
    fs, base = storage.resolve(root)  # one filesystem per unit, not per object
    files = payload["files"]  # a single object named as the root comes without listing hints
    sizes, sidecars_of = payload.get("sizes") or [None] * len(files), payload.get("sidecars") or [[]] * len(files)
    for uri, size, sidecars in zip(files, sizes, sidecars_of):
        if size is not None and size > max_file_bytes:
            yield Record(uri, error=("file_too_large", f"{size} bytes > {max_file_bytes}"))
            continue
        try:
            data = read_bounded(fs, fs_path(uri, root, base), max_file_bytes)
        except OSError as e:
            yield Record(uri, error=("read_error", str(e)[:200]))
            continue
        if data is None:
            yield Record(uri, error=("file_too_large", f"more than {max_file_bytes} bytes"))
            continue
        yield Record(uri, data, _sidecar_meta(fs, [fs_path(s, root, base) for s in sidecars], max_file_bytes))


def _sidecar_meta(fs: pafs.FileSystem, paths: list[str], max_bytes: int) -> dict[str, Any]:
    """Same reading as a local folder's sidecars: the JSON object first, then a caption text."""
    meta: dict[str, Any] = {}
    for p in paths:
        try:
            data = read_bounded(fs, p, max_bytes)
        except OSError:
            continue
        if data is None:
            continue
        if p.endswith(".json"):
            try:
                loaded = json.loads(data)
            except ValueError:
                continue
            if isinstance(loaded, dict):
                meta.update(loaded)
        else:
            meta.setdefault("caption", data.decode("utf-8", errors="replace").strip())
    return meta


def remote_ref(path: str, ref: str, max_file_bytes: int) -> tuple[bytes | None, tuple[str, str] | None]:
    """Bytes of an image a remote Parquet row names, relative to the Parquet file's folder."""
    fs, p = storage.resolve(path)
    base, base_uri = posixpath.dirname(p), path.rsplit("/", 1)[0]
    escapes = ("outside_root", f"path {ref!r} escapes {base_uri}")  # worded as for a local Parquet file
    if storage.is_uri(ref) or ref.startswith("/"):
        return None, escapes
    target = posixpath.normpath(posixpath.join(base, ref))
    if not target.startswith(base + "/"):
        return None, escapes
    try:
        info = fs.get_file_info(target)
        if info.type != pafs.FileType.File:
            return None, ("read_error", f"path {ref!r}: no such object")
        data = read_bounded(fs, target, max_file_bytes) if info.size is None or info.size <= max_file_bytes else None
    except OSError as e:
        return None, ("read_error", str(e)[:200])
    return (data, None) if data is not None else (None, ("file_too_large", ref))
