"""`acedata pair --embeddings FILE_OR_DIR --out DIR`: cluster + two-turn pair mining from an
embeddings table alone (so embeddings made elsewhere work too)."""

from __future__ import annotations

import argparse
import json

from acedata.commands.cluster import add_cluster_args, cluster_config


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pair",
        help="mine natural editing pairs from an embeddings table (k-means + two-turn union-find)",
        description="Cluster the embeddings (FAISS spherical k-means), link images whose cosine lies in "
        "[tau-low, tau-high] inside each cluster, re-link each set by a pass-2 scorer, split chained sets, "
        "and write DIR/pair/pairs. The object and face scorers need --images.",
    )
    from acedata.mining.scorers import SCORERS

    add_cluster_args(p)
    p.add_argument("--tau-low", type=float, default=0.8, help="turn-1 band lower bound (cosine)")
    p.add_argument("--tau-high", type=float, default=0.95, help="turn-1 band upper bound (drops near-duplicates)")
    p.add_argument("--scorer", choices=sorted(SCORERS), default="siglip",
                   help="turn-2 scorer")
    p.add_argument("--scorer-options", type=json.loads, default={},
                   help='scorer options as JSON, e.g. \'{"model": {"name": "facebook/dinov2-base"}}\'')
    p.add_argument("--pass2-low", type=float, help="turn-2 band lower bound (default: the scorer's)")
    p.add_argument("--pass2-high", type=float, help="turn-2 band upper bound")
    p.add_argument("--images", help="images table (image bytes for object/face scorers; sizes for filters)")
    p.add_argument("--max-set-size", type=int, default=64, help="chaining guard: largest set kept whole")
    p.add_argument("--min-pair-sim", type=float, help="chaining guard: least cosine between members of a set")
    p.add_argument("--min-pair-score", type=float,
                   help="chaining guard after turn 2: least pass-2 score between members (default: pass-2 low / 2)")
    p.add_argument("--max-pairs-per-set", type=int, default=100)
    p.add_argument("--both-directions", action="store_true", help="write (a, b) and (b, a)")
    p.add_argument("--duplicate-sim", type=float, default=0.999, help="drop pairs at or above this cosine")
    p.add_argument("--points-per-unit", type=int, default=50_000)
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.commands._common import print_run
    from acedata.errors import UserError
    from acedata.pipeline import run_stages
    from acedata.stages.pair import PairConfig

    inputs = {"embeddings": args.embeddings}
    if args.images:
        inputs["images"] = args.images
    else:
        from acedata.mining.scorers import scorer_class

        if scorer_class(args.scorer).needs_images:
            raise UserError(f"--scorer {args.scorer} needs --images (the image bytes to score)")
    guard = {"max_set_size": args.max_set_size}
    if args.min_pair_sim is not None:
        guard["min_pair_sim"] = args.min_pair_sim
    if args.min_pair_score is not None:
        guard["min_pair_score"] = args.min_pair_score
    pair = PairConfig(
        name="pair", tau_low=args.tau_low, tau_high=args.tau_high,
        scorer=args.scorer, scorer_options=args.scorer_options,
        pass2_low=args.pass2_low, pass2_high=args.pass2_high, guard=guard,
        max_pairs_per_set=args.max_pairs_per_set, both_directions=args.both_directions,
        filters={"duplicate_sim": args.duplicate_sim}, points_per_unit=args.points_per_unit, inputs=inputs,
    )
    result = run_stages([cluster_config(args), pair], args.out, executor=args.executor, address=args.address,
                        name="pair")
    print_run(result, args.json)
    if not args.json:
        s = result["stages"][1]
        print(f"pairs {s['counts'].get('pairs', 0)} in {s['counts'].get('final_sets', 0)} sets; "
              f"chaining: {s.get('chaining')}")
    return 0
