"""`acedata demo-data --out DIR`: build the offline demo corpus."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="build an offline demo image corpus from photographs shipped in installed packages",
        description="Groups of augmented variants (crops, flips, rescales, colour jitter) of the real "
        "photographs in scikit-image and scikit-learn, with the group recorded as ground truth, "
        "plus a folder of bad and odd inputs.",
    )
    p.add_argument("--out", required=True, help="folder to write the corpus to")
    p.add_argument("--variants", type=int, default=8, help="images per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-odd", action="store_true", help="leave out the bad/odd inputs folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acedata.demo_data import build

    s = build(args.out, variants=args.variants, seed=args.seed, odd=not args.no_odd)
    print(f"demo corpus: {s['images']} images in {len(s['groups'])} groups"
          f"{', plus ' + str(len(s.get('odd', {}))) + ' odd inputs' if s.get('odd') else ''} -> {args.out}")
    return 0
