"""`acedata validate PATH`: check tables against their schema and manifest, and a run against
its record: every table a completed stage declares must be there."""

from __future__ import annotations

import argparse
import json
import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check a table (or every table of a run) against schema, manifest and checksums",
        description="Exits non-zero and lists each problem when a shard is missing, corrupt, "
        "unlisted, or its rows or schema differ from the manifest; for a run or stage directory, "
        "also when a table that a completed stage (its _SUCCESS.json) declares is missing, or a "
        "stage the run record (_run.json) lists has no _SUCCESS.json.",
    )
    p.add_argument("path", help="a table directory, or a run/stage directory holding tables")
    p.set_defaults(func=run)


@dataclass
class Findings:
    tables: list[str] = field(default_factory=list)  # fs paths of table dirs to check
    missing: list[str] = field(default_factory=list)  # one line per missing table / stage / marker


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/")[:-1])


def survey(fs: pafs.FileSystem, root: str) -> Findings:
    """Tables under `root`, plus what the run record says should be there and is not."""
    from acedata.pipeline import load_stages
    from acedata.runtime import SUCCESS

    found = Findings()
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = {i.path[len(root) :].lstrip("/"): i for i in infos if i.type == pafs.FileType.File}
    manifests = {posixpath.dirname(r) for r in files if posixpath.basename(r) == "_manifest.json" and not _hidden(r)}
    dirs = {i.path[len(root) :].lstrip("/") for i in infos if i.type == pafs.FileType.Directory}
    expected: set[str] = set()
    registry = load_stages()
    for rel in sorted(r for r in files if posixpath.basename(r) == SUCCESS and not _hidden(r)):
        stage_dir = posixpath.dirname(rel)
        try:
            kind = _read(fs, posixpath.join(root, rel))["summary"]["stage"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            found.missing.append(f"{posixpath.join(root, rel)}: unreadable stage marker ({_first(e)})")
            continue
        for table in getattr(registry.get(kind), "outputs", {}):
            expected.add(posixpath.join(stage_dir, table) if stage_dir else table)
    if "_run.json" in files:  # a run directory: each stage the record lists must have completed
        try:
            record = _read(fs, posixpath.join(root, "_run.json"))
            names = [s["name"] for s in record.get("stages", [])]
        except (OSError, ValueError, KeyError, TypeError) as e:
            found.missing.append(f"{posixpath.join(root, '_run.json')}: unreadable run record ({_first(e)})")
            names = []
        for name in names:
            if f"{name}/{SUCCESS}" not in files:
                found.missing.append(f"{posixpath.join(root, name)}: stage listed in _run.json has no {SUCCESS}")
    for rel in sorted(expected - manifests):
        where = posixpath.join(root, rel)
        why = "has no _manifest.json" if rel in dirs else "is missing"
        found.missing.append(f"{where}: table declared by its stage {why}")
    found.tables = [posixpath.join(root, r) if r else root for r in sorted(manifests)]
    return found


def find_tables(path: str) -> list[str]:
    """Every table (a folder with _manifest.json) under a table, stage or run directory, as URIs."""
    from acedata import shards

    fs, root = shards.resolve(path)
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""
    return [scheme + t for t in survey(fs, root.rstrip("/")).tables]


def _read(fs: pafs.FileSystem, path: str):
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run(args: argparse.Namespace) -> int:
    from acedata import shards
    from acedata.errors import UserError

    fs, root = shards.resolve(args.path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{args.path} does not exist")
    if info.type != pafs.FileType.Directory:
        raise UserError(f"{args.path} is a file; give a table, stage or run directory")
    scheme = args.path.split("://", 1)[0] + "://" if "://" in args.path else ""
    found = survey(fs, root.rstrip("/"))
    if not found.tables and not found.missing:
        raise UserError(f"no acedata table (a folder with _manifest.json) under {args.path}")
    bad = 0
    for line in found.missing:
        bad += 1
        print(f"MISSING {scheme}{line}")
    for t in found.tables:
        uri = scheme + t
        try:
            problems = shards.validate(uri)
            m = shards.read_manifest(uri) or {}
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # a manifest that is not ours
            problems, m = [f"malformed _manifest.json ({type(e).__name__}: {_first(e)})"], {}
        if problems:
            bad += 1
            print(f"FAIL {uri}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"ok   {uri}  ({m.get('rows', 0)} rows, {len(m.get('shards', []))} shards)")
    return 1 if bad else 0
