"""`acedata submit SPEC --out DIR`: run a pipeline spec as a job on a Ray cluster."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a pipeline spec as a job to a Ray cluster (Job Submission API)",
        description="Ship the spec and this checkout's code to a Ray cluster and run it there as a "
        "job; prints the job id. Submitting the same spec and --out again resumes the run. The "
        "auth token is taken from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.",
    )
    p.add_argument("spec", help="pipeline spec, e.g. pipelines/demo.yaml")
    p.add_argument("--out", required=True,
                   help="run directory as the cluster sees it: an absolute path on storage every node "
                   "mounts, or a URI (s3://, gs://, file://)")
    p.add_argument("--address", help="job server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--insecure-trusted-network", action="store_true",
                   help="send the Ray auth token over plain http to a non-loopback job server (only on a trusted network)")
    p.add_argument("--code", choices=["project", "installed"], default="project",
                   help="project: ship this checkout's packages with the job (default); "
                   "installed: use the acedata installed on the cluster")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="a Python file defining extra stages, shipped with the job (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable), e.g. HF_HOME=/models/hf")
    p.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit 1 unless it succeeded")
    p.set_defaults(func=run)


def parse_env(pairs: list[str]) -> dict[str, str]:
    from acedata.errors import UserError

    env = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env {item!r}: write KEY=VALUE")
        env[key] = value
    return env


def run(args: argparse.Namespace) -> int:
    import sys

    from acedata import jobs

    job_id = jobs.submit_pipeline(
        args.spec, args.out, address=args.address, code=args.code, plugins=args.plugin,
        env_vars=parse_env(args.env), python=args.python,
    )
    print(job_id, flush=True)
    if not args.wait:
        print(f"follow it: acedata jobs logs --follow {job_id}; progress: acedata jobs status {job_id}",
              file=sys.stderr)
        return 0
    for chunk in jobs.follow_logs(job_id, args.address):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    state = jobs.wait_for(job_id, args.address, timeout=60)
    print(f"job {job_id}: {state}", file=sys.stderr)
    return 0 if state == "SUCCEEDED" else 1
