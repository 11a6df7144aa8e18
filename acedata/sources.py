"""Readers for image collections: folders, Parquet files, WebDataset tars.

A reader lists a source into units of work (`list_units`) and later yields the raw
records of one unit (`read_unit`). A record is the raw bytes plus the metadata the
source had (caption, url, licence, ...), or an error that goes to quarantine.
Readers only open files inside the roots a spec names; symlinks are refused.
A root is a local path or any URI (`s3://`, `memory://`, `file://` ...): local folders are
walked here with the hardening rules below, other filesystems in `sources_remote`.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from acedata import storage, tar_stream
from acedata.source_roots import is_remote, source_root

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
TEXT_META = (".txt", ".caption")
META_KEYS = ("caption", "url", "license", "group")
IMAGE_COLUMNS = ("image", "jpg", "png", "bytes", "image_bytes")
PATH_COLUMNS = ("path", "image_path", "file")


@dataclass
class Record:
    uri: str
    data: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail) when the input could not be read


def _unit_id(kind: str, payload: Any) -> str:
    return kind + "-" + hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _inside(path: str, root: str) -> bool:
    real, root_real = os.path.realpath(path), os.path.realpath(root)
    return real == root_real or real.startswith(root_real + os.sep)


def _plain_file(path: str) -> bool:
    """A regular file and no link: `isfile and not islink` in one system call."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _sidecar_meta(path: str, names: set[str] | None = None) -> dict[str, Any]:
    """Metadata from `<stem>.json` / `<stem>.txt` beside an image (img2dataset style). `names`, the
    folder's entries when the caller listed it, spares a lookup per sidecar that is not there."""
    stem = os.path.splitext(path)[0]
    base = os.path.basename(stem)
    meta: dict[str, Any] = {}
    if names is not None and not any(base + ext in names for ext in (".json", *TEXT_META)):
        return meta

    def there(ext: str) -> bool:  # a name the listing lacks needs no lstat
        return (names is None or base + ext in names) and _plain_file(stem + ext)

    if there(".json"):
        try:
            loaded = json.loads(_read_whole(stem + ".json").decode("utf-8"))
            if isinstance(loaded, dict):
                meta.update(loaded)
        except (OSError, ValueError):
            pass
    for ext in TEXT_META:
        if there(ext):
            with open(stem + ext, encoding="utf-8", errors="replace") as f:
                meta.setdefault("caption", f.read().strip())
    return meta


# --- listing ------------------------------------------------------------------------


def list_units(root: str, files_per_unit: int = 64) -> list[tuple[str, dict[str, Any]]]:
    """Split one source root (folder, .parquet, .tar; local or a URI) into (unit_id, payload) units."""
    root = source_root(root)
    if is_remote(root):
        from acedata.sources_remote import list_remote_units

        return list_remote_units(root, files_per_unit)
    if not os.path.lexists(root):
        from acedata.errors import UserError

        raise UserError(f"source {root!r} does not exist; check the path in the spec or command")
    if os.path.isfile(root):
        return _file_units(root, root)
    if not os.path.isdir(root):  # a fifo, socket or device named as a source: never opened
        return [(_unit_id("special", [root]), {"kind": "special", "root": root, "files": [root]})]
    files, rejected, tars = _walk_folder(root)
    units: list[tuple[str, dict[str, Any]]] = []
    loose: list[str] = []
    special: list[str] = []
    for p in files:
        ext = os.path.splitext(p)[1].lower()
        mode = _lmode(p)  # one lstat answers both: link, and regular file
        if mode is not None and stat.S_ISLNK(mode):
            loose.append(p)  # rejected when read, so it is counted
        elif mode is not None and not stat.S_ISREG(mode):
            special.append(p)  # a fifo, socket or device: opening it could block forever
        elif ext == ".tar":
            units.extend(_file_units(p, root))
        elif ext == ".parquet":
            if os.path.splitext(p)[0] in tars:
                continue  # img2dataset's per-shard metadata table; the tar holds the images
            units.extend(_file_units(p, root))
        else:
            loose.append(p)
    for i in range(0, len(loose), files_per_unit):
        chunk = loose[i : i + files_per_unit]
        payload = {"kind": "files", "root": root, "files": chunk}
        units.append((_unit_id("files", chunk), payload))
    if rejected:
        payload = {"kind": "rejected", "root": root, "files": rejected}
        units.append((_unit_id("rejected", rejected), payload))
    if special:
        units.append((_unit_id("special", special), {"kind": "special", "root": root, "files": special}))
    return units


def _walk_folder(root: str) -> tuple[list[str], list[str], set[str]]:
    """(candidate files in sorted walk order, linked folders refused, tar stems) under a folder;
    sidecar metadata next to an image is left out (read with its image), links are not followed."""
    files: list[str] = []
    rejected: list[str] = []
    tars = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        listed = {n.lower() for n in (*filenames, *dirnames)}  # for sidecars' image siblings
        dirnames.sort()
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                rejected.append(os.path.join(dirpath, d))
                dirnames.remove(d)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = os.path.join(dirpath, name)
            ext = os.path.splitext(name)[1].lower()
            if ext == ".tar":
                tars.add(os.path.splitext(p)[0])
            if ext in (".json", *TEXT_META) and _has_image_sibling(p, listed):
                continue  # sidecar metadata, read with its image
            files.append(p)
    return files, rejected, tars


def _lmode(path: str) -> int | None:
    """The file's own mode (links not followed); None when it vanished or cannot be looked at,
    which the reader then reports as a read error."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return None


def _regular(path: str) -> bool:
    mode = _lmode(path)
    return mode is None or stat.S_ISREG(mode)  # vanished or unreadable: reported when read


def _has_image_sibling(p: str, listed: set[str] | None = None) -> bool:
    """An image file beside `p` with its stem. `listed`, the folder's entry names in lower case,
    answers "no" without a system call; a name found there is still checked on disk (links)."""
    stem = os.path.splitext(p)[0]
    exts = IMAGE_EXTS
    if listed is not None:
        base = os.path.basename(stem).lower()
        exts = [e for e in IMAGE_EXTS if base + e in listed]
    return any(os.path.exists(stem + e) or os.path.exists(stem + e.upper()) for e in exts)


def _file_units(path: str, root: str) -> list[tuple[str, dict[str, Any]]]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        try:
            groups = _parquet_file(path).num_row_groups
        except Exception as e:  # noqa: BLE001 - an unreadable file is quarantined, not fatal
            payload = {"kind": "bad_file", "root": root, "file": path, "detail": str(e)[:200]}
            return [(_unit_id("bad", path), payload)]
        return [
            (_unit_id("pq", [path, g]), {"kind": "parquet", "root": root, "file": path, "row_group": g})
            for g in range(groups)
        ]
    if ext == ".tar":
        return [(_unit_id("tar", path), {"kind": "tar", "root": root, "file": path})]
    return [(_unit_id("files", [path]), {"kind": "files", "root": root, "files": [path]})]


# --- reading ------------------------------------------------------------------------


def read_unit(payload: dict[str, Any], max_file_bytes: int) -> Iterator[Record]:
    kind = payload["kind"]
    if kind == "files" and is_remote(payload["root"]):
        from acedata.sources_remote import read_remote_files

        yield from read_remote_files(payload, max_file_bytes)
    elif kind == "files":
        yield from _read_files(payload["files"], payload["root"], max_file_bytes)
    elif kind == "parquet":
        yield from _read_parquet(payload["file"], payload["row_group"], max_file_bytes)
    elif kind == "tar":
        yield from _read_tar(payload["file"], max_file_bytes)
    elif kind == "rejected":
        for p in payload["files"]:
            yield Record(p, error=("symlink", "symbolic links are not followed"))
    elif kind == "special":
        for p in payload["files"]:
            yield Record(p, error=("not_regular_file", "a fifo, socket or device file; only regular files are read"))
    elif kind == "bad_file":
        yield Record(payload["file"], error=("unreadable_source", payload["detail"]))
    else:
        raise ValueError(f"unknown unit kind {kind}")


def _read_files(files: list[str], root: str, max_file_bytes: int) -> Iterator[Record]:
    # One lstat per file answers link / regular / size; the root and each folder resolve once, and
    # each folder is listed once for sidecars: per-file system calls, not decoding, were a visible
    # share of ingesting small images.
    root_real = os.path.realpath(root)
    real_dirs: dict[str, str] = {}
    names_in: dict[str, set[str]] = {}
    for p in files:
        try:
            st: os.stat_result | None = os.lstat(p)
        except OSError:
            st = None  # vanished or unreadable: reported as a read error below
        if st is not None and stat.S_ISLNK(st.st_mode):
            yield Record(p, error=("symlink", "symbolic links are not followed"))
            continue
        folder = os.path.dirname(p)
        if folder not in real_dirs:  # the file itself is no link (lstat above): its folder decides
            real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_dirs[folder], os.path.basename(p)) if st is not None else os.path.realpath(p)
        if not (real == root_real or real.startswith(root_real + os.sep)):
            yield Record(p, error=("outside_root", f"resolves outside {root}"))
            continue
        if st is not None and not stat.S_ISREG(st.st_mode):  # replaced by a fifo/device since listing
            yield Record(p, error=("not_regular_file", "not a regular file; only regular files are read"))
            continue
        try:
            size = st.st_size if st is not None else os.path.getsize(p)
            if size > max_file_bytes:
                yield Record(p, error=("file_too_large", f"{size} bytes > {max_file_bytes}"))
                continue
            data = _read_whole(p, size)
        except OSError as e:
            yield Record(p, error=("read_error", str(e)[:200]))
            continue
        if folder not in names_in:
            try:
                names_in[folder] = set(os.listdir(folder))
            except OSError:
                names_in[folder] = set()
        yield Record(p, data, _sidecar_meta(p, names_in[folder]))


def _read_whole(path: str, size: int = (1 << 16) - 1) -> bytes:
    """A file's bytes through an unbuffered descriptor: an open, a read of the size its stat gave
    and a read that finds the end, then a close (a buffered `open` added a stat, a terminal check
    and a buffer object per file: per-file costs at the scale of decoding a small image). `size`
    is a hint: a file that grew since its stat is read to its end all the same."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
        if not data:
            return data
        more = [data]
        while chunk := os.read(fd, 1 << 16):
            more.append(chunk)
        return data if len(more) == 1 else b"".join(more)
    finally:
        os.close(fd)


def _pick(names: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


def _parquet_file(path: str) -> pq.ParquetFile:
    fs, p = storage.resolve(path)
    return pq.ParquetFile(fs.open_input_file(p))


def _read_parquet(path: str, row_group: int, max_file_bytes: int) -> Iterator[Record]:
    table = _parquet_file(path).read_row_group(row_group)
    names = table.column_names
    img_col, path_col = _pick(names, IMAGE_COLUMNS), _pick(names, PATH_COLUMNS)
    rows = table.to_pylist()
    base = os.path.dirname(path)
    for i, row in enumerate(rows):
        uri = f"{path}#rg={row_group}&row={i}"
        meta = {k: v for k, v in row.items() if k not in (img_col, path_col) and _jsonable(v)}
        if "text" in meta and "caption" not in meta:
            meta["caption"] = meta.pop("text")
        cell = row.get(img_col) if img_col else None
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None and isinstance(cell, dict) and cell.get("path"):
            ref = cell["path"]
        else:
            ref = row.get(path_col) if path_col else None
        if data is None and ref and is_remote(path):
            from acedata.sources_remote import remote_ref

            data, err = remote_ref(path, ref, max_file_bytes)
            if err:
                yield Record(uri, error=err)
                continue
        elif data is None and ref:
            ref_path = ref if os.path.isabs(ref) else os.path.join(base, ref)
            if not _inside(ref_path, base) or os.path.islink(ref_path):
                yield Record(uri, error=("outside_root", f"path {ref!r} escapes {base}"))
                continue
            if not _regular(ref_path):
                yield Record(uri, error=("not_regular_file", f"path {ref!r} is not a regular file"))
                continue
            try:
                if os.path.getsize(ref_path) > max_file_bytes:
                    yield Record(uri, error=("file_too_large", ref))
                    continue
                with open(ref_path, "rb") as f:
                    data = f.read()
            except OSError as e:
                yield Record(uri, error=("read_error", str(e)[:200]))
                continue
        if data is None:
            yield Record(uri, error=("malformed_row", "row has neither image bytes nor a path"))
            continue
        if not isinstance(data, bytes | bytearray):
            yield Record(uri, error=("malformed_row", f"image column holds {type(data).__name__}"))
            continue
        yield Record(uri, bytes(data), meta)


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _read_tar(path: str, max_file_bytes: int) -> Iterator[Record]:
    """WebDataset: consecutive members sharing a key (name up to the first dot) form one sample.

    Streamed member by member (one sample in memory); damaged or unreadable members are
    reported as records of their own, so every member is counted.
    """
    from acedata.shards import resolve

    try:
        fs, fs_path = resolve(path)
        raw = fs.open_input_stream(fs_path)  # a pyarrow stream: local files and object stores alike
    except OSError as e:
        yield Record(path, error=("read_error", str(e)[:200]))
        return
    key: str | None = None
    parts: dict[str, bytes] = {}
    too_large: int | None = None
    try:
        for m in tar_stream.members(tar_stream.open_decompressed(raw), max_file_bytes):
            if m.error and m.error[0] != "file_too_large":
                yield Record(f"{path}#{m.name}", error=m.error)
                continue
            base = posixpath.basename(m.name)
            stem, _, ext = base.partition(".")
            k = posixpath.join(posixpath.dirname(m.name), stem)
            if k != key:
                if key is not None:
                    yield _sample(path, key, parts, too_large)
                key, parts, too_large = k, {}, None
            if m.error:
                too_large = m.size
            else:
                parts[ext.lower()] = m.data or b""
    except (OSError, EOFError, ValueError) as e:  # a decompression error: keep what was read
        yield Record(path, error=("unreadable_source", f"tar: {str(e)[:200]}"))
    finally:
        raw.close()
    if key is not None:
        yield _sample(path, key, parts, too_large)


def _sample(path: str, key: str, parts: dict[str, bytes], too_large: int | None) -> Record:
    uri = f"{path}#{key}"
    if too_large is not None:
        return Record(uri, error=("file_too_large", f"{too_large} bytes"))
    img_ext = next((e for e in parts if "." + e.split(".")[-1] in IMAGE_EXTS), None)
    if img_ext is None:
        return Record(uri, error=("no_image_in_sample", f"members: {sorted(parts)}"))
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            loaded = json.loads(parts["json"])
            if isinstance(loaded, dict):
                meta.update({k: v for k, v in loaded.items() if _jsonable(v)})
        except ValueError:
            meta["meta_error"] = "bad json sidecar"
    for t in ("txt", "caption"):
        if t in parts:
            meta.setdefault("caption", parts[t].decode("utf-8", errors="replace").strip())
    return Record(uri, parts[img_ext], meta)
