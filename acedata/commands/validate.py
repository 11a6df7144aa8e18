"""`acedata validate PATH`: check tables against their schema and manifest."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check a table (or every table of a run) against schema, manifest and checksums",
        description="Exits non-zero and lists each problem when a shard is missing, corrupt, "
        "unlisted, or its rows or schema differ from the manifest.",
    )
    p.add_argument("path", help="a table directory, or a run/stage directory holding tables")
    p.set_defaults(func=run)


def find_tables(path: str) -> list[str]:
    from acedata import shards, storage

    if shards.read_manifest(path) is not None:
        return [path]
    found = []
    for dirpath, dirnames, filenames in storage.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        if "_manifest.json" in filenames:
            found.append(dirpath)
    return found


def run(args: argparse.Namespace) -> int:
    from acedata import shards, storage
    from acedata.errors import UserError

    if not storage.exists_uri(args.path):
        raise UserError(f"{args.path} does not exist")
    tables = find_tables(args.path)
    if not tables:
        raise UserError(f"no acedata table (a folder with _manifest.json) under {args.path}")
    bad = 0
    for t in tables:
        problems = shards.validate(t)
        m = shards.read_manifest(t) or {}
        if problems:
            bad += 1
            print(f"FAIL {t}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"ok   {t}  ({m.get('rows', 0)} rows, {len(m.get('shards', []))} shards)")
    return 1 if bad else 0
