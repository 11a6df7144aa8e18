"""`acedata run SPEC --out DIR`: run a pipeline spec."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline spec (YAML) on Ray",
        description="Run the stages of a pipeline spec in order. Completed stages whose config is "
        "unchanged are skipped; an interrupted stage resumes from its committed units.",
    )
    p.add_argument("spec", help="pipeline spec, e.g. pipelines/demo.yaml")
    p.add_argument("--out", required=True, help="run directory (local path or s3://, gs:// URI)")
    p.add_argument("--address", help="Ray GCS address HOST:PORT (default: $RAY_ADDRESS, else a `ray start` "
                   "cluster on this machine, else a private embedded Ray; `local` forces a private one)")
    p.add_argument("--executor", choices=["ray", "local"], help="override the spec's executor")
    p.add_argument("--id-scheme", choices=["xxh3-128", "sha256"], default=None,
                   help="override the spec's id_scheme (a new run's; an existing run keeps its own)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.commands._common import print_run
    from acedata.pipeline import run_pipeline

    result = run_pipeline(args.spec, args.out, address=args.address, executor=args.executor,
                          id_scheme=args.id_scheme)
    print_run(result, args.json)
    print(f"output: {result['out']}")
    return 0
