"""`acedata digest RUN`: an order-independent digest of every table of a run."""

from __future__ import annotations

import argparse
import json
import os


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "digest",
        help="digest every table of a run (ids and content, order-independent) to compare runs",
        description="Two runs of one spec over the same input content print the same digests, "
        "whatever their --out, executor, worker count or unit order. Absolute paths of the run "
        "and of ingest sources inside values are normalised; image bytes count by sha256.",
    )
    p.add_argument("run_dir", help="a run directory (or URI)")
    p.add_argument("--json", action="store_true", help="print the digests as JSON")
    p.add_argument("--skip", action="append", default=[], metavar="STAGE/TABLE",
                   help="leave a table out (e.g. GPU model output compared across machines); repeatable")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.digest import find_tables, run_digest
    from acedata.errors import UserError

    if "://" not in args.run_dir and not os.path.isdir(args.run_dir):
        raise UserError(f"{args.run_dir} is not a directory; give a run directory")
    if not find_tables(args.run_dir):
        raise UserError(f"no acedata table (a folder with _manifest.json) under {args.run_dir}")
    d = run_digest(args.run_dir, tuple(args.skip))
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    for name, t in d["tables"].items():
        print(f"{t['digest'][:16]}  {t['rows']:>8} rows  {name}")
    print(f"{d['digest'][:16]}  run")
    return 0
