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
    from acedata.commands._common import add_run_options
    from acedata.commands._common import config_option as opt
    from acedata.mining.scorers import SCORERS
    from acedata.stages.pair import PairConfig as C

    add_cluster_args(p)
    opt(p, C, "tau_low", "turn-1 band lower bound (cosine)")
    opt(p, C, "tau_high", "turn-1 band upper bound (drops near-duplicates)")
    opt(p, C, "scorer", "turn-2 scorer", choices=sorted(SCORERS))
    opt(p, C, "scorer_options", 'scorer options as JSON, e.g. \'{"model": {"name": "facebook/dinov2-base"}}\'',
        type=json.loads)
    opt(p, C, "pass2_low", "turn-2 band lower bound (default: the scorer's)")
    opt(p, C, "pass2_high", "turn-2 band upper bound")
    p.add_argument("--images", help="images table (image bytes for object/face scorers; sizes for filters)")
    opt(p, C, "guard.max_set_size", "chaining guard: largest set kept whole")
    opt(p, C, "guard.min_pair_sim", "chaining guard: least cosine between members of a set (default: tau-low - 0.2)")
    opt(p, C, "guard.min_pair_score",
        "chaining guard after turn 2: least pass-2 score between members (default: pass-2 low / 2)")
    opt(p, C, "max_pairs_per_set", "pairs kept per final set")
    opt(p, C, "both_directions", "write (a, b) and (b, a)")
    opt(p, C, "filters.duplicate_sim", "drop pairs at or above this cosine")
    opt(p, C, "points_per_unit", "points per work unit")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.commands._common import config_values, print_run
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
    pair = PairConfig(name="pair", inputs=inputs, **config_values(args, PairConfig))
    result = run_stages([cluster_config(args), pair], args.out, executor=args.executor, address=args.address,
                        name="pair")
    print_run(result, args.json)
    if not args.json:
        s = result["stages"][1]
        print(f"pairs {s['counts'].get('pairs', 0)} in {s['counts'].get('final_sets', 0)} sets; "
              f"chaining: {s.get('chaining')}")
    return 0
