"""`acedata eval-captioner RUN --data EXPORT`: held-out metrics of every captioner checkpoint."""

from __future__ import annotations

import argparse
import json


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-captioner",
        help="evaluate every captioner checkpoint on the held-out split (table + plot)",
        description="Greedy generation on the held-out records (split by pair id hash, as in training); "
        "indicator validity, exact match, normalised edit distance, BLEU, ROUGE-L, MiniLM similarity. "
        "Writes RUN/eval/metrics.csv, metrics.json, metrics.png and per-checkpoint predictions.",
    )
    p.add_argument("run_dir", help="train-captioner output folder")
    p.add_argument("--data", required=True, help="the export folder it was trained on")
    p.add_argument("--limit", type=int, help="at most this many held-out records per checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.captioner.evaluate import COLUMNS, evaluate_run

    results = evaluate_run(args.run_dir, args.data, args.limit)
    if args.json:
        print(json.dumps(results))
        return 0
    print("  ".join(f"{c:>10}" for c in COLUMNS))
    for r in results:
        print("  ".join(f"{r[c]:>10.3f}" if isinstance(r[c], float) else f"{r[c]!s:>10}" for c in COLUMNS))
    return 0
