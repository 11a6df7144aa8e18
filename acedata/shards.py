"""Parquet shard IO: size-bounded shards, per-table manifests, streaming reads.

Layout of a table directory::

    TABLE/
      <unit>-<attempt>-00000.parquet   shards; <attempt> is unique to one write attempt
      _units/<unit>.json               one fragment per committed unit (its shards, rows, sha256)
      _attempts/<unit>/<attempt>       a marker per attempt not yet forgotten (see clear_attempts)
      _manifest.json                   the merged manifest: every shard, rows, bytes, sha256, schema

Commit protocol, the same on a local disk and on object stores (which have no rename):

* Shard names are write-once: every attempt at a unit writes under its own attempt id,
  so a retried or zombie attempt never overwrites a file another attempt already listed.
  Locally a shard is written under a hidden temporary name and renamed; on an object
  store it is uploaded directly under its final name (a "move" there is a copy plus a
  delete, and an upload is invisible until it completes, so nothing is gained by it).
* A unit's fragment is written after all its shards, as one whole-object write
  (`storage.write_file`: rename locally, a single PUT on object stores). The unit is
  committed exactly when its fragment exists.
* Readers trust only what a fragment (via the manifest) lists. A writer killed before
  its fragment leaves only files that nothing lists; a rerun of the unit deletes them
  and writes a new attempt; `validate` reports any that remain as unlisted. Each attempt
  writes a marker `_attempts/<unit>/<attempt>` before its first shard, so the rerun finds
  them from the unit's own markers and the names (never by listing the table, whose size
  grows with the number of units); the marker folder goes once the unit is done.
* The stage's `_done/<unit>.json` marker and the table's `_manifest.json` are likewise
  single whole-object writes, made after the fragments they summarise.

Paths may be local or any pyarrow/fsspec URI (s3://, gs://, file://, memory://).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from acedata import storage
from acedata.schemas import IMAGE, SCHEMA_VERSION, with_hf_metadata

MANIFEST = "_manifest.json"
UNITS_DIR = "_units"


# --- filesystem helpers ------------------------------------------------------------


resolve = storage.resolve
exists = storage.exists


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole object atomically (see `storage.write_file`)."""
    storage.write_file(fs, path, data)


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def sha256_file(fs: pafs.FileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- writing -----------------------------------------------------------------------


@dataclass
class ShardInfo:
    file: str
    rows: int
    bytes: int
    sha256: str


class _HashingSink:
    """A write-only file object that hashes and counts what passes through to `out`."""

    # The Parquet writer hands over every page header and small page separately (~180 calls for
    # a unit's three small tables); pieces below this size are gathered and passed on together.
    GATHER = 1 << 16

    def __init__(self, out: pa.NativeFile) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False
        self._held = bytearray()

    def _pass(self, data) -> None:
        self.sha.update(data)
        self.out.write(data)

    def _release(self) -> None:
        if self._held:
            self._pass(self._held)
            self._held = bytearray()

    def write(self, data: bytes) -> int:
        n = len(data)
        self.size += n
        if n >= self.GATHER:
            self._release()
            self._pass(data)
        else:
            self._held += data
            if len(self._held) >= self.GATHER:
                self._release()
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()
            self.out.close()


# Schema metadata: b"chunks" makes ShardWriter end a row group at every chunk boundary of
# what it is given (besides its size caps), so a stage controls which rows share a group.
ROW_GROUPS_KEY = b"acedata.row_groups"
# Schema metadata: comma-separated columns ShardWriter stores uncompressed (raw float bytes: zstd
# saves ~8% of them at ~3x the CPU of reading the plain pages, and ~2x that of writing them).
RAW_COLUMNS_KEY = b"acedata.raw_columns"

SHARD_NAME = re.compile(r"^(?P<unit>.+)-(?P<attempt>[0-9a-f]{12})-(?P<part>\d{5})\.parquet$")


def shard_unit(name: str) -> str | None:
    """The unit id a shard file name belongs to (None for names not written by ShardWriter)."""
    m = SHARD_NAME.match(name)
    return m.group("unit") if m else None


def shard_place(name: str) -> tuple[str, int] | None:
    """(unit id, part: the shard's number among the unit's) of a shard file name: where its rows
    are, the same for every attempt at the unit (None for names not written by ShardWriter)."""
    m = SHARD_NAME.match(posixpath.basename(name))
    return (m.group("unit"), int(m.group("part"))) if m else None


ATTEMPTS_DIR = "_attempts"  # TABLE/_attempts/<unit>/<attempt>: one marker per write attempt
MARKED = ".marked"  # TABLE/_attempts/.marked: every attempt at the table since has a marker
_TMP_SHARD = re.compile(r"^\.tmp-(?P<attempt>[0-9a-f]{12})-(?P<name>.+)$")


def _attempt_of(name: str) -> tuple[str, str] | None:
    """(unit, attempt) of a shard file name, final or a local temporary one (None otherwise)."""
    tmp = _TMP_SHARD.match(name)
    m = SHARD_NAME.match(tmp.group("name") if tmp else name)
    return (m.group("unit"), m.group("attempt")) if m else None


def _markers(d: str, unit_id: str) -> str:
    return posixpath.join(d, ATTEMPTS_DIR, unit_id)


def mark_attempt(fs: pafs.FileSystem, d: str, unit_id: str, attempt: str) -> None:
    """Record an attempt at a unit before it writes anything: `clear_attempts` finds its files from
    this marker alone. Its content does not matter, so it is written directly (no rename)."""
    folder = _markers(d, unit_id)
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(posixpath.join(folder, attempt)):
        pass


def _attempt_files(fs: pafs.FileSystem, d: str, unit_id: str, attempt: str) -> list[str]:
    """The files one attempt left, by their names (no listing). Parts are written one after
    another (locally each renamed from its temporary name before the next opens), so the first
    part with neither name ends them."""
    local = storage.is_local(fs)
    found: list[str] = []
    part = 0
    while True:
        name = f"{unit_id}-{attempt}-{part:05d}.parquet"
        names = [name, f".tmp-{attempt}-{name}"] if local else [name]
        there = [i.path for i in fs.get_file_info([posixpath.join(d, n) for n in names])
                 if i.type != pafs.FileType.NotFound]
        if not there:
            return found
        found += there
        part += 1


def clear_attempts(table_dir: str, unit_id: str) -> None:
    """Delete the shards of earlier, uncommitted attempts at a unit (nothing lists them).

    Call before writing a unit again; never for a committed unit. Lists only the unit's own
    markers (`_attempts/<unit>/`), never the table: the cost is the unit's, whatever the table
    holds. Files are deleted last part first, so a crash here leaves a prefix of the parts,
    still found from the marker, which goes last."""
    fs, d = resolve(table_dir)
    folder = _markers(d, unit_id)
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        attempt = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and not attempt.startswith("."):
            for path in reversed(_attempt_files(fs, d, unit_id, attempt)):
                fs.delete_file(path)
        fs.delete_file(info.path)


def drop_markers(table_dir: str, unit_id: str) -> None:
    """Forget a unit's attempts once it is committed for good (its stage's done-marker written)."""
    fs, d = resolve(table_dir)
    folder = _markers(d, unit_id)
    if fs.get_file_info(folder).type == pafs.FileType.Directory:
        fs.delete_dir(folder)


def adopt_attempts(table_dir: str, settled: Callable[[], Collection[str]]) -> int:
    """Once per table, on the driver before units run: give a marker to each attempt that left
    files in a table written before markers existed (its units not in `settled()`, the stage's done
    units), so their reruns clear them as any other. One listing of the table, then never again
    (`_attempts/.marked`). Returns the attempts marked."""
    fs, d = resolve(table_dir)
    stamp = posixpath.join(d, ATTEMPTS_DIR, MARKED)
    if exists(fs, stamp):
        return 0
    seen: set[tuple[str, str]] = set()
    if exists(fs, d):
        done = set(settled())
        for info in fs.get_file_info(pafs.FileSelector(d)):
            found = _attempt_of(posixpath.basename(info.path))
            if found and found[0] not in done and found not in seen:
                seen.add(found)
                mark_attempt(fs, d, *found)
    write_bytes_atomic(fs, stamp, b"{}")
    return len(seen)


_LEAVES: dict[str, list[str]] = {}


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """The Parquet leaf columns' dotted paths (a struct's fields are leaves of their own)."""
    key = str(pa.schema(list(schema)))  # fields only: metadata does not change the columns
    if key not in _LEAVES:
        buf = pa.BufferOutputStream()
        pq.write_table(pa.schema(list(schema)).empty_table(), buf)
        leaves = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
        _LEAVES[key] = [leaves.column(i).path for i in range(len(leaves))]
    return _LEAVES[key]


def raw_columns(schema: pa.Schema) -> set[str]:
    """The leaf paths the schema lists under RAW_COLUMNS_KEY: stored uncompressed, no dictionary."""
    return {c for c in (schema.metadata or {}).get(RAW_COLUMNS_KEY, b"").decode().split(",") if c}


def codecs_of(schema: pa.Schema) -> str | dict[str, str]:
    """Parquet compression per column: zstd, except the bytes of IMAGE columns. Those hold JPEG,
    WebP or PNG already; zstd saved under 1% of them for about half the CPU time of writing
    an images shard (the rows of a unit are written once, read many times). Columns the schema
    lists under RAW_COLUMNS_KEY (leaf paths) are stored uncompressed too."""
    plain = raw_columns(schema)
    raw = {f"{f.name}.bytes" for f in schema if f.type == IMAGE} | plain
    if not raw:
        return "zstd"
    return {path: "none" if path in raw else "zstd" for path in _leaf_paths(schema)}


def _is_vector(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_floating(t.value_type)


def dictionary_of(schema: pa.Schema) -> bool | list[str]:
    """Parquet dictionary encoding: every column but
    - the image bytes of a table keyed by image_id. Its rows are distinct images (a unit drops its
      duplicates), so the writer only hashed each encoded image to give up on the dictionary: a
      third of writing an images shard. Tables where one image can recur (LCU targets) keep it;
    - float vectors (embeddings). float16 has few enough values that the dictionary always fits,
      so it stays on, 2% larger and ~3x slower to read than plain (cluster reads them three times);
    - the RAW_COLUMNS_KEY columns (vectors as fixed-width bytes: all distinct).
    Values read back the same either way."""
    plain = {f"{f.name}." for f in schema if _is_vector(f.type)}
    plain |= raw_columns(schema)
    if "image_id" in schema.names and "image" in schema.names and schema.field("image").type == IMAGE:
        plain.add("image.bytes")
    if not plain:
        return True
    return [path for path in _leaf_paths(schema) if path not in plain and not path.startswith(tuple(plain))]


@dataclass
class ShardWriter:
    """Writes one unit's rows as size-bounded zstd Parquet shards.

    Shards are named `<unit>-<attempt>-NNNNN.parquet` with an id unique to this writer,
    hashed while they stream out. Call `commit()` to close the last shard and record the
    unit in the table's `_units/` folder; until then nothing the writer wrote is listed.
    """

    table_dir: str
    schema: pa.Schema
    unit: str = "part"
    max_rows: int = 100_000
    max_bytes: int = 256 << 20
    row_group_bytes: int = 32 << 20
    shards: list[ShardInfo] = field(default_factory=list)
    # Columns of each row group kept in memory (shard name -> groups in order), so the unit can
    # build the shard's image index without reading the shard back.
    keep_columns: tuple[str, ...] = ()
    kept: dict[str, list[pa.Table]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if b"huggingface" not in (self.schema.metadata or {}):
            # Every table opens in `datasets` with its image columns decoded as images.
            try:
                self.schema = with_hf_metadata(self.schema)
            except KeyError:  # a column type `datasets` has no feature for: left to its defaults
                pass
        self._fs, self._dir = resolve(self.table_dir)
        self._fs.create_dir(self._dir, recursive=True)
        self._local = storage.is_local(self._fs)
        self._attempt = storage.attempt_id()
        mark_attempt(self._fs, self._dir, self.unit, self._attempt)  # before any file of the attempt
        self._writer: pq.ParquetWriter | None = None
        self._tmp = ""
        self._rows = 0
        self._bytes = 0
        self._groups: list[pa.Table] = []

    def _name(self) -> str:
        return f"{self.unit}-{self._attempt}-{len(self.shards):05d}.parquet"

    def _open(self) -> None:
        # locally: a hidden temp name renamed on close; object stores: the final name (one upload)
        name = f".tmp-{self._attempt}-{self._name()}" if self._local else self._name()
        self._tmp = posixpath.join(self._dir, name)
        self._sink = _HashingSink(self._fs.open_output_stream(self._tmp))
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression=codecs_of(self.schema),
                                       use_dictionary=dictionary_of(self.schema))
        self._rows = self._bytes = 0
        self._groups = []

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        name = self._name()
        if self.keep_columns:
            meta = getattr(getattr(self._writer, "writer", None), "metadata", None)  # the footer written
            if meta is not None and ([meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                                     == [t.num_rows for t in self._groups]):
                self.kept[name] = self._groups
        self._groups = []
        final = posixpath.join(self._dir, name)
        if self._tmp != final:
            self._fs.move(self._tmp, final)
        self.shards.append(ShardInfo(name, self._rows, self._sink.size, self._sink.sha.hexdigest()))
        self._writer = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        table = table.cast(self.schema) if table.schema != self.schema else table
        if (self.schema.metadata or {}).get(ROW_GROUPS_KEY) == b"chunks":
            # the table's chunks are its row groups (e.g. whole clusters): readers select them by statistics
            for batch in table.to_batches():
                self._write_groups(pa.Table.from_batches([batch], schema=table.schema))
        else:
            self._write_groups(table)

    def _write_groups(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        row_bytes = max(1, table.nbytes // table.num_rows)
        group_rows = max(1, self.row_group_bytes // row_bytes)
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                self._open()
            room_rows = self.max_rows - self._rows
            room_bytes = max(row_bytes, self.max_bytes - self._bytes)
            n = min(table.num_rows - start, room_rows, max(1, room_bytes // row_bytes), group_rows)
            chunk = table.slice(start, n)
            self._writer.write_table(chunk, row_group_size=n)
            if self.keep_columns:
                self._groups.append(chunk.select([c for c in self.keep_columns if c in chunk.column_names]))
            self._rows += n
            self._bytes += chunk.nbytes
            start += n
            if self._rows >= self.max_rows or self._bytes >= self.max_bytes:
                self._close_shard()

    def commit(self, extra: dict[str, Any] | None = None) -> list[ShardInfo]:
        """Close the open shard and record this unit as committed (atomically)."""
        self._close_shard()
        units = posixpath.join(self._dir, UNITS_DIR)
        self._fs.create_dir(units, recursive=True)
        fragment = {
            "unit": self.unit,
            "schema_version": SCHEMA_VERSION,
            "shards": [s.__dict__ for s in self.shards],
            **(extra or {}),
        }
        write_bytes_atomic(self._fs, posixpath.join(units, f"{self.unit}.json"), json.dumps(fragment).encode())
        return self.shards


def write_table(
    table_dir: str, rows: pa.Table, schema: pa.Schema, unit: str = "part", table: str | None = None, **kw: Any
) -> dict[str, Any]:
    """Write a whole table as one committed unit and finalize the manifest."""
    w = ShardWriter(table_dir, schema, unit=unit, **kw)
    w.write(rows)
    w.commit()
    drop_markers(table_dir, unit)  # committed: the fragment is the unit's only record
    return finalize_manifest(table_dir, schema, table=table)


def committed_units(table_dir: str) -> set[str]:
    fs, d = resolve(table_dir)
    units = posixpath.join(d, UNITS_DIR)
    if not exists(fs, units):
        return set()
    infos = fs.get_file_info(pafs.FileSelector(units))
    names = (posixpath.basename(i.path) for i in infos)
    # a hidden name is a fragment still being written (or left by a crash): not committed
    return {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")}


def unit_fragment(table_dir: str, unit: str) -> dict[str, Any]:
    fs, d = resolve(table_dir)
    return read_json(fs, posixpath.join(d, UNITS_DIR, f"{unit}.json"))


def finalize_manifest(table_dir: str, schema: pa.Schema, table: str | None = None) -> dict[str, Any]:
    """Merge the committed units' fragments into `_manifest.json` (written atomically)."""
    fs, d = resolve(table_dir)
    fs.create_dir(d, recursive=True)
    shards: list[dict[str, Any]] = []
    for unit in sorted(committed_units(table_dir)):
        shards.extend(unit_fragment(table_dir, unit)["shards"])
    manifest = {
        "table": table or posixpath.basename(d.rstrip("/")),
        "schema_version": SCHEMA_VERSION,
        "schema": schema_to_json(schema),
        "rows": sum(s["rows"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
    }
    write_bytes_atomic(fs, posixpath.join(d, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def schema_to_json(schema: pa.Schema) -> list[list[str]]:
    # Parquet names list children "element" on read-back where Arrow says "item": the same type.
    return [[f.name, str(f.type).replace("<element: ", "<item: ")] for f in schema]


# --- reading -----------------------------------------------------------------------


def read_manifest(table_dir: str) -> dict[str, Any] | None:
    fs, d = resolve(table_dir)
    path = posixpath.join(d, MANIFEST)
    return read_json(fs, path) if exists(fs, path) else None


def list_shards(path: str) -> list[str]:
    """Shard URIs of a table: the manifest's list, else every visible *.parquet file.

    `path` may also be a single Parquet file.
    """
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no table at {path}")
    join = (lambda n: posixpath.join(path, n)) if "://" in path else (lambda n: posixpath.join(p, n))
    manifest = read_manifest(path)
    if manifest is not None:
        return [join(s["file"]) for s in manifest["shards"]]
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    files = sorted(
        i.path
        for i in infos
        if i.path.endswith(".parquet") and not any(part.startswith((".", "_")) for part in i.path[len(p) :].split("/"))
    )
    return [join(posixpath.relpath(f, p)) for f in files]


def open_parquet(uri: str, **options) -> pq.ParquetFile:
    """`options`: pyarrow.parquet.ParquetFile's (e.g. pre_buffer, buffer_size)."""
    fs, p = resolve(uri)
    return pq.ParquetFile(fs.open_input_file(p), **options)


def row_groups_between(pf: pq.ParquetFile, column: str, lo: int, hi: int) -> list[int]:
    """The row groups of `pf` whose min/max statistics of integer `column` meet [lo, hi] (a group
    without statistics is kept)."""
    md = pf.metadata
    leaf = next(i for i in range(md.num_columns) if md.schema.column(i).path == column)
    groups = []
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(leaf).statistics
        if st is None or not st.has_min_max or (st.min <= hi and st.max >= lo):
            groups.append(g)
    return groups


def read_between(pf: pq.ParquetFile, column: str, lo: int, hi: int) -> pa.Table | None:
    """The rows of `pf` whose integer `column` lies in [lo, hi], reading only the row groups that
    can hold them; None when no group is read."""
    groups = row_groups_between(pf, column, lo, hi)
    if not groups:
        return None
    t = pf.read_row_groups(groups)
    c = t.column(column)
    return t.filter(pc.and_(pc.greater_equal(c, lo), pc.less_equal(c, hi)))


def iter_batches(path: str, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Stream a table's rows shard by shard, row group by row group."""
    for shard in list_shards(path):
        pf = open_parquet(shard)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    shards = list_shards(path)
    if not shards:
        return pa.table({})
    tables = [open_parquet(s).read(columns=columns) for s in shards]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def count_rows(path: str) -> int:
    manifest = read_manifest(path)
    if manifest is not None:
        return int(manifest["rows"])
    return sum(open_parquet(s).metadata.num_rows for s in list_shards(path))


# --- validation --------------------------------------------------------------------


def validate(table_dir: str, expected_schema: pa.Schema | None = None) -> list[str]:
    """Check a table against its manifest and schema; returns the problems found (`shard_check`)."""
    from acedata.shard_check import validate_table  # late: shard_check reads through this module

    return validate_table(table_dir, expected_schema)
