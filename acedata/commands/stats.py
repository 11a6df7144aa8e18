"""`acedata stats DATASET`: what a dataset holds, from columns alone (no image bytes read)."""

from __future__ import annotations

import argparse
import json


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="counts, shares and distributions of an LCU dataset, and the funnel of its run",
        description="DATASET is an LCU table folder (e.g. RUN/assemble/lcu), a dataset folder holding "
        "lcu/ and lcu_validation/, or a run folder. Reads only metadata columns (polars lazy scans), "
        "as partial aggregates per group of shards merged here, so memory stays flat as rows grow. "
        "Above fixed bounds, score quantiles and the distinct-instruction count become sketches; "
        "the output names them under `approximate` with their error.",
    )
    p.add_argument("dataset", help="LCU table folder, dataset folder or run folder")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="filter rows, e.g. task=repainting, task=a,b, num_turns>=2 (repeat to AND)")
    p.add_argument("--by", default="task,subtask", help="grouping columns, comma-separated (default task,subtask)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--plot", metavar="DIR", help="also write PNG charts to DIR")
    p.add_argument("--no-funnel", action="store_true", help="skip the run funnel")
    p.add_argument("--executor", choices=["auto", "local", "ray"], default="auto",
                   help="where the per-shard partial aggregates run: local (in-process), ray (one task per "
                   "group of shards, merged here) or auto (ray above 20M rows or with --address; default)")
    p.add_argument("--address", help="Ray cluster address (implies --executor ray under auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.stats import compute, render

    by = [c.strip() for c in args.by.split(",") if c.strip()]
    res = compute(args.dataset, where=args.where, by=by, with_funnel=not args.no_funnel, histograms=bool(args.plot),
                  executor=args.executor, address=args.address)
    if args.plot:
        from acedata.plots import write_plots

        res["plots"] = write_plots(res, args.plot)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        print(render(res))
        if args.plot:
            print(f"\n{len(res['plots'])} charts -> {args.plot}")
    return 0
