"""`acedata synthesizers`: list the edit-pair synthesizers with their families and needs."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesizers",
        help="list the pair synthesizers (task family, subtasks, weights, options)",
        description="Every synthesizer the synthesize stage can run; name them in the stage's "
        "`synthesizers:` list (default: all weight-free ones).",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from acedata.synth import load_all

    rows = [cls().describe() for _, cls in sorted(load_all().items())]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<22} {'task':<34} {'subtasks':<46} {'weights':<8} options")
    for r in rows:
        task = r["task"] + (f" + {r['inverse_task']}" if r["inverse_task"] else "")
        print(f"{r['name']:<22} {task:<34} {', '.join(r['subtasks']):<46} {'yes' if r['needs_weights'] else 'no':<8} "
              f"{', '.join(r['options']) or '-'}")
    return 0
