"""`acedata jobs list|status|logs|stop`: watch and control jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jobs",
        help="list, inspect, follow and stop jobs on a Ray cluster",
        description="Talks to the cluster's job server (--address or $RAY_ADDRESS, e.g. http://HEAD:8265) "
        "with the auth token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", help="job server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    common.add_argument("--insecure-trusted-network", action="store_true",
                        help="send the Ray auth token over plain http to a non-loopback job server (only on a trusted network)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    v = verbs.add_parser("list", parents=[common], help="jobs on the cluster, newest first")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_list)

    v = verbs.add_parser("status", parents=[common], help="a job's state, the stage in progress and per-stage counts so far")
    v.add_argument("job")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_status)

    v = verbs.add_parser("logs", parents=[common], help="a job's log (driver output)")
    v.add_argument("job")
    v.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    v.set_defaults(func=run_logs)

    v = verbs.add_parser("stop", parents=[common], help="stop a job; committed work is kept (submit again to resume)")
    v.add_argument("job")
    v.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it to end (default 60)")
    v.set_defaults(func=run_stop)


def _when(t: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t / 1000)) if t else "-"


def run_list(args: argparse.Namespace) -> int:
    from acedata import jobs

    rows = jobs.list_jobs(args.address)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no jobs")
    for r in rows:
        what = r["metadata"].get("spec") or r["metadata"].get("acedata") or r["entrypoint"][:40]
        print(f"{r['job_id']:<48} {r['status']:<10} {_when(r['start_time']):<20} {what}")
    return 0


def format_status(row: dict[str, Any]) -> str:
    lines = [f"job {row['job_id']}: {row['status']}" + (f" ({row['message']})" if row.get("message") else "")]
    if row["metadata"].get("out"):
        lines.append(f"  out: {row['metadata']['out']}")
    run = row.get("run")
    if not run:
        lines.append("  no stage status yet" if row["status"] in ("PENDING", "RUNNING") else "  no stage status")
        return "\n".join(lines)
    age = time.time() - run.get("updated", time.time())
    lines.append(f"  run {run.get('name')!r}: {run.get('state')}"
                 + (f", stage in progress: {run['stage']}" if run.get("stage") and run.get("state") == "running" else "")
                 + f"  (updated {age:.0f} s ago)")
    for s in run.get("stages", []):
        units = f"{s.get('units_done', 0)}/{s['units']} units" if s.get("units") is not None else ""
        counts = ", ".join(f"{k}={v}" for k, v in sorted((s.get("counts") or {}).items()))
        lines.append(f"  {s['name']:<16} {s['state']:<12} {units:<14} {counts}")
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    from acedata import jobs

    row = jobs.job_status(args.job, args.address)
    print(json.dumps(row, indent=1) if args.json else format_status(row))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from acedata import jobs

    if not args.follow:
        sys.stdout.write(jobs.job_logs(args.job, args.address))
        return 0
    for chunk in jobs.follow_logs(args.job, args.address):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from acedata import jobs

    state = jobs.stop_job(args.job, args.address, wait=args.wait)
    print(f"job {args.job}: {state}")
    return 0 if state in jobs.TERMINAL else 1
